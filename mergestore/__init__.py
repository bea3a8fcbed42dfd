"""mergestore: a versioned checkpoint store with git-like semantics, built for model merging."""

from __future__ import annotations

__version__ = "0.1.0"
