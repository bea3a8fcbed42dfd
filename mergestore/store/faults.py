"""Test-only fault injection, driven by the MERGESTORE_FAULT environment variable.

Unset in normal use (each check is one dictionary lookup). Values:

    NAME        the first time the code passes fault point NAME
    NAME@N      the N-th time (1-based), e.g. `after-append@20` dies after the 20th block

Kill points (`kill_point`) end the process at once with exit code 137, like `kill -9`, leaving
whatever is on disk as it is. Error points (`error_point`) raise the given OSError instead, to
simulate a full disk. tests/faults/ uses both; docs/reliability.md lists the points.
"""

from __future__ import annotations

import os
import threading

ENV = "MERGESTORE_FAULT"
KILL_EXIT_CODE = 137

_hits: dict[str, int] = {}
_lock = threading.Lock()


def armed(name: str) -> bool:
    """True when this pass through point `name` is the one MERGESTORE_FAULT names."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    want, _, nth = spec.partition("@")
    if want != name:
        return False
    with _lock:
        count = _hits[name] = _hits.get(name, 0) + 1
    return count == (int(nth) if nth.isdigit() else 1)


def kill_point(name: str) -> None:
    """Die here, without cleanup, if MERGESTORE_FAULT names this point."""
    if armed(name):
        os._exit(KILL_EXIT_CODE)


def reset() -> None:
    """Forget the hit counts (for tests that inject faults in-process more than once)."""
    with _lock:
        _hits.clear()
