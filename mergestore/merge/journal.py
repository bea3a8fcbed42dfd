"""Compute a plan's tensors in flushed chunks, with a journal of the finished ones.

A merge writes its output blocks to the packs as it goes. Every chunk of tensors (about
JOURNAL_BYTES of input, a few seconds of work) is published in its own transaction: its blocks,
and the plan's journal entry naming every finished tensor and its output block ids. No ref
points at any of it until the merge commit is published, so nothing half-written is visible;
gc keeps a journal's blocks for its grace period (store/gc.py). A re-run of the same plan
(same plan id) reuses every tensor the journal names whose blocks are present, so it costs
what was left. A journal of another engine, or one whose tensors do not fit the plan, is
ignored and removed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergestore.errors import CorruptionError
from mergestore.merge.engine import Engine, OutputTensor, StoreSink, TensorTask, task_bytes
from mergestore.store import faults, merges
from mergestore.store.repo import Repository

JOURNAL_BYTES = 256 << 20
Progress = Callable[[int], None]


def journal_bytes() -> int:
    """Input bytes per flushed chunk (MERGESTORE_JOURNAL_BYTES overrides, for tests)."""
    env = os.environ.get("MERGESTORE_JOURNAL_BYTES")
    return max(1, int(env)) if env else JOURNAL_BYTES


@dataclass
class ComputeResult:
    outputs: dict[str, OutputTensor]
    computed: int = 0  # tensors computed by this call
    reused: int = 0  # tensors taken from the journal or already present
    bytes_written: int = 0
    blocks_written: int = 0
    blocks_from_base: int = 0
    expert_bytes_read: list[int] = field(default_factory=list)
    base_bytes_read: int = 0
    blocks_read: int = 0
    engine_seconds: float = 0.0
    merged_delta_sq: float = 0.0
    torch_free: bool = False
    lanes: dict[str, Any] = field(default_factory=dict)  # Engine.lane_report, over the chunks
    chunks: int = 0


def _encode(o: OutputTensor) -> list[Any]:
    return [o.dtype, list(o.shape), o.rows_per_block, [b.hex() for b in o.blocks]]


def _decode(name: str, v: Any) -> OutputTensor:
    dtype, shape, rpb, blocks = v
    return OutputTensor(
        name, dtype, tuple(shape), int(rpb), tuple(bytes.fromhex(b) for b in blocks)
    )


def journaled_outputs(
    repo: Repository, plan_id: bytes, engine_name: str, names: set[str]
) -> dict[str, OutputTensor]:
    """The finished tensors a plan's journal holds, with every block present.

    A journal that does not match (another engine, tensors the plan does not have, an
    unreadable entry) is removed and nothing is reused from it.
    """
    j = merges.journal(repo, plan_id)
    if j is None:
        return {}
    try:
        if j.get("engine") != engine_name:
            raise ValueError("another engine")
        outs = {n: _decode(n, v) for n, v in (j.get("tensors") or {}).items()}
        if not set(outs) <= names:
            raise ValueError("tensors the plan does not have")
    except (ValueError, TypeError, KeyError):
        merges.delete_journal(repo, plan_id)
        return {}
    ids = {b for o in outs.values() for b in o.blocks}
    present = set(repo.block_locations(ids))
    return {n: o for n, o in outs.items() if all(b in present for b in o.blocks)}


def chunks(tasks: Sequence[TensorTask], limit: int) -> list[list[TensorTask]]:
    out: list[list[TensorTask]] = [[]]
    size = 0
    for t in tasks:
        n = task_bytes(t)
        if out[-1] and size + n > limit:
            out.append([])
            size = 0
        out[-1].append(t)
        size += n
    return [c for c in out if c]


def compute(
    repo: Repository,
    engine: Engine,
    tasks: Sequence[TensorTask],
    n_models: int,
    plan_id: bytes,
    *,
    expected: dict[str, tuple[bytes, ...]] | None = None,
    reuse: dict[str, OutputTensor] | None = None,
    track_delta: bool = False,
    omitted: str | None = None,
    progress: Progress | None = None,
    journal: bool = True,
    ref: str | None = None,
    wrap_sink: Callable[[Any], Any] | None = None,
) -> ComputeResult:
    """Compute `tasks` not in `reuse`, chunk by chunk; each chunk's blocks and journal entry
    are published together. `expected`: known output block ids (a mismatch is an error);
    `wrap_sink` wraps each chunk's store sink (merge --out writes the folder as it goes)."""
    from mergestore.merge.pieces import run_tasks  # looked up per call: tests replace it

    res = ComputeResult(outputs=dict(reuse or {}), expert_bytes_read=[0] * n_models)
    res.reused = sum(1 for t in tasks if t.plan.name in res.outputs)
    todo = [t for t in tasks if t.plan.name not in res.outputs]
    if progress and res.reused:
        progress(res.reused)
    done_j = {n: _encode(o) for n, o in res.outputs.items()} if journal else {}
    for chunk in chunks(todo, journal_bytes()):
        with repo.writer() as session:
            sink: Any = StoreSink(repo, session)
            if wrap_sink is not None:
                sink = wrap_sink(sink)
            outs, stats, taken = run_tasks(
                engine,
                chunk,
                sink,
                n_models,
                progress=progress,
                track_delta=track_delta,
                omitted=omitted,
            )
            for o in outs:
                want = (expected or {}).get(o.name)
                if want is not None and tuple(want) != tuple(o.blocks):
                    raise CorruptionError(
                        f"recomputing tensor {o.name} gave other blocks than the merge "
                        "commit records (a nondeterministic kernel, or a changed engine)"
                    )
                res.outputs[o.name] = o
                if journal:
                    done_j[o.name] = _encode(o)
            if journal:
                merges.set_journal(
                    session,
                    plan_id,
                    {"engine": engine_name(), "time": time.time(), "ref": ref, "tensors": done_j},
                )
            session.publish()
            res.bytes_written += session.bytes_written
            res.blocks_written += len(session.blocks)
        res.chunks += 1
        res.computed += len(chunk)
        res.blocks_from_base += taken
        for i, m in enumerate(stats.expert_meters):
            res.expert_bytes_read[i] += m.bytes_read
        res.base_bytes_read += stats.base_meter.bytes_read
        res.blocks_read += stats.blocks_read
        res.engine_seconds += stats.seconds
        res.merged_delta_sq += stats.merged_delta_sq
        res.torch_free = res.torch_free or stats.torch_free
        res.lanes = add_lanes(res.lanes, stats.lanes)
        faults.kill_point("journal-flushed")
    return res


def add_lanes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two lane reports (Engine.lane_report) added up."""
    if not a:
        return dict(b)
    reasons = dict(a.get("torch_reasons", {}))
    for why, n in b.get("torch_reasons", {}).items():
        reasons[why] = reasons.get(why, 0) + n
    return {
        "torch_free": a.get("torch_free", 0) + b.get("torch_free", 0),
        "torch": a.get("torch", 0) + b.get("torch", 0),
        "torch_reasons": reasons,
    }


def engine_name() -> str:
    from mergestore.merge.prepared import ENGINE

    return ENGINE
