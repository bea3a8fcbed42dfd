"""InOrder: finished tasks kept in task order, one at a time, on the workers' own threads."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from mergestore.merge.inorder import InOrder


def test_keeps_in_task_order_one_at_a_time_whatever_order_tasks_finish() -> None:
    kept: list[int] = []
    inside = [0]
    overlap = [False]

    def keep(v: int) -> int:
        inside[0] += 1
        overlap[0] = overlap[0] or inside[0] > 1
        time.sleep(0.0005)
        kept.append(v)
        inside[0] -= 1
        return v * 10

    order: InOrder[int, int] = InOrder(keep)
    futures: list[Future[int]] = [Future() for _ in range(200)]
    rnd = random.Random(7)
    delays = [rnd.random() * 0.002 for _ in futures]

    def work(i: int) -> None:
        time.sleep(delays[i])
        order.done(i, i, futures[i])

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(work, range(len(futures))))
    assert kept == list(range(200))
    assert not overlap[0]
    assert [f.result() for f in futures] == [i * 10 for i in range(200)]


def test_a_failed_task_gets_its_error_and_later_ones_are_still_kept() -> None:
    kept: list[int] = []
    order: InOrder[int, int] = InOrder(lambda v: kept.append(v) or v)
    futures: list[Future[int]] = [Future() for _ in range(4)]
    order.done(2, 2, futures[2])
    order.done(1, ValueError("task 1"), futures[1])
    assert kept == [] and not futures[2].done()  # task 0 is not finished yet
    order.done(0, 0, futures[0])
    assert kept == [0, 2]
    with pytest.raises(ValueError, match="task 1"):
        futures[1].result()
    order.done(3, 3, futures[3])
    assert kept == [0, 2, 3] and futures[3].result() == 3


def test_an_error_in_keep_goes_to_that_task_only() -> None:
    def keep(v: int) -> int:
        if v == 1:
            raise OSError("disk full")
        return v

    order: InOrder[int, int] = InOrder(keep)
    futures: list[Future[int]] = [Future() for _ in range(3)]
    for i in (2, 1, 0):
        order.done(i, i, futures[i])
    assert futures[0].result() == 0 and futures[2].result() == 2
    with pytest.raises(OSError, match="disk full"):
        futures[1].result()


def test_the_thread_that_finishes_the_next_task_keeps_it() -> None:
    threads: list[str] = []
    order: InOrder[int, int] = InOrder(
        lambda v: threads.append(threading.current_thread().name) or v
    )
    f0: Future[int] = Future()
    f1: Future[int] = Future()
    t = threading.Thread(target=order.done, args=(1, 1, f1), name="early")
    t.start()
    t.join()
    assert threads == []  # task 1 waits for task 0
    order.done(0, 0, f0)  # this thread keeps 0, then 1
    assert threads == [threading.current_thread().name] * 2
