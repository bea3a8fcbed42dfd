"""`numpy`, imported on first use.

numpy's import costs about 60 ms of CPU here, a fifth of a whole command that only reads the
index: a merge that the memo answers ("already merged as ..."), `log`, `show`, `branch`. The
store, codec and kernel modules bind this proxy instead of the module:

    if TYPE_CHECKING:
        import numpy as np
    else:
        from mergestore.lazy_numpy import np

so importing them loads no numpy; the first attribute looked up imports it (under Python's
import lock, so threads are safe) and keeps each attribute on the proxy, so later lookups are
plain attribute reads. Module-level code must not touch `np` (tests/test_lazy_numpy.py).
"""

from __future__ import annotations

import sys
from typing import Any

from mergestore.lazy_module import LazyModule


def is_imported() -> bool:
    """Whether numpy has been imported in this process (by anyone)."""
    return "numpy" in sys.modules


np: Any = LazyModule("numpy")
