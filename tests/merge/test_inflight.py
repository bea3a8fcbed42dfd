"""merge/inflight.py: which tasks the engine lets into its pipeline together."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from mergestore.merge.inflight import Inflight


def admitted(q: Inflight[str], cost: int) -> Future[str]:
    assert q.wait_room(cost)
    f: Future[str] = Future()
    q.admit(f, cost)
    return f


def test_inputs_bound_until_merged_outputs_until_retired() -> None:
    q: Inflight[str] = Inflight(limit=10, window=5)
    first = admitted(q, 10)  # the largest task
    assert not q._fits(1)  # nothing loads beside it while it merges
    q.merged(10)
    assert q._fits(10)  # the next one that size loads while its output is written
    admitted(q, 10)
    assert not q._fits(1)
    q.merged(10)
    assert not q._fits(1)  # two outputs held: twice the limit
    first.set_result("a")
    assert q.retire() == "a"
    assert q._fits(10)


def test_window_counts_tasks() -> None:
    q: Inflight[str] = Inflight(limit=100, window=2)
    admitted(q, 1)
    admitted(q, 1)
    assert not q._fits(1)
    assert len(q) == 2


def test_a_task_over_the_limit_runs_alone() -> None:
    q: Inflight[str] = Inflight(limit=10, window=5)
    f = admitted(q, 50)
    assert not q._fits(1)
    f.set_result("big")
    assert q.retire() == "big"
    assert q._fits(50)


def test_wait_room_wakes_when_the_oldest_task_is_done() -> None:
    q: Inflight[str] = Inflight(limit=10, window=5)
    f = admitted(q, 10)
    t = threading.Timer(0.05, f.set_result, ("x",))
    t.start()
    assert q.wait_room(5) is False  # no room: the caller retires the oldest task first
    assert q.retire() == "x"
    assert q.wait_room(5) is True
    t.join()


def test_wait_room_wakes_when_a_task_is_merged() -> None:
    q: Inflight[str] = Inflight(limit=10, window=5)
    admitted(q, 10)
    t = threading.Timer(0.05, q.merged, (10,))
    t.start()
    assert q.wait_room(10) is True
    t.join()


def test_retire_raises_a_stage_error() -> None:
    q: Inflight[str] = Inflight(limit=10, window=5)
    f = admitted(q, 1)
    f.set_exception(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        q.retire()
