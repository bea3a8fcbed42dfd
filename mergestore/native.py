"""The optional C kernels (mergestore/_native.c), or None where they were not built.

Each kernel has a torch/numpy twin at its call site, and both give the same bits (tested in
tests/test_native.py). MERGESTORE_NATIVE=0 turns the kernels off, for comparisons and for
benchmarks of the twins.
"""

from __future__ import annotations

import os
from types import ModuleType

kernels: ModuleType | None
try:
    if os.environ.get("MERGESTORE_NATIVE", "1") == "0":
        raise ImportError("turned off by MERGESTORE_NATIVE=0")
    from mergestore import _native as kernels
except ImportError:  # no compiler at install time: the twins run instead
    kernels = None


def describe() -> str:
    """Which kernels run: "native" (the C extension) or "torch" (the twins)."""
    return "native" if kernels is not None else "torch"
