"""The output folder's pwrites from several compute threads, one thread writing at a time.

Two threads that pwrite into one file take turns on its inode lock, and the one that waits
spins in the kernel (`rwsem_spin_on_owner`): 5.8% of a task_arithmetic merge's CPU on the
2-core VM when the page cache's new pages were slow to fault in (docs/benchmarks.md, issue 14
session 11). So the folder is written by one thread at a time. A thread that finds another
writing leaves its blocks to that one and goes back to merging; the writer writes them after
its own. A block left so is copied, and at most `limit` bytes wait: past that, a thread waits
for its turn.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from mergestore.checkout import _pwrite_all

DEFER_BYTES = 32 << 20

# (file descriptor, bytes, file offset)
Write = tuple[int, memoryview, int]


class TurnWrites:
    """pwrites from any thread; `flush()` before the files are closed."""

    def __init__(self, limit: int = DEFER_BYTES) -> None:
        self.limit = limit
        self._turn = threading.Lock()  # held by the thread writing
        self._lock = threading.Lock()  # guards the waiting list
        self._waiting: list[Write] = []
        self._waiting_bytes = 0
        self.deferred = 0  # writes left to another thread (for tests and traces)

    def write(self, writes: Sequence[Write]) -> None:
        """Write `writes` now, or leave them to the thread writing (which writes them next)."""
        if not self._turn.acquire(blocking=False):
            nbytes = sum(data.nbytes for _, data, _ in writes)
            if nbytes <= self.limit:
                # Copies (the bytes are still in this core's caches): a view would keep its
                # whole tensor's buffer from going back to the pool (ops/alloc.py).
                copies = [(fd, memoryview(bytes(data)), at) for fd, data, at in writes]
                with self._lock:
                    if self._waiting_bytes + nbytes <= self.limit:
                        self._waiting.extend(copies)
                        self._waiting_bytes += nbytes
                        self.deferred += len(writes)
                        return
            self._turn.acquire()
        try:
            self._drain(writes)
        finally:
            self._turn.release()

    def flush(self) -> None:
        """Write whatever still waits (a thread may have left its blocks just as the writer
        finished)."""
        with self._turn:
            self._drain(())

    def drop(self) -> None:
        """Forget what waits (the folder is being removed)."""
        with self._lock:
            self._waiting = []
            self._waiting_bytes = 0

    def _drain(self, writes: Sequence[Write]) -> None:
        while True:
            for fd, data, at in writes:
                _pwrite_all(fd, data, at)
            with self._lock:
                writes, self._waiting = self._waiting, []
                self._waiting_bytes = 0
            if not writes:
                return
