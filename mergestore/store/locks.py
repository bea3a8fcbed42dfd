"""Waiting for the store's lock file, and saying who holds it.

Writers hold ``locks/gc.lock`` shared; gc and repack's final step hold it exclusive. A process
that has to wait asks the kernel who holds the file (Linux's /proc/locks lists every flock with
the holder's pid and the file's device and inode) and tells its ``on_wait`` callback once, so
the CLI can print "waiting for the store lock (held by pid N: merge)". Where /proc/locks cannot
be read, the list of holders is empty.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from mergestore.errors import LockTimeoutError

OnWait = Callable[[list[int]], None]  # called once, with the holders' pids (maybe none)


def lock_holders(path: str | os.PathLike[str], proc_locks: str = "/proc/locks") -> list[int]:
    """The pids holding a flock on `path` (other than this process), from /proc/locks."""
    try:
        st = os.stat(path)
        with open(proc_locks) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids: list[int] = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF" (blocked waiters have "->")
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            pid = int(parts[4])
        except ValueError:
            continue
        if parts[5] == want and pid != os.getpid() and pid not in pids:
            pids.append(pid)
    return pids


def holders_text(pids: list[int], describe: Callable[[int], str] | None = None) -> str:
    """The text `held by pid 12: merge, pid 13: commit` (without `describe`: pids only)."""
    if not pids:
        return "held by another process"
    if describe is None:
        return "held by " + ", ".join(f"pid {p}" for p in pids)
    return "held by " + ", ".join(f"pid {p}: {describe(p)}" for p in pids)


def flock_wait(
    fd: int,
    path: Path,
    mode: int,
    timeout: float,
    what: str,
    on_wait: OnWait | None = None,
) -> None:
    """flock(fd, mode), retrying until `timeout`; tell `on_wait` the holders once if it has to
    wait, and name them in the timeout error."""
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not told:
                told = True
                if on_wait is not None:
                    on_wait(lock_holders(path))
            if time.monotonic() >= deadline:
                held = holders_text(lock_holders(path))
                raise LockTimeoutError(f"timed out waiting for {what} ({held})") from None
            time.sleep(0.05)
