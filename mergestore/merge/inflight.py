"""The merge pipeline's admission: which tasks may be in flight together, by count and bytes.

A task is in flight from its admission (its load is queued) until the engine retires its output
(kept in task order: merge/inorder.py). Its input bytes (engine.task_bytes: one input's) count
twice over: against `limit` until its merge is done, when its inputs are freed (`merged`), and
against `2 * limit` until it is retired, for what it still holds then: its output, the base
tensor's blocks it is delta-coded against and the encoded blocks. So the next task, even one the
size of the largest, loads while the previous one's output is hashed, encoded and written, and
peak memory stays within a few times the largest tensor.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Generic, TypeVar

R = TypeVar("R")


class Inflight(Generic[R]):
    """Tasks in flight, in task order; the main thread admits and retires, stages report."""

    def __init__(self, limit: int, window: int) -> None:
        self.limit = limit
        self.window = window  # tasks in flight at most
        self._cond = threading.Condition()
        self._unmerged = 0  # bytes of tasks admitted and not yet merged
        self._held = 0  # bytes of tasks admitted and not yet retired
        self._tasks: deque[tuple[Future[R], int]] = deque()

    def __len__(self) -> int:
        return len(self._tasks)

    def _fits(self, cost: int) -> bool:
        if not self._tasks:
            return True  # a task larger than the limit runs alone
        return (
            len(self._tasks) < self.window
            and self._unmerged + cost <= self.limit
            and self._held + cost <= 2 * self.limit
        )

    def wait_room(self, cost: int) -> bool:
        """Block until a task of `cost` bytes fits (True) or the oldest task is done (False:
        retire it first)."""
        with self._cond:
            while not self._fits(cost):
                if self._tasks[0][0].done():
                    return False
                self._cond.wait()
            return True

    def admit(self, done: Future[R], cost: int) -> None:
        """A task queued: `done` is its last stage's future."""
        with self._cond:
            self._unmerged += cost
            self._held += cost
            self._tasks.append((done, cost))
        done.add_done_callback(self._wake)  # after the future's state is set

    def merged(self, cost: int) -> None:
        """A stage's report: a task of `cost` bytes is merged, its inputs freed."""
        with self._cond:
            self._unmerged -= cost
            self._cond.notify_all()

    def retire(self) -> R:
        """The oldest task's result (waits for it; raises its stages' error)."""
        done, cost = self._tasks[0]
        result = done.result()
        with self._cond:
            self._tasks.popleft()
            self._held -= cost
        return result

    def _wake(self, _done: Future[R]) -> None:
        with self._cond:
            self._cond.notify_all()
