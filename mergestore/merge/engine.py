"""The streaming executor: output tensors merged from blocks read out of the store.

For each output tensor the engine reads the base (reference) blocks, then each input's blocks:
a block identical to the reference block costs nothing, a block the plan omits is taken equal
to the reference block (it contributes no delta), and every other block is read and decoded
(a delta-coded block is decoded against the reference block already in hand); each block id is
read once per task, and an input with the same blocks as an earlier one is that tensor itself.
The method's pure kernel then runs on the task's tensors, and the output is cut into blocks
and handed to a sink (the store, or a hasher for replay). A task is a whole
tensor, or, for elementwise methods, a run of 8 blocks of a larger one (pieces.elementwise_pieces).

Each tensor whose method has a torch-free kernel for its dtypes and parameters (ops.lanes:
linear, task_arithmetic, ties and breadcrumbs(_ties), inputs in bf16, fp16 or fp32, compute in
any of them, any out_dtype, when the C kernels are built) runs on numpy arrays of its values'
bits, with the torch path's bits; the others go through torch. A merge whose every tensor is on
the lane never imports torch, which costs more than such a merge itself. The choice is per
tensor, so one fp32 norm does not send a bf16 merge to torch; the run's "lanes" field counts
the tensors on each lane, with torch's reasons.

The stages run as a pipeline on both cores: worker threads (one per core) each take a task
from its reads to its encoded output (read and decode its inputs, merge them with each kernel
on one torch thread, hash and encode the output's blocks; merge --out writes them to the
folder there too), and whichever worker finishes the task next in order appends it, and every
later one already finished, to the packs (merge/inorder.py), so the stored bytes never depend
on the thread count. The tasks loading and merging together hold at most the largest tensor's
bytes (`memory_limit`), and those whose outputs are still being encoded and kept at most as
much again (merge/inflight.py), so memory stays near (inputs + 4) x the largest tensor plus
the kernel's temporaries.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import field
from typing import TYPE_CHECKING, Any, Protocol

from mergestore import native
from mergestore.errors import CorruptionError
from mergestore.fast_dataclass import dataclass
from mergestore.formats.safetensors import (
    DTYPE_SIZES,
    dtype_name,
    name_of_torch_dtype,
    torch_dtype,
)
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.merge.inflight import Inflight
from mergestore.merge.inorder import InOrder
from mergestore.merge.readahead import ReadAhead
from mergestore.merge.tensorplan import OutputTensorPlan
from mergestore.ops import (
    TensorContext,
    alloc,
    get_method,
    lane_formats,
    lanes,
    merge_tensor,
    validate_params,
)
from mergestore.store import codecs
from mergestore.store.blocks import block_id, raw_check, tensor_blocking
from mergestore.store.objects import TensorRecord
from mergestore.store.packs import ReadMeter
from mergestore.store.parallel import reuse_freed_memory
from mergestore.store.promised import is_promised
from mergestore.store.reader import HEADERS_ONLY_GAP, BlockReader
from mergestore.store.repo import BlockLocation, Repository, WriteSession
from mergestore.threads import default_workers, ordered_map, thread_limit

if TYPE_CHECKING:
    import torch
else:
    from mergestore.lazy_torch import torch

Progress = Callable[[int], None]


@dataclass
class TensorTask:
    """One output tensor: its plan, the records it reads, and which input blocks to read."""

    plan: OutputTensorPlan
    base: TensorRecord | None  # the kernel's base input
    inputs: list[TensorRecord]  # the kernel's other inputs, in plan order
    input_models: list[int]  # model index of each input
    reference: TensorRecord | None  # the base model's tensor: stands in for omitted blocks
    selected: list[frozenset[int] | None]  # per input: blocks to read (None: all)
    first_row: int = 0  # a piece of a larger tensor (pieces.py): the row it starts at


@dataclass
class OutputTensor:
    """One merged tensor: its name, dtype, shape and block ids."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    rows_per_block: int
    blocks: tuple[bytes, ...]


@dataclass
class PreparedBlocks:
    """Output blocks named (and, for the store, encoded) on a worker thread, in any order:
    what is kept in task order (Sink.commit_blocks)."""

    ids: list[bytes]
    raw_lens: list[int]
    encoded: list[codecs.Encoded | None]  # None: nothing to write (the reference's, or stored)
    checks: list[int | None]  # blocks.raw_check of each block that is encoded, else None


class Sink(Protocol):
    def prepare_blocks(
        self,
        raws: Sequence[memoryview],
        dtype: str,
        refs: Sequence[bytes | None],
        ref_raw: Mapping[bytes, memoryview] | None = None,
        workers: int = 1,
        tensor: tuple[str, int] | None = None,
    ) -> PreparedBlocks:
        """Name (hash, encode) the output blocks `raws`: consecutive bytes of output tensor
        `tensor[0]` from byte `tensor[1]` on. Any thread, any order: the result never depends
        on blocks other tensors have kept."""
        ...

    def commit_blocks(self, prepared: PreparedBlocks) -> list[bytes]:
        """Keep prepared blocks; called in task order, one call at a time (on the worker that
        finished the task: merge/inorder.py). Returns their ids."""
        ...


