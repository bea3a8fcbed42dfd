"""Keeping finished tasks in task order without a thread of its own.

A merge's worker threads finish tasks in any order; their outputs must be kept (appended to
the packs) in task order, one at a time, so the stored bytes never depend on the thread count.
Whichever worker finishes the task that is next in order keeps it, and every later one already
finished, while the others go on to their next task. Nothing waits for a keeper thread to wake
up (a handoff per task, and a wake-up can preempt the waker while it holds the GIL).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

F = TypeVar("F")
R = TypeVar("R")


class InOrder(Generic[F, R]):
    """Runs `keep` on finished tasks in task order (0, 1, 2, ...), never two at once."""

    def __init__(self, keep: Callable[[F], R]) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._ready: dict[int, tuple[F | BaseException, Future[R]]] = {}
        self._next = 0
        self._keeping = False  # a worker is keeping tasks now

    def done(self, index: int, value: F | BaseException, kept: Future[R]) -> None:
        """Task `index` finished with `value` (or failed with it); `kept` gets keep(value),
        or the failure, once every earlier task is kept. Keeps what is next in order on the
        calling thread unless another thread is keeping already."""
        with self._lock:
            self._ready[index] = (value, kept)
            if self._keeping:
                return  # the keeper takes it when it gets there
            self._keeping = True
        while True:
            with self._lock:
                item = self._ready.pop(self._next, None)
                if item is None:
                    self._keeping = False
                    return
                self._next += 1
            value, future = item
            if isinstance(value, BaseException):
                future.set_exception(value)
                continue
            try:
                result = self._keep(value)
            except BaseException as e:  # noqa: BLE001 - handed to the task's future
                future.set_exception(e)
            else:
                future.set_result(result)
