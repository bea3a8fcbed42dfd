"""mergestore: a versioned checkpoint store with git-like semantics, built for model merging."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["MergestoreError", "Store", "__version__"]

if TYPE_CHECKING:
    from mergestore.api import Store
    from mergestore.errors import MergestoreError


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import mergestore.cli.entry` loads neither numpy nor the store
    # before the console script has set up the process (see cli/entry.py).
    if name == "Store":
        from mergestore.api import Store

        return Store
    if name == "MergestoreError":
        from mergestore.errors import MergestoreError

        return MergestoreError
    raise AttributeError(f"module 'mergestore' has no attribute {name!r}")