class StoreSink:
    """Writes output blocks into the store (deduplicated; delta-coded against the base)."""

    def __init__(self, repo: Repository, session: WriteSession) -> None:
        self.repo = repo
        self.session = session

    def prepare_blocks(
        self,
        raws: Sequence[memoryview],
        dtype: str,
        refs: Sequence[bytes | None],
        ref_raw: Mapping[bytes, memoryview] | None = None,
        workers: int = 1,
        tensor: tuple[str, int] | None = None,
    ) -> PreparedBlocks:
        """Hash each block and encode it unless it is the reference block at its place or
        already stored. A block an earlier task is yet to keep is encoded as well:
        commit_blocks then skips it, so the packs get the same bytes in the same order as
        when each block was checked after the earlier ones were kept."""
        delta = self.repo.config.delta_codecs and ref_raw is not None

        Work = tuple[bytes, codecs.Encoded | None, int | None]

        def work(item: tuple[memoryview, bytes | None]) -> Work:
            raw, ref = item
            bid = block_id(raw)
            if bid == ref or self.session.known(bid):
                return bid, None, None
            ref_bytes = None
            if delta and ref is not None and not self.session.is_delta(ref):
                assert ref_raw is not None
                ref_bytes = ref_raw.get(ref)
            enc = codecs.encode_block(
                raw,
                dtype=dtype,
                level=self.repo.config.zstd_level,
                reference=ref_bytes,
                reference_id=ref if ref_bytes is not None else None,
            )
            return bid, enc, raw_check(bid, raw)

        done = list(ordered_map(work, list(zip(raws, refs, strict=True)), workers=workers))
        return PreparedBlocks(
            [d[0] for d in done], [len(raw) for raw in raws], [d[1] for d in done],
            [d[2] for d in done],
        )  # fmt: skip

    def commit_blocks(self, prepared: PreparedBlocks) -> list[bytes]:
        blocks = zip(
            prepared.ids, prepared.raw_lens, prepared.encoded, prepared.checks, strict=True
        )
        for bid, n, enc, check in blocks:
            if enc is not None:
                self.session.add_encoded(bid, n, enc, check)  # skips a block kept meanwhile
        return list(prepared.ids)

    def put_blocks(
        self, raws: Sequence[memoryview], dtype: str, refs: Sequence[bytes | None]
    ) -> list[bytes]:
        """prepare_blocks then commit_blocks, on the calling thread (no delta coding)."""
        return self.commit_blocks(self.prepare_blocks(raws, dtype, refs))


class HashSink:
    """Only names the output blocks (replay: nothing is written)."""

    def prepare_blocks(
        self,
        raws: Sequence[memoryview],
        dtype: str,
        refs: Sequence[bytes | None],
        ref_raw: Mapping[bytes, memoryview] | None = None,
        workers: int = 1,
        tensor: tuple[str, int] | None = None,
    ) -> PreparedBlocks:
        ids = list(ordered_map(block_id, list(raws), workers=workers))
        return PreparedBlocks(ids, [len(raw) for raw in raws], [None] * len(ids), [None] * len(ids))

    def commit_blocks(self, prepared: PreparedBlocks) -> list[bytes]:
        return list(prepared.ids)


@dataclass
class _Finished:
    """A merged task's output, its blocks prepared (Sink.prepare_blocks) but not yet kept."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    rows_per_block: int
    prepared: PreparedBlocks
    delta_sq: float | None  # ||out - reference||^2, when the merge tracks it


@dataclass
class EngineStats:
    """What one engine run read, computed and took."""

    expert_meters: list[ReadMeter]  # one per model index
    base_meter: ReadMeter = field(default_factory=ReadMeter)
    blocks_read: int = 0
    tensors: int = 0
    merged_delta_sq: float = 0.0  # sum over tensors of ||out - reference||^2 (fp64)
    seconds: float = 0.0
    torch_free: bool = False  # every tensor computed on the torch-free lane (ops.lanes)
    lanes: dict[str, object] = field(default_factory=dict)  # lane_report()

    def __post_init__(self) -> None:
        self._lock = threading.Lock()


@dataclass
class _InputReads:
    """One input's blocks to read, with their index entries (one lookup per tensor)."""

    rec: TensorRecord
    aligned: bool  # block-aligned with the reference tensor
    selected: frozenset[int] | None
    locations: dict[bytes, BlockLocation]
    keep: frozenset[bytes] = frozenset()  # blocks a later input of the tensor also needs


@dataclass
class _Loaded:
    """A task's tensors: torch tensors, or on the torch-free lane numpy arrays of 16-bit
    float bits."""

    task: TensorTask
    base: torch.Tensor | None
    inputs: list[torch.Tensor]
    reference: torch.Tensor | None
    ref_raw: dict[bytes, memoryview]
    workers: int = 1  # threads for the task's own block work (more than 1: merged alone)
    # With no base model: per output block, the block it is delta-coded against (None: none)
    out_refs: list[bytes | None] | None = None


