"""Text rendering of the commit DAG (`log --graph`) and of merge recipes (`show`)."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Any

from mergestore.api import LogEntry


def topo_order(entries: Sequence[LogEntry]) -> list[LogEntry]:
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


def draw_graph(entries: Sequence[LogEntry], deco: dict[bytes, list[str]]) -> Iterator[str]:
    """One line per commit with lanes: '*' marks the commit, '|' other lines of descent."""
    lanes: list[bytes | None] = []
    for e in topo_order(entries):
        if e.id in lanes:
            col = lanes.index(e.id)
        else:
            lanes.append(e.id)
            col = len(lanes) - 1
        row = " ".join("*" if i == col else ("|" if lane else " ") for i, lane in enumerate(lanes))
        d = f" ({', '.join(deco[e.id])})" if e.id in deco else ""
        msg = (e.commit.message.splitlines() or [""])[0]
        tag = " [merge]" if e.commit.plan else ""
        yield f"{row.rstrip()}  {e.id.hex()[:10]}{d}{tag} {msg}"
        parents = list(e.commit.parents)
        # the commit's lane continues with its first parent; other parents get lanes of their own
        lanes[col] = parents[0] if parents and parents[0] not in lanes else None
        new_lanes = [p for p in parents[1:] if p not in lanes]
        if new_lanes:
            lanes.extend(new_lanes)
            yield (
                " ".join("|" if lane else " " for lane in lanes[:col])
                + (" " if col else "")
                + "|"
                + "\\" * len(new_lanes)
            )
        while lanes and lanes[-1] is None:
            lanes.pop()


def format_recipe(plan: dict[str, Any]) -> Iterator[str]:
    """Human lines for a merge plan summary."""
    yield f"recipe  {plan.get('method')}"
    for k, v in (plan.get("parameters") or {}).items():
        yield f"        {k} = {v}"
    if plan.get("base"):
        yield f"base    {plan['base']}"
    for i, m in enumerate(plan.get("models") or []):
        yield f"input {i} {m}"
    for k in ("dtype", "out_dtype", "seed", "budget_bytes", "error_bound", "expert_bytes_read"):
        if plan.get(k) is not None:
            yield f"{k:<8}{plan[k]}"
