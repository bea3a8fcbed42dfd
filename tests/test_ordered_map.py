"""mergestore.threads: the ordered thread map."""

from __future__ import annotations

import sys
import threading
import time

from mergestore.threads import ordered_map


def test_ordered_map_keeps_order() -> None:
    def slow_square(x: int) -> int:
        time.sleep(0.001 * (x % 3))
        return x * x

    assert list(ordered_map(slow_square, range(50), workers=4, window=6)) == [
        x * x for x in range(50)
    ]


def test_abandoned_map_finalized_on_its_own_worker_thread() -> None:
    """A map dropped half-way can be finalized (closed) on any thread, one of its own workers
    included, which must not try to join itself ("cannot join current thread")."""
    raised: list[BaseException] = []
    hook_before = sys.unraisablehook
    sys.unraisablehook = lambda u: raised.append(u.exc_value)
    holder: dict[str, object] = {}
    go, dropped = threading.Event(), threading.Event()

    def work(x: int) -> int:
        if x == 2:
            go.wait(10)
            holder.clear()  # the last reference to the map goes here, on a worker thread
            dropped.set()
        return x

    try:
        holder["map"] = ordered_map(work, range(10), workers=2, window=4)
        assert next(holder["map"]) == 0  # type: ignore[call-overload]
        go.set()
        assert dropped.wait(10)
        time.sleep(0.2)  # the close and the pool's shutdown run after `work` returns
    finally:
        sys.unraisablehook = hook_before
    assert raised == []
