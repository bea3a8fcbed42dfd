"""Orderings of commit history, shared by `log --graph` (cli/graph.py) and `du` (usage.py)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Protocol, TypeVar

from mergestore.store.objects import Commit


class HasCommit(Protocol):
    """Anything naming a commit by id (mergestore.api.LogEntry, for one)."""

    @property
    def id(self) -> bytes: ...

    @property
    def commit(self) -> Commit: ...


E = TypeVar("E", bound=HasCommit)


def topo_order(entries: Sequence[E]) -> list[E]:
    """Children before parents; among ready commits, newest first."""
    by_id = {e.id: e for e in entries}
    children: dict[bytes, int] = {e.id: 0 for e in entries}
    for e in entries:
        for p in e.commit.parents:
            if p in children:
                children[p] += 1
    heap = [(-e.commit.time, e.id) for e in entries if children[e.id] == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, cid = heapq.heappop(heap)
        e = by_id[cid]
        out.append(e)
        for p in e.commit.parents:
            if p in children:
                children[p] -= 1
                if children[p] == 0:
                    heapq.heappush(heap, (-by_id[p].commit.time, p))
    return out
