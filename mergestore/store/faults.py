"""Test-only fault injection, driven by the MERGESTORE_FAULT environment variable.

Unset in normal use (each check is one dictionary lookup). Values:

    NAME          the first time the code passes fault point NAME
    NAME@N        the N-th time (1-based), e.g. `after-append@20` dies after the 20th block
    pause:NAME@N  instead of dying, create $MERGESTORE_FAULT_SYNC/reached and wait until
                  $MERGESTORE_FAULT_SYNC/go exists (at most 120 s): a test can then run another
                  command while this one is stopped exactly there (say, gc during a commit)

Kill points (`kill_point`) end the process at once with exit code 137, like `kill -9`, leaving
whatever is on disk as it is. Pack appends also answer to `torn-append` (write half an entry,
then die) and `enospc` (write half an entry, then raise ENOSPC as a full disk does); see
PackAppender. tests/faults/ uses them all; docs/reliability.md lists the points.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

ENV = "MERGESTORE_FAULT"
SYNC_ENV = "MERGESTORE_FAULT_SYNC"
KILL_EXIT_CODE = 137
PAUSE_LIMIT = 120.0

_hits: dict[str, int] = {}
_lock = threading.Lock()
_released = threading.Event()  # release_pauses(): every pause ends


def _spec() -> tuple[str, str, int] | None:
    """(mode, point name, n) from MERGESTORE_FAULT, or None when unset."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    mode, sep, rest = spec.partition(":")
    if not sep:
        mode, rest = "kill", spec
    want, _, nth = rest.partition("@")
    return mode, want, int(nth) if nth.isdigit() else 1


def armed(name: str) -> bool:
    """True when this pass through point `name` is the one MERGESTORE_FAULT names."""
    spec = _spec()
    if spec is None or spec[1] != name:
        return False
    with _lock:
        count = _hits[name] = _hits.get(name, 0) + 1
    if count != spec[2]:
        return False
    if spec[0] == "pause":
        _pause()
        return False
    return True


def _pause() -> None:
    sync = Path(os.environ.get(SYNC_ENV, "."))
    (sync / "reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_LIMIT
    while not (sync / "go").exists() and time.monotonic() < deadline and not _released.is_set():
        time.sleep(0.02)


def release_pauses() -> None:
    """End any pause now and skip later ones: a run interrupted on its main thread (Ctrl-C,
    SIGTERM) while a pause holds one of its worker threads must not wait for it."""
    _released.set()


def kill_point(name: str) -> None:
    """Die here, without cleanup, if MERGESTORE_FAULT names this point."""
    if armed(name):
        os._exit(KILL_EXIT_CODE)


def reset() -> None:
    """Forget the hit counts (for tests that inject faults in-process more than once)."""
    with _lock:
        _hits.clear()