class Engine:
    def __init__(
        self,
        repo: Repository,
        *,
        method: str,
        dtype: str | None,
        out_dtype: str | None,
        seed: int,
        rng: str = "per_tensor",
        block_size: int | None = None,
        tokenizer_source: str | None = None,
        vocab: Any = None,
    ) -> None:
        self.repo = repo
        self.method = method
        # torch's names ("bfloat16"), as the config gives them: their torch dtypes are looked
        # up only when torch computes
        self._dtype = dtype
        self._out_dtype = out_dtype
        # id(task) -> its compute dtype on the torch-free lane (set by run(): choose_lanes)
        self.on_lane: dict[int, str] = {}
        self.torch_reasons: dict[str, int] = {}
        self.seed = seed
        self.rng = rng
        self.block_size = block_size or repo.config.block_size
        self.tokenizer_source = tokenizer_source
        self.vocab = vocab  # merge.vocab.VocabFit: the merged tokenizer's rows (tokenizer merges)
        self.device: str | None = None  # "cuda:N" (merge/device.py); None: the CPU
        # Bytes of the largest task of the whole merge (journal.compute sets it): a flushed
        # chunk of small tensors keeps the merge's memory bound, not its own largest tensor's,
        # which would merge each of its largest tensors alone.
        self.memory_limit = 0

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return _torch_dtype_or_none(self._dtype)

    @property
    def out_dtype(self) -> torch.dtype | None:
        return _torch_dtype_or_none(self._out_dtype)

    @property
    def compute_dtype_name(self) -> str | None:
        """The compute dtype's safetensors name ("BF16"), without torch."""
        return _safetensors_name(self._dtype)

    @property
    def out_dtype_name(self) -> str | None:
        return _safetensors_name(self._out_dtype)

    def choose_lanes(self, tasks: Sequence[TensorTask]) -> None:
        """Which tasks run on the torch-free lane (on_lane: id -> compute dtype) and why the
        others do not (torch_reasons: reason -> tensors). MERGESTORE_TORCH_FREE=0 turns the
        lane off."""
        self.on_lane, self.torch_reasons = {}, {}
        memo: dict[Any, str | None] = {}  # one verdict per distinct parameter key
        for task in tasks:
            verdict = self.lane_verdict(task, memo)
            if verdict[0] is not None:
                self.on_lane[id(task)] = verdict[0]
            else:
                self.torch_reasons[verdict[1]] = self.torch_reasons.get(verdict[1], 0) + 1

    def lane_verdict(
        self, task: TensorTask, memo: dict[Any, str | None] | None = None
    ) -> tuple[str | None, str]:
        """(compute dtype, "") if the lane computes the task with the torch lane's bits: the C
        kernels are built, its tensors are bf16, fp16 or fp32 of one shape, no vocabulary is
        fitted, and ops.lanes takes the method with these parameters; else (None, why not).
        `memo` keeps ops.lanes' answer per (compute dtype, parameters, size) across tasks."""
        if native.kernels is None:
            return None, "the C kernels are not built"
        if os.environ.get("MERGESTORE_TORCH_FREE") == "0":
            return None, "MERGESTORE_TORCH_FREE=0"
        if self.vocab is not None and self.vocab.applies(task.plan.name):
            return None, "a tokenizer merge lays out its vocabulary"
        if self.device is not None:
            return None, "merge --device: the C kernels run on the CPU"
        recs = [r for r in (task.base, task.reference, *task.inputs) if r is not None]
        odd = sorted({r.dtype for r in recs} - set(lane_formats.FMT))
        if odd:
            return None, f"tensors in {', '.join(odd)}"
        if any(r.shape != recs[0].shape for r in recs):
            return None, "inputs of different shapes"
        if self.out_dtype_name not in (None, *lane_formats.FMT):
            return None, f"out_dtype {self.out_dtype_name}"
        operands = [r for r in (task.base, *task.inputs) if r is not None]
        compute = self.compute_dtype_name or lane_formats.promoted([r.dtype for r in operands])
        if task.plan.copy_from is not None:
            return compute, ""
        if compute not in lane_formats.FMT:
            return None, f"compute dtype {compute}"
        numel = math.prod(recs[0].shape)
        key = _verdict_key(compute, task, numel) if memo is not None else None
        if memo is not None and key is not None and key in memo:
            why = memo[key]
        else:
            spec = get_method(self.method)
            shared, per_input = validate_params(
                spec, task.plan.shared, list(task.plan.per_input), has_base=task.base is not None
            )
            why = lanes.reason(self.method, compute, shared, per_input, numel, rng=self.rng)
            if memo is not None and key is not None:
                memo[key] = why
        return (None, why) if why is not None else (compute, "")

    def lane_report(self, n_tasks: int) -> dict[str, object]:
        """Tensors per lane, and why tensors went through torch (merge --json's "lanes")."""
        on = len(self.on_lane)
        report: dict[str, object] = {
            "torch_free": on, "torch": n_tasks - on, "torch_reasons": dict(self.torch_reasons)
        }  # fmt: skip
        notes = lanes.notes(self.method, set(self.on_lane.values())) if on else {}
        if notes:
            report["notes"] = notes
        return report

    # -- reading ----------------------------------------------------------------------------

    def _read_reference(
        self,
        rec: TensorRecord | None,
        stats: EngineStats,
        workers: int,
        lane: bool = False,
        planned: Mapping[bytes, BlockLocation] | None = None,
        meter: ReadMeter | dict[bytes, ReadMeter] | None = None,
    ) -> tuple[torch.Tensor | None, dict[bytes, memoryview]]:
        """The reference tensor (the base model's; with no base, an input's that holds the
        others' delta references: _reference_input), each distinct block decoded straight into
        its place, and read-only views of those blocks by id (the raw bytes that inputs are
        compared with and delta-decoded against, and that output blocks are delta-coded
        against). Kernels never write to their inputs (tests/ops/test_purity.py), so the views
        stay valid. `meter`: where the reads count (one, or one per block id), else the base's."""
        if rec is None:
            return None, {}
        if rec.nbytes == 0:
            return self._shaped(alloc.empty_bytes(0), rec, lane), {}
        locs = self._locations(dict.fromkeys(rec.blocks), planned)
        first: dict[bytes, tuple[int, int]] = {}
        repeats: list[tuple[int, bytes]] = []
        pos = 0
        for bid in rec.blocks:
            n = _location(locs, bid).raw_len
            if bid in first:
                repeats.append((pos, bid))
            else:
                first[bid] = (pos, n)
            pos += n
        _check_size(rec, pos)
        dst = alloc.empty_bytes(rec.nbytes)
        meters = stats.base_meter if meter is None else meter
        self._decode_in_place(dst, first, repeats, locs, (), meters, workers)
        views = {bid: memoryview(dst[o : o + n]).toreadonly() for bid, (o, n) in first.items()}
        return self._shaped(dst, rec, lane), views

    def _shaped(self, data: np.ndarray, rec: TensorRecord, lane: bool) -> torch.Tensor:
        """A tensor of `rec`'s dtype and shape over the bytes of `data` (on the torch-free
        lane a numpy array: ops.lane_formats.view)."""
        if lane:
            return lane_formats.view(data, rec.dtype).reshape(rec.shape)  # type: ignore[return-value]
        return torch.from_numpy(data).view(torch_dtype(rec.dtype)).reshape(rec.shape)

    def _decode_in_place(
        self,
        dst: np.ndarray,
        places: dict[bytes, tuple[int, int]],
        repeats: Sequence[tuple[int, bytes]],
        locs: dict[bytes, BlockLocation],
        holders: Sequence[dict[bytes, bytes | memoryview]],
        meter: ReadMeter | dict[bytes, ReadMeter],
        workers: int,
    ) -> None:
        """Decode each block of `places` (id -> (offset, length)) straight into `dst` at its
        place (codecs.decode_block_into: no intermediate block, no copy), its delta reference
        taken from the first of `holders` that has it (else read); then copy each repeat
        (offset, id) from its block's place."""

        def into(bid: bytes) -> np.ndarray:
            off, n = places[bid]
            return dst[off : off + n]

        refs = ChainMap(*holders)  # type: ignore[arg-type]
        # not announced again: the read-ahead announced them when the task was admitted
        for _ in self._reader(announce=False).read(
            list(places), meter, locations=locs, references=refs, into=into, workers=workers
        ):
            pass
        for off, bid in repeats:
            start, n = places[bid]
            dst[off : off + n] = dst[start : start + n]

    def _read_many(self, meters: dict[bytes, ReadMeter], workers: int) -> dict[bytes, bytes]:
        """Blocks by id, each counted on its own meter; one index transaction for them all."""
        ids = list(meters)
        locs = self.repo.block_locations(ids)
        out: dict[bytes, bytes] = {}
        for bid, raw in self._reader().read(
            ids, meters, locations=locs, view=True, workers=workers
        ):
            out[bid] = raw  # type: ignore[assignment]
        return out

    def _reader(self, announce: bool = True) -> BlockReader:
        """Reads only the blocks asked for (and the entry headers between adjacent ones):
        a budgeted merge reads from disk what it counts."""
        return self.repo.reader(max_gap=HEADERS_ONLY_GAP, announce=announce)

    def _locations(
        self, ids: Mapping[bytes, None], planned: Mapping[bytes, BlockLocation] | None
    ) -> dict[bytes, BlockLocation]:
        """The index entries of `ids` (those in the store): from `planned` (a superset looked
        up when the task was admitted), else from the index. A lazy clone's block promised at
        admission is looked up again: an earlier task may have fetched and kept it since."""
        if planned is None:
            return self.repo.block_locations(ids)
        out = {b: planned[b] for b in ids if b in planned}
        promised = [b for b, loc in out.items() if is_promised(loc)]
        if promised:
            out.update(self.repo.block_locations(promised))
        return out

    def _plan_input(
        self,
        rec: TensorRecord,
        reference: TensorRecord | None,
        ref_raw: dict[bytes, memoryview],
        selected: frozenset[int] | None,
        planned: Mapping[bytes, BlockLocation] | None = None,
    ) -> _InputReads:
        """Which of an input's blocks need reading: not the reference's own, not omitted ones."""
        aligned = _aligned(rec, reference)
        to_read = _blocks_to_read(rec, reference if aligned else None, ref_raw, selected)
        return _InputReads(rec, aligned, selected, self._locations(to_read, planned))

    def _planned_reads(self, task: TensorTask) -> dict[bytes, BlockLocation]:
        """Every block `task` will read (as _load plans them): its reference's, then the
        blocks of its base and inputs that are not the reference's."""
        ref = task.reference
        ref_ids: dict[bytes, None] = dict.fromkeys(ref.blocks) if ref is not None else {}
        want = dict(ref_ids)
        if task.base is not None and not (ref is not None and task.base.blocks == ref.blocks):
            want.update(dict.fromkeys(_blocks_to_read(task.base, None, ref_ids, None)))
        for rec, sel in zip(task.inputs, task.selected, strict=True):
            aligned_ref = ref if _aligned(rec, ref) else None
            want.update(dict.fromkeys(_blocks_to_read(rec, aligned_ref, ref_ids, sel)))
        return self.repo.block_locations(want)

    def _read_delta_references(
        self,
        plans: Sequence[tuple[_InputReads, ReadMeter]],
        first_need: Mapping[bytes, ReadMeter],
        held: Mapping[bytes, bytes | memoryview],
        workers: int,
    ) -> dict[bytes, bytes]:
        """Delta references the tensor's reads need and the engine does not hold: each is read
        once per tensor (before the blocks that need it), charged to the first input that
        needs it, as a reference or as one of its own blocks (`first_need`: _first_needs)."""
        refs = {
            loc.ref: None
            for reads, _meter in plans
            for loc in reads.locations.values()
            if loc.ref is not None and loc.ref not in held
        }
        return self._read_many({r: first_need[r] for r in refs}, workers) if refs else {}

    def _read_input_tensor(
        self,
        reads: _InputReads,
        reference: TensorRecord | None,
        reference_t: torch.Tensor | None,
        ref_raw: dict[bytes, memoryview],
        held: dict[bytes, bytes | memoryview],
        meter: ReadMeter,
        stats: EngineStats,
        workers: int,
        lane: bool = False,
    ) -> torch.Tensor:
        """An input tensor: each block it needs read is decoded straight into its place
        (codecs.decode_block_into: no intermediate block, no copy); the others are copied from
        the base's blocks or from blocks already read. An input whose every block is (or, left
        out by the plan, is taken as) the base's block at the same position is the base
        tensor itself: nothing is read, copied or allocated."""
        rec, selected, locs = reads.rec, reads.selected, reads.locations
        if rec.nbytes == 0:
            return self._shaped(alloc.empty_bytes(0), rec, lane)
        decode: dict[bytes, tuple[int, int]] = {}  # block id -> (offset, length) it decodes to
        copies: list[tuple[int, bytes | memoryview]] = []  # (offset, source)
        repeats: list[tuple[int, bytes]] = []  # (offset, id of a block decoded elsewhere)
        pos = 0
        same_as_reference = reads.aligned and reference_t is not None
        for i, bid in enumerate(rec.blocks):
            src: bytes | memoryview | None = None
            if reads.aligned:
                assert reference is not None
                rid = reference.blocks[i]
                if bid == rid or (selected is not None and i not in selected):
                    src = ref_raw[rid]  # equal to, or (omitted) taken equal to, the base here
            if src is None:
                same_as_reference = False
            if src is None and bid in ref_raw:  # the base's block at another position
                src = ref_raw[bid]
            if src is None and bid in held:
                src = held[bid]
            if src is not None:
                copies.append((pos, src))
                pos += len(src)
            elif bid in decode:
                repeats.append((pos, bid))
                pos += decode[bid][1]
            else:
                n = _location(locs, bid).raw_len
                decode[bid] = (pos, n)
                pos += n
        _check_size(rec, pos)
        if same_as_reference:
            assert reference_t is not None
            return reference_t
        with stats._lock:
            stats.blocks_read += len(decode)
        dst = alloc.empty_bytes(rec.nbytes)
        self._decode_in_place(dst, decode, repeats, locs, (ref_raw, held), meter, workers)
        for off, src in copies:
            dst[off : off + len(src)] = np.frombuffer(src, dtype=np.uint8)
        for bid in reads.keep:
            if bid in decode:
                off, n = decode[bid]
                held[bid] = memoryview(dst[off : off + n]).toreadonly()
        return self._shaped(dst, rec, lane)

    def _load_named(
        self,
        task: TensorTask,
        stats: EngineStats,
        workers: int = 1,
        planned: Mapping[bytes, BlockLocation] | None = None,
    ) -> _Loaded:
        """_load, with a missing or corrupt block's error naming the tensor being read."""
        try:
            return self._load(task, stats, workers, planned)
        except CorruptionError as e:
            if str(e).startswith("tensor "):
                raise
            raise CorruptionError(f"tensor {task.plan.name!r}: {e}") from None

    def _load(
        self,
        task: TensorTask,
        stats: EngineStats,
        workers: int = 1,
        planned: Mapping[bytes, BlockLocation] | None = None,
    ) -> _Loaded:
        """Read and decode a task's inputs, on `workers` threads (the engine passes more than
        one only for a task merged alone: otherwise tasks load side by side, which measured
        faster than splitting each task's blocks over threads as well). `planned`: the index
        entries of its blocks (_planned_reads), else they are looked up here."""
        lane = id(task) in self.on_lane
        reference_t, ref_raw = self._read_reference(task.reference, stats, workers, lane, planned)
        base_reads = None
        if task.base is not None and not (
            task.reference is not None and task.base.blocks == task.reference.blocks
        ):
            base_reads = self._plan_input(task.base, None, ref_raw, None, planned)
        input_reads = [
            self._plan_input(rec, task.reference, ref_raw, sel, planned)
            for rec, sel in zip(task.inputs, task.selected, strict=True)
        ]
        plans = [
            (r, stats.expert_meters[m]) for r, m in zip(input_reads, task.input_models, strict=True)
        ]
        if base_reads is not None:
            plans.insert(0, (base_reads, stats.base_meter))
        # Blocks several inputs share (frozen tensors, with no base to hold them) are read
        # once per tensor and kept only until the last input that needs them is read.
        later: set[bytes] = set()
        for reads, _meter in reversed(plans):
            reads.keep = frozenset(b for b in reads.locations if b in later)
            later.update(reads.locations)
        # (Every block read here was announced to the kernel when the task was admitted:
        # merge/readahead.py.)
        # With no reference tensor (no base model: linear, karcher), an input made only of the
        # others' delta references (the base's blocks: a frozen tensor next to fine-tunes of
        # it) is decoded first as one tensor, and its blocks serve as those references: no
        # block-by-block reads of them, and no copy of them into that input's tensor.
        first_need = _first_needs(plans)
        own_t, own_views = None, {}
        k_own = _reference_input(input_reads) if task.reference is None else None
        if k_own is not None:
            rec = input_reads[k_own].rec
            own_t, own_views = self._read_reference(
                rec, stats, workers, lane, planned, meter={b: first_need[b] for b in rec.blocks}
            )
        held = self._read_delta_references(plans, first_need, {**ref_raw, **own_views}, workers)
        held.update(own_views)
        base_t = None
        if task.base is not None:
            if base_reads is None:
                base_t = reference_t
            else:
                base_t = self._read_input_tensor(
                    base_reads, None, None, ref_raw, held, stats.base_meter, stats, workers, lane
                )
        inputs: list[torch.Tensor] = []
        for k, (reads, model) in enumerate(zip(input_reads, task.input_models, strict=True)):
            if k == k_own and own_t is not None:
                inputs.append(own_t)
                continue
            same = _same_input(reads, input_reads[:k])
            if same is not None:  # the blocks of an earlier input: that tensor itself, no copy
                inputs.append(inputs[same])
                continue
            meter = stats.expert_meters[model]
            inputs.append(
                self._read_input_tensor(
                    reads, task.reference, reference_t, ref_raw, held, meter, stats, workers, lane
                )
            )
        out_refs = None
        if task.reference is None and held:
            out_refs, ref_raw = _output_references(task, input_reads, held)
        del held
        if self.vocab is not None and self.vocab.applies(task.plan.name):
            base_t, inputs = self._fit_vocab(task, base_t, inputs)
        return _Loaded(task, base_t, inputs, reference_t, ref_raw, workers, out_refs)

    def _fit_vocab(
        self, task: TensorTask, base_t: torch.Tensor | None, inputs: list[torch.Tensor]
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Every input laid out in the merged tokenizer's vocabulary (merge/vocab.py), inputs
        first in config order, then the base (mergekit's order of a slice's sources)."""
        p = task.plan
        pairs = list(zip(task.input_models, inputs, strict=True))
        if base_t is not None:
            anchor = p.copy_from if p.copy_from is not None else p.base
            assert anchor is not None
            pairs.append((anchor.model_index, base_t))
        fitted = self.vocab.fit(pairs, self.compute_dtype)
        if base_t is not None:
            return fitted[-1], fitted[:-1]
        return None, fitted

    # -- merging ----------------------------------------------------------------------------

    def _merge(self, ld: _Loaded) -> torch.Tensor:
        p = ld.task.plan
        compute = self.on_lane.get(id(ld.task))
        if p.copy_from is not None:
            src = ld.base if ld.task.base is not None else ld.inputs[0]
            assert src is not None
            if compute is not None:  # a lane array: converted to out_dtype if one is set
                out_name = self.out_dtype_name
                return src if out_name is None else lane_formats.convert(src, out_name)  # type: ignore[arg-type,return-value]
            if self.out_dtype is None or not src.is_floating_point():
                return src
            return src.to(self.out_dtype)
        if compute is not None:
            return self._merge_torch_free(ld, compute)
        ctx = TensorContext(name=p.name, seed=self.seed, rng=self.rng)
        if self.device is not None:
            from mergestore.merge.device import to_device

            out = merge_tensor(
                self.method,
                to_device(ld.base, self.device),
                [to_device(x, self.device) for x in ld.inputs],
                p.shared,
                list(p.per_input),
                ctx,
                dtype=self.compute_dtype,
                out_dtype=self.out_dtype,
            )
            return out.cpu()
        return merge_tensor(
            self.method,
            ld.base,
            ld.inputs,
            p.shared,
            list(p.per_input),
            ctx,
            dtype=self.compute_dtype,
            out_dtype=self.out_dtype,
        )

    def _merge_torch_free(self, ld: _Loaded, compute: str) -> torch.Tensor:
        """_merge on the torch-free lane (ops.lanes): numpy arrays in and out."""
        p = ld.task.plan
        shared, per_input = validate_params(
            get_method(self.method), p.shared, list(p.per_input), has_base=ld.base is not None
        )
        return lanes.merge(  # type: ignore[return-value]
            self.method,
            ld.base,  # type: ignore[arg-type]
            ld.inputs,  # type: ignore[arg-type]
            shared,
            per_input,
            compute,
            self.out_dtype_name,
            ctx=TensorContext(name=p.name, seed=self.seed, rng=self.rng),
        )

    def _prepare_output(
        self, ld: _Loaded, out: torch.Tensor, sink: Sink, track_delta: bool
    ) -> _Finished:
        """Cut a merged tensor into blocks and name them (the sink hashes and encodes them,
        merge --out writes them to the folder), on the worker thread that merged it: only
        keeping them is left, in task order."""
        name = ld.task.plan.name
        if isinstance(out, np.ndarray):  # the torch-free lane's array (ops.lanes)
            arr = np.ascontiguousarray(out)
            dtype, shape = lane_formats.format_of(arr), tuple(arr.shape)
            data = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b""
        else:
            out = out.contiguous()
            dtype, shape = dtype_name(out.dtype), tuple(out.shape)
            data = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if out.numel() else b""
        blocking = tensor_blocking(shape, DTYPE_SIZES[dtype], self.block_size)
        raws = [data[b0:b1] for b0, b1 in blocking.ranges()]
        ref = ld.task.reference
        refs: list[bytes | None] = [None] * len(raws)
        if ref is not None and ref.dtype == dtype and tuple(ref.shape) == shape:
            refs = list(ref.blocks)
        elif ld.out_refs is not None and len(ld.out_refs) == len(raws):
            ins = ld.task.inputs
            if ins and ins[0].dtype == dtype and tuple(ins[0].shape) == shape:
                refs = [
                    r if r is not None and len(ld.ref_raw[r]) == len(raw) else None
                    for r, raw in zip(ld.out_refs, raws, strict=True)
                ]
        at = ld.task.first_row * blocking.row_bytes  # the output's rows: its own blocking
        # More than one thread only for a task merged alone (nothing else runs beside it).
        prepared = sink.prepare_blocks(raws, dtype, refs, ld.ref_raw, ld.workers, (name, at))
        delta_sq = None
        if track_delta and ld.reference is not None and tuple(ld.reference.shape) == shape:
            delta_sq = self._delta_sq(ld.reference, out, data, dtype)
        return _Finished(name, dtype, shape, blocking.rows_per_block, prepared, delta_sq)

    def _delta_sq(
        self, reference: torch.Tensor, out: torch.Tensor, data: memoryview | bytes, dtype: str
    ) -> float:
        """||out - reference||^2 in fp64 (the merge delta a budget's bound is compared with):
        torch's dot product, or on the torch-free lane the fp64 delta statistics kernel (a
        statistic, not output bits: the two may differ in the last digits)."""
        if isinstance(out, np.ndarray):
            assert native.kernels is not None
            ref_arr = np.asarray(reference)
            if lane_formats.format_of(ref_arr) != dtype:  # both widened to fp32, exactly
                ref_arr, out, dtype = (
                    lane_formats.convert(ref_arr, "F32"),
                    lane_formats.convert(out, "F32"),
                    "F32",
                )
            ref = np.ascontiguousarray(ref_arr).reshape(-1).view(np.uint8)
            flat = np.ascontiguousarray(out).reshape(-1).view(np.uint8)
            return float(native.kernels.delta_stats(ref, flat, dtype)[0]) if flat.size else 0.0
        d = out.to(torch.float64) - reference.to(torch.float64)
        return float(torch.dot(d.reshape(-1), d.reshape(-1)))

    def run(
        self,
        tasks: Sequence[TensorTask],
        sink: Sink,
        n_models: int,
        *,
        progress: Progress | None = None,
        track_delta: bool = False,
        memory_limit: int = 0,
    ) -> tuple[list[OutputTensor], EngineStats]:
        """Merge every task; outputs come back in task order.

        A pipeline: `compute_workers()` threads each read and decode a task's blocks, merge
        it (each kernel on one torch thread) and hash and encode its output's blocks, side by
        side; finished tasks are kept in task order (merge/inorder.py). Reading, decoding,
        hashing, zstd and the kernels all release the GIL, so the workers share the cores.
        """
        t0 = time.perf_counter()
        reuse_freed_memory()
        stats = EngineStats(expert_meters=[ReadMeter() for _ in range(n_models)])
        self.choose_lanes(tasks)
        stats.torch_free = len(self.on_lane) == len(tasks)
        stats.lanes = self.lane_report(len(tasks))
        # torch on one thread wherever a kernel calls it (lanes.TORCH_METHODS: torch.dot's
        # order depends on its threads), as for the torch path
        uses_torch = not stats.torch_free or self.method in lanes.TORCH_METHODS
        threads = torch.get_num_threads() if uses_torch else 0
        if threads:
            torch.set_num_threads(1)
        # torch's global generator (rng="global") is drawn in task order: one tensor at a time.
        workers = compute_workers() if self.rng != "global" else 1
        try:
            with alloc.pooling():
                outputs = self._run(
                    tasks, sink, stats, progress, track_delta, workers, memory_limit
                )
        finally:
            if threads:
                torch.set_num_threads(threads)
        stats.seconds = time.perf_counter() - t0
        return outputs, stats

    def _work(
        self,
        index: int,
        task: TensorTask,
        cost: int,
        stats: EngineStats,
        load_workers: int,
        sink: Sink,
        track_delta: bool,
        inflight: Inflight[OutputTensor],
        order: InOrder[_Finished, OutputTensor],
        kept: Future[OutputTensor],
        planned: Mapping[bytes, BlockLocation] | None = None,
    ) -> None:
        """One task on one worker thread, from its reads to its encoded blocks (read and
        decode, merge, hash and encode), then kept in task order (merge/inorder.py).
        `planned`: the index entries of every block it reads, looked up and announced when it
        was admitted (merge/readahead.py)."""
        try:
            ld = self._load_named(task, stats, load_workers, planned)
            out = self._merge(ld)
            # The inputs can go now; the output's blocks still need the base blocks (delta
            # coding).
            ld = _Loaded(ld.task, None, [], ld.reference, ld.ref_raw, ld.workers, ld.out_refs)
            inflight.merged(cost)
            fin = self._prepare_output(ld, out, sink, track_delta)
            del ld, out
        except BaseException as e:  # noqa: BLE001 - the task's failure, raised by retire()
            order.done(index, e, kept)
            return
        order.done(index, fin, kept)

    def _keep(self, fin: _Finished, sink: Sink, stats: EngineStats) -> OutputTensor:
        """A finished task's blocks kept, in task order (one at a time: merge/inorder.py)."""
        ids = sink.commit_blocks(fin.prepared)
        if fin.delta_sq is not None:
            stats.merged_delta_sq += fin.delta_sq  # summed in task order: the same float
        return OutputTensor(fin.name, fin.dtype, fin.shape, fin.rows_per_block, tuple(ids))

    def _run(
        self,
        tasks: Sequence[TensorTask],
        sink: Sink,
        stats: EngineStats,
        progress: Progress | None,
        track_delta: bool,
        workers: int,
        memory_limit: int,
    ) -> list[OutputTensor]:
        outputs: list[OutputTensor] = []
        # The tasks loading or merging together hold at most as many bytes as the largest
        # tensor (or task), so a tensor that size loads and merges alone; its output is
        # hashed, encoded and kept while the next tasks load (merge/inflight.py). Each worker
        # takes a task from its reads to its encoded blocks: no handoff between stages. Up to
        # 4 tasks per worker are admitted (queued ones hold no memory; the byte bounds hold
        # what runs), so a worker finds its next task queued, even when the main thread, which
        # admits them, is late to wake (a traced run: workers idle 37 ms waiting for it).
        limit = max(max((task_bytes(t) for t in tasks), default=0), memory_limit, self.memory_limit)
        inflight: Inflight[OutputTensor] = Inflight(limit, window=4 * workers + 1)
        order: InOrder[_Finished, OutputTensor] = InOrder(lambda fin: self._keep(fin, sink, stats))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mergestore-merge")
        reader = self._reader()
        ahead = ReadAhead(len(tasks), lambda i: self._planned_reads(tasks[i]), reader.advise)

        def retire() -> None:
            outputs.append(inflight.retire())
            if progress:
                progress(1)

        try:
            for index, task in enumerate(tasks):
                cost = task_bytes(task)
                while not inflight.wait_room(cost):
                    retire()
                alone = 2 * cost > limit  # no other task loads beside it: split its reads
                kept: Future[OutputTensor] = Future()
                inflight.admit(kept, cost)
                ahead.admitted(index)  # its reads announced, their index entries kept
                pool.submit(
                    self._work, index, task, cost, stats, default_workers() if alone else 1,
                    sink, track_delta, inflight, order, kept, ahead.take(index),
                )  # fmt: skip
                del kept
                stats.tensors += 1
            while inflight:
                retire()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return outputs


def _aligned(rec: TensorRecord, reference: TensorRecord | None) -> bool:
    """Whether `rec` is cut into the same blocks as `reference` (block i against block i)."""
    return bool(
        reference is not None
        and reference.blocks
        and len(reference.blocks) == len(rec.blocks)
        and reference.dtype == rec.dtype
        and reference.shape == rec.shape
    )


def _blocks_to_read(
    rec: TensorRecord,
    aligned_reference: TensorRecord | None,
    ref_ids: Mapping[bytes, object],
    selected: frozenset[int] | None,
) -> list[bytes]:
    """The blocks of `rec` to read: not the aligned reference's block at the same position,
    not one the plan leaves out (`selected`), not any block of the reference (`ref_ids`)."""
    to_read: list[bytes] = []
    for i, bid in enumerate(rec.blocks):
        if aligned_reference is not None:
            rid = aligned_reference.blocks[i]
            if bid == rid or (selected is not None and i not in selected):
                continue
        if bid in ref_ids:  # the base's block at another position
            continue
        to_read.append(bid)
    return to_read


def _output_references(
    task: TensorTask, input_reads: Sequence[_InputReads], held: Mapping[bytes, bytes | memoryview]
) -> tuple[list[bytes | None] | None, dict[bytes, memoryview]]:
    """With no base model, the blocks an output tensor is delta-coded against: at each
    position, the delta reference of the first input whose block there has one (a block of
    the inputs' common base, read to decode them). A linear merge of fine-tunes is as near
    their base as a task-arithmetic merge is near its base: stored as a delta, it is half the
    bytes to encode and write. The output's block ids, so its tree, do not change."""
    ins = task.inputs
    if not ins or any(len(r.rec.blocks) != len(ins[0].blocks) for r in input_reads):
        return None, {}
    refs: list[bytes | None] = []
    raw: dict[bytes, memoryview] = {}
    for i in range(len(ins[0].blocks)):
        ref = None
        for reads in input_reads:
            loc = reads.locations.get(reads.rec.blocks[i])
            if loc is not None and loc.ref is not None and loc.ref in held:
                ref = loc.ref
                break
        if ref is not None and ref not in raw:
            raw[ref] = memoryview(held[ref]).toreadonly()
        refs.append(ref)
    return refs, raw


def _same_input(reads: _InputReads, earlier: Sequence[_InputReads]) -> int | None:
    """Index of an earlier input of the task whose tensor this input's is: the same blocks in
    the same dtype and shape, the same blocks left out (say, a frozen tensor that several
    models share). Kernels never write to their inputs (tests/ops/test_purity.py), so the
    kernel may get that tensor itself, as it gets the base for an input equal to it."""
    rec = reads.rec
    for j, e in enumerate(earlier):
        if (
            e.rec.blocks == rec.blocks
            and e.rec.dtype == rec.dtype
            and e.rec.shape == rec.shape
            and e.selected == reads.selected
        ):
            return j
    return None


def _first_needs(plans: Sequence[tuple[_InputReads, ReadMeter]]) -> dict[bytes, ReadMeter]:
    """Block id -> the meter of the first input that needs it, as one of its own blocks or as
    a delta reference of one: where that block's read is counted."""
    first_need: dict[bytes, ReadMeter] = {}
    for reads, meter in plans:
        for bid, loc in reads.locations.items():
            first_need.setdefault(bid, meter)
            if loc.ref is not None:
                first_need.setdefault(loc.ref, meter)
    return first_need


def _reference_input(reads: Sequence[_InputReads]) -> int | None:
    """The first input whose every block is a delta reference of another input's blocks and
    is itself stored whole (no delta, not promised by a remote), with no block left out: read
    as one tensor, it holds those references. None: no such input."""
    refs = {loc.ref for r in reads for loc in r.locations.values() if loc.ref is not None}
    if not refs:
        return None
    for k, r in enumerate(reads):
        if r.selected is not None or not r.rec.blocks or r.rec.nbytes == 0:
            continue
        locs = [r.locations.get(b) for b in r.rec.blocks]
        if all(
            b in refs and loc is not None and loc.ref is None and not is_promised(loc)
            for b, loc in zip(r.rec.blocks, locs, strict=True)
        ):
            return k
    return None


def _location(locs: dict[bytes, BlockLocation], bid: bytes) -> BlockLocation:
    loc = locs.get(bid)
    if loc is None:
        raise CorruptionError(f"block {bid.hex()[:12]} is missing from the store")
    return loc


def _check_size(rec: TensorRecord, pos: int) -> None:
    if pos != rec.nbytes:
        raise CorruptionError(f"tensor {rec.name!r}: blocks hold {pos} bytes, not {rec.nbytes}")


def _verdict_key(compute: str, task: TensorTask, numel: int) -> Any:
    """What ops.lanes' verdict on a task depends on, hashable; None if a parameter value is
    not (no memo then). Each value goes with its type: 1 and True are equal, not the same."""
    try:
        params = tuple(
            tuple((k, type(v), v) for k, v in d.items())
            for d in (task.plan.shared, *task.plan.per_input)
        )
        key = (compute, task.base is not None, numel, params)
        hash(key)
    except TypeError:
        return None
    return key


def task_bytes(task: TensorTask) -> int:
    """Bytes of one input of the task's tensor (what its memory scales with)."""
    rec = task.base if task.base is not None else (task.inputs[0] if task.inputs else None)
    return rec.nbytes if rec is not None else 0


def compute_workers() -> int:
    """Tensors merged at once: MERGESTORE_MERGE_WORKERS, else MERGESTORE_THREADS, else one per
    core (at most 4). The result is the same bits for any count (tests/merge/test_threads.py).

    Parallelism across tensors rather than torch intra-op threads: two intra-op threads
    fighting the loader on 2 cores ran 2-3x slower (measured), while independent tensors on
    one torch thread each need no synchronisation.
    """
    env = os.environ.get("MERGESTORE_MERGE_WORKERS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return thread_limit() or max(1, min(4, os.cpu_count() or 1))


def _safetensors_name(name: str | None) -> str | None:
    return name_of_torch_dtype(name) if name is not None else None


def _torch_dtype_or_none(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    table = {
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
        "float64": torch.float64,
    }
    return table[name]
