"""merge/readahead.py: the next tasks' blocks announced to the kernel, and only the blocks the
merge reads."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.merge.engine import Engine
from mergestore.merge.readahead import ReadAhead
from mergestore.store.index import BlockLocation
from mergestore.store.reader import HEADERS_ONLY_GAP, BlockReader


def _loc(length: int) -> BlockLocation:
    return BlockLocation(1, 0, length, length, 0, None, None)


def _ahead(sizes: list[int], budget: int) -> tuple[ReadAhead, list[int]]:
    """A ReadAhead over tasks of one block of `sizes[i]` pack bytes; the tasks it announces."""
    announced: list[int] = []

    def planned(i: int) -> dict[bytes, BlockLocation]:
        return {bytes([i]) * 32: _loc(sizes[i])} if sizes[i] else {}

    def advise(locations: Any) -> None:
        announced.append(next(iter(locations))[0])  # the first byte of its id: the task

    return ReadAhead(len(sizes), planned, advise, budget), announced


def test_admitted_task_and_the_budget_after_it_are_announced_once() -> None:
    ahead, announced = _ahead([10, 10, 10, 10, 10, 10], budget=20)
    ahead.admitted(0)
    assert announced == [0, 1, 2]  # task 0, then 20 bytes past it
    ahead.admitted(1)
    assert announced == [0, 1, 2, 3]  # 1 is no longer ahead: room for one more
    ahead.admitted(2)
    ahead.admitted(3)
    ahead.admitted(4)
    ahead.admitted(5)
    assert announced == [0, 1, 2, 3, 4, 5]  # each once, in task order
    assert ahead.announced_bytes == 60


def test_a_task_is_announced_when_admitted_whatever_the_budget() -> None:
    ahead, announced = _ahead([50, 50, 50], budget=0)
    ahead.admitted(0)
    assert announced == [0]
    ahead.admitted(2)  # admission skipped ahead (say, pieces merged alone)
    assert announced == [0, 1, 2]


def test_tasks_reading_nothing_take_no_budget() -> None:
    ahead, announced = _ahead([10, 0, 0, 10, 10], budget=10)
    ahead.admitted(0)
    assert announced == [0, 3]
    assert ahead.announced_bytes == 20


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    commit_family(store, tiny_family)
    return store


@pytest.mark.parametrize("budget", [None, "25%"])
def test_announced_blocks_are_the_blocks_the_merge_reads(
    family_store: Store, monkeypatch: pytest.MonkeyPatch, budget: str | None
) -> None:
    """What the engine announces ahead is exactly what it reads: a block announced and never
    read would be read from a cold disk without being counted. The reads that do not announce
    their spans again read only blocks the read-ahead announced."""
    planned: set[bytes] = set()
    read: set[bytes] = set()
    unannounced: set[bytes] = set()
    plan = Engine._planned_reads

    def recording_plan(self: Engine, task: Any) -> dict[bytes, BlockLocation]:
        locations = plan(self, task)
        planned.update(locations)
        return locations

    class RecordingReader(BlockReader):
        def read(self, ids: Any, *args: Any, **kwargs: Any) -> Any:
            ids = list(ids)
            read.update(ids)
            if not self.announce:
                unannounced.update(ids)
            return super().read(ids, *args, **kwargs)

    def reader(self: Engine, announce: bool = True) -> BlockReader:
        return RecordingReader(self.repo, max_gap=HEADERS_ONLY_GAP, announce=announce)

    monkeypatch.setattr(Engine, "_planned_reads", recording_plan)
    monkeypatch.setattr(Engine, "_reader", reader)
    family_store.merge(
        method="task_arithmetic",
        base="main",
        models=["dense_small", "frozen", "lowrank_attn"],
        weights=[0.5, 0.3, 0.2],
        budget=budget,
        branch="m",
    )
    assert list(family_store.tensors("m"))
    assert read  # the engine read its inputs through this reader
    assert planned == read
    assert unannounced and unannounced <= planned
