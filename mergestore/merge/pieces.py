"""Running a merge's tensor tasks through the engine: large elementwise tensors in pieces of
a few blocks (so the pipeline's stages overlap), and, in a budgeted merge, the runs of blocks
taken from the base instead of computed."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.merge.engine import Engine, OutputTensor, TensorTask, task_bytes
from mergestore.merge.prepared import Progress
from mergestore.ops import get_method
from mergestore.store.blocks import tensor_blocking
from mergestore.store.objects import TensorRecord

# Methods whose kernel returns the base when every input equals it (all deltas are zero):
# checked kernel by kernel in tests/merge/test_budget.py. della's rescaling is left out.
BASE_PRESERVING = frozenset(
    {"task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties"}
)
# ... and whose kernel is elementwise and draws no random numbers, so a run of rows merged on
# its own gives the same values as inside the whole tensor.
ROWWISE = frozenset({"task_arithmetic"})
_EXACT_IN = {"F32": {"BF16", "F16", "F32"}, "F64": {"BF16", "F16", "F32", "F64"}}


def omitted_mode(method: str) -> str | None:
    """What a budgeted merge of `method` takes from the base: "blocks", "tensors" or nothing."""
    if method in ROWWISE:
        return "blocks"
    return "tensors" if method in BASE_PRESERVING else None


def base_pieces(
    task: TensorTask, compute: str | None, out: str | None, block_size: int, mode: str
) -> list[tuple[int, int, bool]] | None:
    """Runs of output blocks [b0, b1) and whether each is the base's; None: compute it whole.

    A block is the base's when the budget omitted some input block there and read none: every
    input then equals the base (omitted blocks are taken from it), so a base-preserving kernel
    would return base + 0, the same values. Taking the base's blocks skips reading the base,
    the kernel, hashing and writing; only the sign of a zero base element (+0.0 from base + 0)
    and NaN payloads could differ. Blocks where no input differs from the base are computed as
    usual, so a 100% budget stays bit-identical to the unbudgeted merge. Mode "tensors" does
    this only for a whole tensor. Only where the kernel's output dtype is the base's and the
    compute dtype (`compute`, `out`: safetensors names or None) holds it exactly.
    """
    ref, p = task.reference, task.plan
    if ref is None or p.copy_from is not None or task.base is None or not task.inputs:
        return None
    if task.base.blocks != ref.blocks or not ref.shape:
        return None
    for rec in task.inputs:
        if rec.shape != ref.shape or rec.dtype != ref.dtype:
            return None
    c = compute or ref.dtype  # without a compute dtype, the inputs' (all the base's here)
    o = out or c
    if o != ref.dtype or (c != ref.dtype and ref.dtype not in _EXACT_IN.get(c, ())):
        return None
    blocking = tensor_blocking(tuple(ref.shape), DTYPE_SIZES[ref.dtype], block_size)
    if blocking.rows_per_block != ref.rows_per_block:
        return None
    omitted, read = [], []
    for i, rid in enumerate(ref.blocks):
        o_i = r_i = False
        for rec, sel in zip(task.inputs, task.selected, strict=True):
            if rec.blocks[i] == rid:
                continue
            if sel is not None and i not in sel:
                o_i = True
            else:
                r_i = True
        omitted.append(o_i)
        read.append(r_i)
    if mode == "tensors":
        if any(read) or not any(omitted):
            return None
        return [(0, len(ref.blocks), True)]  # blocks where nothing differs: the base's too
    flags = [o_i and not r_i for o_i, r_i in zip(omitted, read, strict=True)]
    if not any(flags):
        return None
    runs: list[tuple[int, int, bool]] = []
    for i, f in enumerate(flags):
        if runs and runs[-1][2] == f:
            runs[-1] = (runs[-1][0], i + 1, f)
        else:
            runs.append((i, i + 1, f))
    return runs


def _slice(rec: TensorRecord, b0: int, b1: int) -> TensorRecord:
    """Rows of blocks [b0, b1) of a tensor, as a record of its own (the same block ids)."""
    row_bytes = rec.nbytes // rec.shape[0] if rec.shape[0] else 0
    r0 = b0 * rec.rows_per_block
    r1 = min(rec.shape[0], b1 * rec.rows_per_block)
    return dataclasses.replace(
        rec,
        shape=(r1 - r0, *rec.shape[1:]),
        begin=rec.begin + r0 * row_bytes,
        end=rec.begin + r1 * row_bytes,
        blocks=rec.blocks[b0:b1],
    )


def _piece(task: TensorTask, b0: int, b1: int) -> TensorTask:
    return TensorTask(
        task.plan,
        _slice(task.base, b0, b1) if task.base is not None else None,
        [_slice(r, b0, b1) for r in task.inputs],
        task.input_models,
        _slice(task.reference, b0, b1) if task.reference is not None else None,
        [
            None if s is None else frozenset(i - b0 for i in s if b0 <= i < b1)
            for s in task.selected
        ],
        task.first_row + b0 * _shape_record(task).rows_per_block,
    )


# Elementwise merges stream large tensors in pieces of this many blocks, so the stages of the
# pipeline overlap (and both cores work) on embeddings and heads too, and memory follows the
# piece instead of the tensor. 2 rather than 8: a piece's inputs, reference and output stay
# nearer the cores' caches, and the two workers share the work more evenly (linear in bf16 on
# the 384 MiB family: 7-11% less wall time, half the peak RSS; docs/benchmarks.md, session 32).
# 1 costs more in per-task overhead than it saves.
PIECE_BLOCKS = 2
LANE_ELEMENTS = 64  # pieces start on a multiple of this: every element keeps its SIMD lane


def elementwise_pieces(
    task: TensorTask, out_dtype: str | None, block_size: int
) -> list[tuple[int, int, bool]] | None:
    """Runs of about PIECE_BLOCKS blocks for a large tensor of an elementwise method; None:
    merge it whole.

    Every input, the base and the reference must be cut into the same rows (same shape and
    rows per block). The output may be blocked otherwise (fp32 inputs, a bf16 output: twice
    the rows a block): pieces then start on rows where both blockings start a block, so each
    piece, merged alone, gives exactly the whole tensor's output blocks.
    """
    if task.plan.copy_from is not None or not task.inputs:
        return None
    recs = [r for r in (task.base, task.reference, *task.inputs) if r is not None]
    first = recs[0]
    if not first.shape:
        return None
    for r in recs:
        if r.shape != first.shape or r.rows_per_block != first.rows_per_block:
            return None
        if DTYPE_SIZES[r.dtype] != DTYPE_SIZES[first.dtype]:
            return None
    out_size = DTYPE_SIZES[out_dtype] if out_dtype is not None else DTYPE_SIZES[first.dtype]
    out_rows = tensor_blocking(tuple(first.shape), out_size, block_size).rows_per_block
    common = math.lcm(first.rows_per_block, out_rows) // first.rows_per_block  # in blocks
    piece = common * max(1, PIECE_BLOCKS // common)
    n = len(first.blocks)
    if n < 2 * piece:
        return None
    if (piece * first.rows_per_block * math.prod(first.shape[1:])) % LANE_ELEMENTS:
        return None
    return [(b0, min(n, b0 + piece), False) for b0 in range(0, n, piece)]


def run_tasks(
    engine: Engine,
    tasks: list[TensorTask],
    sink: Any,
    n_models: int,
    *,
    progress: Progress | None = None,
    track_delta: bool = False,
    omitted: str | None = None,
) -> tuple[list[OutputTensor], Any, int]:
    """engine.run, with output blocks whose differing input blocks were all omitted taken from
    the base (`omitted`: "blocks", "tensors" or None, as the plan records; see base_pieces).
    Returns the outputs in task order, the engine's stats and the number of blocks taken."""
    c, o = engine.compute_dtype_name, engine.out_dtype_name
    layout: list[list[tuple[int, int, bool]] | None] = []
    work: list[TensorTask] = []
    ends: list[int] = []  # per task: how many engine tasks are done when it is complete
    taken = 0
    elementwise = get_method(engine.method).elementwise and not engine.tokenizer_source
    for t in tasks:
        runs = base_pieces(t, c, o, engine.block_size, omitted) if omitted else None
        if runs is None and elementwise:
            runs = elementwise_pieces(t, o or c, engine.block_size)
        layout.append(runs)
        if runs is None:
            work.append(t)
        else:
            n_blocks = len(_shape_record(t).blocks)
            for b0, b1, from_base in runs:
                if from_base:
                    taken += b1 - b0
                else:
                    work.append(t if (b0, b1) == (0, n_blocks) else _piece(t, b0, b1))
        ends.append(len(work))

    done = [0]
    pending = iter(ends)
    nxt = [next(pending, None)]

    def piece_done(n: int) -> None:
        done[0] += n
        while nxt[0] is not None and nxt[0] <= done[0]:
            if progress:
                progress(1)
            nxt[0] = next(pending, None)

    piece_done(0)  # tensors needing no engine work at the start
    computed, stats = engine.run(
        work,
        sink,
        n_models,
        progress=piece_done if progress else None,
        track_delta=track_delta,
        memory_limit=max((task_bytes(t) for t in tasks), default=0),
    )
    it = iter(computed)
    outputs = []
    for t, runs in zip(tasks, layout, strict=True):
        if runs is None:
            outputs.append(next(it))
            continue
        ref = _shape_record(t)
        blocks: list[bytes] = []
        dtype = ref.dtype  # the base's where some blocks are (see base_pieces)
        rows: set[int] = set()  # rows per output block: one blocking for the whole tensor
        for b0, b1, from_base in runs:
            if from_base:
                assert t.reference is not None
                blocks.extend(t.reference.blocks[b0:b1])
                rows.add(ref.rows_per_block)
            else:
                piece = next(it)
                dtype = piece.dtype
                blocks.extend(piece.blocks)
                rows.add(piece.rows_per_block)
        assert len(rows) == 1, rows
        outputs.append(
            OutputTensor(t.plan.name, dtype, tuple(ref.shape), rows.pop(), tuple(blocks))
        )
    return outputs, stats, taken


def _shape_record(t: TensorTask) -> TensorRecord:
    """The record a task's pieces are cut along: the reference's, else the first input's."""
    rec = t.reference if t.reference is not None else (t.base or t.inputs[0])
    assert rec is not None
    return rec
