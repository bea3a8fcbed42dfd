"""Compute a plan's tensors in flushed chunks, with a journal of the finished ones.

A merge writes its output blocks to the packs as it goes. Every chunk of tensors (about
JOURNAL_BYTES of input, a few seconds of work) ends with the plan's journal entry naming every
finished tensor and its output block ids. In a merge's own session (merge/session.py) the chunk
stays unpublished and the session is saved (store/pending.py; after every chunk but the last,
which the merge commit publishes next), so a kill keeps it and a failure drops it; otherwise
(materialize) each chunk is published in its own transaction. No ref points at any of it until
the merge commit is published, so nothing half-written is visible; gc keeps a journal's blocks
for its grace period (store/gc.py). A re-run of the same plan (same plan id) reuses every tensor
the journal names whose blocks are present, so it costs what was left. A journal of another
engine, or one whose tensors do not fit the plan, is ignored and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any

from mergestore.errors import CorruptionError
from mergestore.fast_dataclass import dataclass
from mergestore.merge.engine import Engine, OutputTensor, StoreSink, TensorTask, task_bytes
from mergestore.ops import alloc
from mergestore.store import faults, merges
from mergestore.store.repo import Repository, WriteSession

JOURNAL_BYTES = 256 << 20
Progress = Callable[[int], None]


def journal_bytes() -> int:
    """Input bytes per flushed chunk (MERGESTORE_JOURNAL_BYTES overrides, for tests)."""
    env = os.environ.get("MERGESTORE_JOURNAL_BYTES")
    return max(1, int(env)) if env else JOURNAL_BYTES


@dataclass
class ComputeResult:
    """What journal.compute computed, reused, read and wrote."""

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
    repo: Repository,
    plan_id: bytes,
    engine_name: str,
    names: set[str],
    session: WriteSession | None = None,
) -> dict[str, OutputTensor]:
    """The finished tensors a plan's journal holds, with every block present.

    A journal that does not match (another engine, tensors the plan does not have, an
    unreadable entry) is removed and nothing is reused from it. With `session` (a merge's,
    merge/session.py), the journal may be one it adopted, and the removal is published with it.
    """
    key = (merges.DB, merges.JOURNAL + plan_id)
    if session is not None and key in session.index_puts:
        raw = session.index_puts[key]
        j = None if raw is None else json.loads(raw)
    else:
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
        if session is not None:
            merges.set_journal(session, plan_id, None)
        else:
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
    session: WriteSession | None = None,
    save: Callable[[int], None] | None = None,
) -> ComputeResult:
    """Compute `tasks` not in `reuse`, chunk by chunk; each chunk's blocks and journal entry
    are published together. `expected`: known output block ids (a mismatch is an error);
    `wrap_sink` wraps each chunk's store sink (merge --out writes the folder as it goes).
    With `session` (a merge's, merge/session.py) the chunks go into it unpublished, and
    `save(tensors done)` is called after each one but the last instead (the session saved to
    survive a kill: store/pending.py)."""
    from mergestore.merge.pieces import run_tasks  # looked up per call: tests replace it

    res = ComputeResult(outputs=dict(reuse or {}), expert_bytes_read=[0] * n_models)
    res.reused = sum(1 for t in tasks if t.plan.name in res.outputs)
    todo = [t for t in tasks if t.plan.name not in res.outputs]
    if progress and res.reused:
        progress(res.reused)
    done_j = {n: _encode(o) for n, o in res.outputs.items()} if journal else {}
    # One buffer pool for every chunk: a chunk's inputs and temporaries reuse the previous
    # chunk's buffers, already paged in (fresh pages are zeroed by the kernel: 13% of the
    # CPU of a ties merge with dtype float32 before).
    # Every chunk keeps the whole merge's memory bound (a chunk of small tensors bounded by
    # its own largest would load and merge each of those alone).
    engine.memory_limit = max((task_bytes(t) for t in todo), default=0)
    with alloc.pooling():
        parts = chunks(todo, journal_bytes())
        for i, chunk in enumerate(parts):
            own = session is None
            with repo.writer() if own else contextlib.nullcontext(session) as chunk_session:
                assert chunk_session is not None
                written0, blocks0 = chunk_session.bytes_written, len(chunk_session.blocks)
                sink: Any = StoreSink(repo, chunk_session)
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
                        chunk_session,
                        plan_id,
                        {
                            "engine": engine_name(),
                            "time": time.time(),
                            "ref": ref,
                            "tensors": done_j,
                        },
                    )
                if own:
                    chunk_session.publish()
                elif save is not None and i < len(parts) - 1:
                    # Not after the last chunk: the merge commit publishes the session next,
                    # and a save (packs fsynced, the state written and fsynced: 10-30 ms)
                    # would only cover the moments before that. A kill there loses the last
                    # chunk, as a kill inside any chunk does.
                    save(len(res.outputs))
                res.bytes_written += chunk_session.bytes_written - written0
                res.blocks_written += len(chunk_session.blocks) - blocks0
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
    out: dict[str, Any] = {
        "torch_free": a.get("torch_free", 0) + b.get("torch_free", 0),
        "torch": a.get("torch", 0) + b.get("torch", 0),
        "torch_reasons": reasons,
    }
    notes = {**a.get("notes", {}), **b.get("notes", {})}
    if notes:
        out["notes"] = notes
    return out


def engine_name() -> str:
    from mergestore.merge.prepared import ENGINE

    return ENGINE
