"""mergestore: a versioned checkpoint store with git-like semantics, built for model merging."""

from __future__ import annotations

__version__ = "0.1.0"

from mergestore.api import Store  # noqa: E402
from mergestore.errors import MergestoreError  # noqa: E402

__all__ = ["MergestoreError", "Store", "__version__"]
