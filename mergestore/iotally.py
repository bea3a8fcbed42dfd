"""Bytes this process has read from packs and written (to packs and output folders), for the
progress bars of long commands (`merge` shows them next to its tensor count).

The counters only grow. They are bumped where the bytes really move: `PackReader.read` and a
lazy clone's ranged GET for reads; `PackAppender.append` and the `merge --out` folder writer
for writes. A bar reads them on every refresh and shows the growth since it started. Work done
in other processes (Ray workers) is not counted here.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_read = 0
_written = 0


def add_read(nbytes: int) -> None:
    global _read
    with _lock:
        _read += nbytes


def add_written(nbytes: int) -> None:
    global _written
    with _lock:
        _written += nbytes


def totals() -> tuple[int, int]:
    """(bytes read, bytes written) by this process so far."""
    with _lock:
        return _read, _written
