"""A module proxy that imports its module on the first attribute looked up.

mergestore.lazy_torch and mergestore.lazy_numpy bind one each. The import runs under Python's
import lock, so threads are safe, and each attribute is kept on the proxy, so later lookups are
plain attribute reads.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


class LazyModule:
    """Stands in for the module named `name` until an attribute of it is needed."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and inspect probes: not the module's business
            raise AttributeError(attr)
        value = getattr(importlib.import_module(self._lazy_name), attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        state = "imported" if self._lazy_name in sys.modules else "not imported yet"
        return f"<lazy {self._lazy_name}: {state}>"
