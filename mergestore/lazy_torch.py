"""`torch`, imported on first use.

Importing torch takes about a second here, longer than a whole bf16 task-arithmetic merge of
0.5 GB models once the C kernels compute it. Modules that declare merge methods or run the
engine bind this proxy instead of the module:

    if TYPE_CHECKING:
        import torch
    else:
        from mergestore.lazy_torch import torch

so reading a config, checking parameters and planning a merge load no torch, and a merge whose
kernels never need it (mergestore.merge.engine's torch-free lane) never imports it. The first
attribute looked up imports torch (under Python's import lock, so threads are safe) and keeps
each attribute on the proxy, so later lookups are plain attribute reads.
"""

from __future__ import annotations

import sys
from typing import Any

from mergestore.lazy_module import LazyModule


def is_imported() -> bool:
    """Whether torch has been imported in this process (by anyone)."""
    return "torch" in sys.modules


torch: Any = LazyModule("torch")
