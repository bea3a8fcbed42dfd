"""`diff` and `analyze`: compare two checkpoints block by block, with exact fp64 statistics.

Blocks at the same index of two tensors with the same dtype and shape cover the same elements,
so a block whose id is the same on both sides is settled without reading anything. Only the
changed blocks are read (the A block first, so a B block stored as an XOR delta against it is
decoded from the bytes in hand). Statistics of a changed pair are kept in the store's stats db
under (id B, id A, dtype) and reused by later diffs and by the budget planner.

‖A‖ of a changed tensor needs every block of A, its unchanged blocks included. Their norms are
kept under the key (id A, id A, dtype): a DeltaStats with a zero delta and l2_a = l2_b = ‖A_block‖.
So the first diff of a partly changed tensor reads its unchanged A blocks once; later diffs (and
diffs against any other checkpoint sharing those blocks) read nothing for them.

This module sits above the store: it uses Repository reads and WriteSession publishing only.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergestore import native
from mergestore.diff_side import TensorSide, side_blocking, stats_from_sums
from mergestore.errors import FormatError, MergestoreError, RefError
from mergestore.fast_dataclass import dataclass
from mergestore.formats.checkpoint import scan_checkpoint
from mergestore.formats.safetensors import DTYPE_SIZES, torch_dtype
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.store.blocks import block_id, tensor_blocking
from mergestore.store.index import DeltaStats
from mergestore.store.objects import TensorRecord
from mergestore.store.packs import ReadMeter
from mergestore.store.parallel import read_exact, reuse_freed_memory
from mergestore.store.repo import Repository
from mergestore.threads import default_workers, one_torch_thread, ordered_map

if TYPE_CHECKING:  # torch is imported where a torch fallback runs: the C kernels need none
    import torch

Progress = Callable[[int], None]
STATUSES = ("changed", "retyped", "added", "removed", "unchanged")
READ_BATCH_BYTES = 64 << 20  # block positions whose store blocks are read together
_CHUNK = 1 << 17  # elements per fp64 pass: two 1 MiB scratch buffers stay in cache


# ----------------------------------------------------------------------------- fp64 statistics


_scratch = threading.local()
# Blocks arrive as immutable bytes and are only ever read through their tensor views. torch
# warns about that once per process; the first view is taken with that warning silenced.
_quiet_lock = threading.Lock()
_quiet = False


def _buffers(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = (
            torch.empty(_CHUNK, dtype=torch.float64),
            torch.empty(_CHUNK, dtype=torch.float64),
        )
    return bufs[0][:n], bufs[1][:n]


def _flat(raw: bytes | bytearray | memoryview, dtype: str) -> torch.Tensor:
    """A flat read-only view of block bytes (no copy; nothing ever writes through it)."""
    import torch

    dt = torch_dtype(dtype)
    if len(raw) == 0:
        return torch.empty(0, dtype=dt)
    global _quiet
    readonly = isinstance(raw, bytes) or (isinstance(raw, memoryview) and raw.readonly)
    if readonly and not _quiet:
        with _quiet_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            t = torch.frombuffer(raw, dtype=dt)
            _quiet = True
            return t
    return torch.frombuffer(raw, dtype=dt)


def block_stats(b_raw: bytes | memoryview, a_raw: bytes | memoryview, dtype: str) -> DeltaStats:
    """Statistics of B − A for two blocks at the same position, in fp64 (no full-size copies).

    Each chunk of both blocks is widened into a cache-sized fp64 scratch buffer; the delta is
    formed in place. Equal to blockstats.delta_stats up to the order of fp64 summation.
    """
    if native.kernels is not None and dtype in _NATIVE_STATS:
        if len(b_raw) != len(a_raw):
            raise FormatError("blocks of different lengths cannot be compared")
        dd, l1, mx, bb, aa, nnz = native.kernels.delta_stats(b_raw, a_raw, dtype)
        return stats_from_sums(dd, l1, mx, bb, aa, nnz, len(b_raw) // DTYPE_SIZES[dtype])
    import torch

    bt, at = _flat(b_raw, dtype), _flat(a_raw, dtype)
    if bt.numel() != at.numel():
        raise FormatError("blocks of different lengths cannot be compared")
    dd = l1 = bb = aa = mx = 0.0
    nnz = 0
    for s in range(0, bt.numel(), _CHUNK):
        x, y = at[s : s + _CHUNK], bt[s : s + _CHUNK]
        a64, b64 = _buffers(x.numel())
        a64.copy_(x)
        b64.copy_(y)
        bb += float(torch.dot(b64, b64))
        aa += float(torch.dot(a64, a64))
        d = b64.sub_(a64)
        dd += float(torch.dot(d, d))
        # values, not bytes: -0.0 == 0.0, and NaN != NaN (its delta is NaN, counted);
        # numpy's count is several times faster than torch's here
        nnz += int(np.count_nonzero(d.numpy()))
        d.abs_()
        l1 += float(d.sum())
        mx = max(mx, float(d.amax()))
    return stats_from_sums(dd, l1, mx, bb, aa, nnz, bt.numel())


# dtypes the C kernel reads (one fused fp64 pass over both blocks, GIL released)
_NATIVE_STATS = frozenset({"BF16", "F16", "F32", "F64"})


def block_norm(raw: bytes | memoryview, dtype: str) -> DeltaStats:
    """The statistics of a block against itself: a zero delta, and its norm."""
    if native.kernels is not None and dtype in _NATIVE_STATS:
        sq = native.kernels.delta_stats(raw, raw, dtype)[3]
        n = math.sqrt(sq)
        return DeltaStats(0.0, 0.0, 0.0, n, 0, len(raw) // DTYPE_SIZES[dtype], sq, n)
    import torch

    t = _flat(raw, dtype)
    sq = 0.0
    for s in range(0, t.numel(), _CHUNK):
        x = t[s : s + _CHUNK]
        a64, _ = _buffers(x.numel())
        a64.copy_(x)
        sq += float(torch.dot(a64, a64))
    n = math.sqrt(sq)
    return DeltaStats(0.0, 0.0, 0.0, n, 0, t.numel(), sq, n)


def stats_dtype_ok(dtype: str) -> bool:
    """Whether statistics can be computed for a dtype (numeric and known to torch)."""
    if native.kernels is not None and dtype in _NATIVE_STATS:
        return True
    try:
        torch_dtype(dtype)
    except FormatError:
        return False
    return True


def read_pair(repo: Repository, b: bytes, a: bytes, meter: ReadMeter | None) -> tuple[bytes, bytes]:
    """Raw bytes of blocks B and A; B's delta reference is not read twice when it is A."""
    a_raw = repo.read_block(a, meter)
    loc = repo.block_location(b)
    ref = a_raw if loc is not None and loc.ref == a else None
    return repo.read_block(b, meter, reference=ref, location=loc), a_raw


def pair_stats(
    repo: Repository, b: bytes, a: bytes, dtype: str, meter: ReadMeter | None
) -> tuple[DeltaStats, bool]:
    """Kept statistics of (B, A), or computed from the stored bytes; True when computed.

    The one code path for statistics of stored block pairs: diff, analyze and the planner.
    """
    st = repo.get_stats(b, a, dtype)
    if st is not None:
        return st, False
    if b == a:
        return block_norm(repo.read_block(a, meter), dtype), True
    b_raw, a_raw = read_pair(repo, b, a, meter)
    return block_stats(b_raw, a_raw, dtype), True


def pair_stats_many(
    repo: Repository,
    keys: Sequence[tuple[bytes, bytes, str]],
    meter: ReadMeter | None,
    *,
    workers: int,
    progress: Progress | None = None,
) -> Iterator[tuple[DeltaStats, bool]]:
    """pair_stats of many keys, in order; True where computed. Each batch's blocks without
    kept statistics are read together through the store's block reader (pack order,
    coalesced), then the statistics are computed on `workers` threads."""
    per_batch = max(1, READ_BATCH_BYTES // repo.config.block_size)
    for start in range(0, len(keys), per_batch):
        batch = keys[start : start + per_batch]
        kept = repo.get_stats_many(batch)
        need = [bid for b, a, _d in batch if (b, a, _d) not in kept for bid in (a, b)]
        raws: dict[bytes, bytes | memoryview] = {}
        for bid, raw in repo.reader().read(need, meter, workers=workers):
            assert not isinstance(raw, Exception)
            raws[bid] = raw
        one = _PairStats(kept, raws, progress)
        yield from ordered_map(one, batch, workers=workers)


@dataclass
class _PairStats:
    """Statistics of one key from kept ones or from blocks in hand (pair_stats_many)."""

    kept: dict[tuple[bytes, bytes, str], DeltaStats]
    raws: dict[bytes, bytes | memoryview]
    progress: Progress | None

    def __call__(self, key: tuple[bytes, bytes, str]) -> tuple[DeltaStats, bool]:
        st = self.kept.get(key)
        fresh = st is None
        if st is None:
            b, a, dtype = key
            a_raw = self.raws[a]
            st = block_norm(a_raw, dtype) if b == a else block_stats(self.raws[b], a_raw, dtype)
        if self.progress:
            self.progress(1)
        return st, fresh


# ----------------------------------------------------------------------------- results


@dataclass
class _Acc:
    """Running sums of one tensor's block statistics."""

    dd: float = 0.0
    l1: float = 0.0
    mx: float = 0.0
    bb: float = 0.0
    aa: float = 0.0
    ab: float = 0.0
    nnz: int = 0
    numel: int = 0
    blocks_changed: int = 0

    def add(self, st: DeltaStats, changed: bool) -> None:
        self.dd += st.l2 * st.l2
        self.l1 += st.l1
        self.mx = max(self.mx, st.max_abs)
        self.bb += st.l2_b * st.l2_b
        self.aa += st.l2_a * st.l2_a
        self.ab += st.dot
        self.nnz += st.nnz
        self.numel += st.numel
        self.blocks_changed += int(changed)


@dataclass
class TensorDiff:
    """One tensor's line of a diff. Delta fields are set for changed tensors only."""

    name: str
    status: str
    dtype: str
    shape: tuple[int, ...]
    blocks_total: int
    blocks_changed: int
    numel: int
    delta_l2: float | None = None
    rel_delta: float | None = None
    cosine: float | None = None
    max_abs: float | None = None
    frac_changed: float | None = None
    delta_l1: float | None = None
    nnz: int | None = None
    l2_a: float | None = None
    l2_b: float | None = None
    a_dtype: str | None = None  # when A's differs (retyped)
    a_shape: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "blocks_total": self.blocks_total,
            "blocks_changed": self.blocks_changed,
            "delta_l2": self.delta_l2,
            "rel_delta": self.rel_delta,
            "cosine": self.cosine,
            "max_abs": self.max_abs,
            "frac_changed": self.frac_changed,
            "delta_l1": self.delta_l1,
            "nnz": self.nnz,
            "numel": self.numel,
            "l2_a": self.l2_a,
            "l2_b": self.l2_b,
        }
        if self.status == "retyped":
            d["a_dtype"] = self.a_dtype
            d["a_shape"] = list(self.a_shape) if self.a_shape is not None else None
        return d


def _finish(t: TensorDiff, acc: _Acc) -> None:
    t.delta_l2 = math.sqrt(acc.dd)
    t.delta_l1 = acc.l1
    t.max_abs = acc.mx
    t.nnz = acc.nnz
    t.l2_a = math.sqrt(acc.aa)
    t.l2_b = math.sqrt(acc.bb)
    t.rel_delta = t.delta_l2 / t.l2_a if t.l2_a > 0 else None
    t.cosine = acc.ab / (t.l2_a * t.l2_b) if t.l2_a > 0 and t.l2_b > 0 else None
    if t.cosine is not None:
        t.cosine = max(-1.0, min(1.0, t.cosine))
    t.frac_changed = acc.nnz / acc.numel if acc.numel else 0.0


def _set_unchanged(t: TensorDiff) -> None:
    """Same bytes: a zero delta, known without reading (cosine 1 by definition, not measured)."""
    t.delta_l2 = t.delta_l1 = t.max_abs = t.rel_delta = t.frac_changed = 0.0
    t.nnz = 0
    t.cosine = 1.0


_LAYER = re.compile(r"\.(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The layer index in a tensor name (model.layers.3.mlp... -> 3), or None."""
    m = _LAYER.search("." + name)
    return int(m.group(1)) if m else None


# First match wins: norms before q/k (qwen's self_attn.q_norm is a norm).
_MODULES = (
    ("norms", r"norm|(^|\.)ln_?\w*(\.|$)"),
    ("embeddings", r"embed|(^|\.)(wte|wpe)(\.|$)"),
    ("head", r"lm_head|^output\.weight$"),
    ("q", r"(^|\.)(q_proj|query|wq|q)(\.|$)"),
    ("k", r"(^|\.)(k_proj|key|wk|k)(\.|$)"),
    ("v", r"(^|\.)(v_proj|value|wv|v)(\.|$)"),
    ("o", r"(^|\.)(o_proj|out_proj|wo|o)(\.|$)|attn\.c_proj|attention\.dense"),
    ("gate", r"(^|\.)(gate_proj|w1|gate)(\.|$)"),
    ("up", r"(^|\.)(up_proj|w3|c_fc|up)(\.|$)"),
    ("down", r"(^|\.)(down_proj|w2|down)(\.|$)|mlp\.c_proj"),
)
_MODULE_RES = tuple((m, re.compile(rx)) for m, rx in _MODULES)
MODULES = ("q", "k", "v", "o", "gate", "up", "down", "norms", "embeddings", "head")


def module_of(name: str) -> str | None:
    """Which of q, k, v, o, gate, up, down, norms, embeddings, head a tensor belongs to."""
    low = name.lower()
    for module, rx in _MODULE_RES:
        if rx.search(low):
            return module
    return None


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


@dataclass
class DiffResult:
    """What `diff` found: the tensors compared, and what reading them cost."""

    a: bytes
    b: bytes | None  # None when B is a folder
    b_path: str | None
    tensors: list[TensorDiff]
    bytes_read: int = 0  # stored bytes read from the store's packs
    blocks_read: int = 0
    folder_bytes_read: int = 0  # bytes of B's folder read to hash it
    stats_computed: int = 0
    stats_reused: int = 0
    norms_computed: int = 0
    norms_reused: int = 0
    stats_kept: int = 0
    seconds: float = 0.0
    changed_bytes: int = 0  # raw bytes of B's changed blocks

    def totals(self) -> dict[str, Any]:
        counts = {s: 0 for s in STATUSES}
        dd = aa = l1 = 0.0
        nnz = numel = 0
        mx = 0.0
        for t in self.tensors:
            counts[t.status] += 1
            measured = t.status in ("changed", "retyped") and t.delta_l2 is not None
            if t.status == "unchanged" or t.status == "changed" or measured:
                numel += t.numel
            if measured:
                dd += t.delta_l2**2
                aa += (t.l2_a or 0.0) ** 2
                l1 += t.delta_l1 or 0.0
                nnz += t.nnz or 0
                mx = max(mx, t.max_abs or 0.0)
        delta = math.sqrt(dd)
        return {
            "tensors": len(self.tensors),
            **counts,
            "blocks_total": sum(t.blocks_total for t in self.tensors),
            "blocks_changed": sum(t.blocks_changed for t in self.tensors),
            "delta_l2": delta,
            # over the changed tensors: ‖A‖ of unchanged ones is never read
            "rel_delta": delta / math.sqrt(aa) if aa > 0 else None,
            "delta_l1": l1,
            "max_abs": mx,
            "nnz": nnz,
            "numel": numel,
            "frac_changed": nnz / numel if numel else 0.0,
            "changed_bytes": self.changed_bytes,
        }

    def layers(self) -> list[dict[str, Any]]:
        """Per-layer summary: tensors grouped by the layer index in their names."""
        groups: dict[int | None, list[TensorDiff]] = {}
        for t in self.tensors:
            groups.setdefault(layer_of(t.name), []).append(t)
        out = []
        for layer in sorted(groups, key=lambda k: (k is None, k or 0)):
            ts = groups[layer]
            ch = [t for t in ts if t.status in ("changed", "retyped") and t.delta_l2 is not None]
            dd = sum(t.delta_l2**2 for t in ch)  # type: ignore[operator]
            aa = sum((t.l2_a or 0.0) ** 2 for t in ch)
            out.append(
                {
                    "layer": layer,
                    "tensors": len(ts),
                    "changed": sum(1 for t in ts if t.status != "unchanged"),
                    "blocks_total": sum(t.blocks_total for t in ts),
                    "blocks_changed": sum(t.blocks_changed for t in ts),
                    "delta_l2": math.sqrt(dd),
                    "rel_delta": math.sqrt(dd) / math.sqrt(aa) if aa > 0 else None,
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a.hex(),
            "b": self.b.hex() if self.b is not None else self.b_path,
            "bytes_read": self.bytes_read,
            "tensors": [t.to_json() for t in self.tensors],
            "totals": self.totals(),
            "layers": self.layers(),
            "blocks_read": self.blocks_read,
            "folder_bytes_read": self.folder_bytes_read,
            "stats_computed": self.stats_computed,
            "stats_reused": self.stats_reused,
            "norms_computed": self.norms_computed,
            "norms_reused": self.norms_reused,
            "stats_kept": self.stats_kept,
            "seconds": round(self.seconds, 4),
        }


# ----------------------------------------------------------------------------- the engine


def _commit_sides(
    repo: Repository, cid: bytes, tensors: Sequence[str] | None = None
) -> dict[str, TensorSide]:
    """A commit's tensors (those matching `tensors`, when given). A lazy or evicted merge
    computes only those tensors' blocks."""
    from mergestore.checkout import tensor_records
    from mergestore.store.merges import readable_tensors, readable_tree

    if tensors:
        recs = readable_tensors(repo, cid, tensors)
    else:
        recs = list(tensor_records(repo, readable_tree(repo, cid)))
    return {rec.name: _record_side(rec) for rec in recs}


def _record_side(rec: TensorRecord) -> TensorSide:
    return TensorSide(
        rec.dtype, rec.shape, rec.rows_per_block, rec.blocks, nbytes=rec.end - rec.begin
    )


@dataclass(frozen=True)
class _Job:
    """One block position of a changed (or unhashed) tensor."""

    tensor: int
    dtype: str
    a: bytes  # A's block id
    b: bytes | None  # B's block id; None when B is a folder block not hashed yet
    nbytes: int
    fd: int = -1
    offset: int = 0


@dataclass
class _Outcome:
    """One tensor's comparison, from a worker thread."""

    tensor: int
    changed: bool
    stats: DeltaStats
    computed: bool
    b: bytes | None
    nbytes: int


@dataclass
class _Engine:
    """The state one diff shares across its worker threads."""

    repo: Repository
    progress: Progress | None
    meter: ReadMeter = field(default_factory=ReadMeter)
    folder_bytes: int = 0
    cache: dict[bytes, bytes | memoryview] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def work(self, job: _Job) -> _Outcome:
        b, b_raw = job.b, None
        if b is None:  # a folder block: hash it first
            buf = bytearray(job.nbytes)
            b_raw = read_exact(job.fd, buf, job.nbytes, job.offset)
            if len(b_raw) != job.nbytes:
                raise FormatError("a checkpoint file changed while it was being compared")
            with self._lock:
                self.folder_bytes += job.nbytes
            b = block_id(b_raw)
        changed = b != job.a
        key_b = b if changed else job.a
        st = self.repo.get_stats(key_b, job.a, job.dtype)
        computed = st is None
        if st is None:
            if not changed:
                st = block_norm(b_raw if b_raw is not None else self._read(job.a), job.dtype)
            elif b_raw is not None:
                st = block_stats(b_raw, self._read(job.a), job.dtype)
            elif b in self.cache and job.a in self.cache:
                st = block_stats(self.cache[b], self.cache[job.a], job.dtype)
            else:
                st = block_stats(*read_pair(self.repo, b, job.a, self.meter), job.dtype)
        if self.progress:
            self.progress(job.nbytes)
        return _Outcome(job.tensor, changed, st, computed, b, job.nbytes)

    def _read(self, bid: bytes) -> bytes | memoryview:
        raw = self.cache.get(bid)
        return raw if raw is not None else self.repo.read_block(bid, self.meter)

    def run(self, jobs: Sequence[_Job], workers: int) -> Iterator[_Outcome]:
        """work() on every job, in order. The store blocks a batch of jobs needs (no kept
        statistics) are first read together through the store's block reader, in pack order
        and coalesced; then the statistics are computed from them on `workers` threads."""
        start = 0
        while start < len(jobs):
            end, size = start, 0
            while end < len(jobs) and size < READ_BATCH_BYTES:
                size += jobs[end].nbytes
                end += 1
            batch = jobs[start:end]
            self.cache = self._prefetch(batch, workers)
            yield from ordered_map(self.work, batch, workers=workers)
            self.cache = {}
            start = end

    def _prefetch(self, batch: Sequence[_Job], workers: int) -> dict[bytes, bytes | memoryview]:
        keys = [(j.b if j.b != j.a else j.a, j.a, j.dtype) for j in batch if j.b is not None]
        kept = self.repo.get_stats_many(keys)
        need: list[bytes] = []
        for j, key in zip((j for j in batch if j.b is not None), keys, strict=True):
            if key not in kept:
                need.append(j.a)
                if j.b != j.a:
                    assert j.b is not None
                    need.append(j.b)
        if not need:
            return {}
        raws = {}
        for bid, raw in self.repo.reader().read(need, self.meter, workers=workers):
            assert not isinstance(raw, Exception)
            raws[bid] = raw
        return raws


def _jobs_for(i: int, a: TensorSide, b: TensorSide) -> Iterator[_Job]:
    assert a.blocks is not None
    if b.blocks is not None:
        blocking = side_blocking(a)
        for k, (bb, ab) in enumerate(zip(b.blocks, a.blocks, strict=True)):
            lo, hi = blocking.byte_range(k)
            yield _Job(i, a.dtype, ab, bb, hi - lo)
    else:
        blocking = side_blocking(a)
        for k, ab in enumerate(a.blocks):
            lo, hi = blocking.byte_range(k)
            yield _Job(i, a.dtype, ab, None, hi - lo, b.fd, b.offset + lo)


def _matches(name: str, globs: Sequence[str] | None) -> bool:
    from mergestore.store.merges import matches

    return not globs or matches(name, globs)


def diff_sides(
    repo: Repository,
    a_id: bytes,
    sides_a: dict[str, TensorSide],
    sides_b: dict[str, TensorSide],
    *,
    b_id: bytes | None,
    b_path: str | None,
    tensors: Sequence[str] | None = None,
    keep: bool = True,
    progress: Progress | None = None,
    workers: int | None = None,
) -> DiffResult:
    t0 = time.perf_counter()
    names = sorted(
        (n for n in set(sides_a) | set(sides_b) if _matches(n, tensors)), key=_natural_key
    )
    if tensors and not names:  # as checkout --tensor: a glob that selects nothing is a typo
        raise MergestoreError(f"no tensor matches {' '.join(tensors)}")
    out: list[TensorDiff] = []
    accs: dict[int, _Acc] = {}
    jobs: list[_Job] = []
    retyped: list[tuple[int, TensorSide, TensorSide]] = []
    for name in names:
        a, b = sides_a.get(name), sides_b.get(name)
        side = b or a
        assert side is not None
        nb = len(side.blocks) if side.blocks is not None else side_blocking(side).num_blocks
        t = TensorDiff(name, "", side.dtype, side.shape, nb, 0, math.prod(side.shape))
        i = len(out)
        out.append(t)
        if a is None or b is None:
            t.status = "added" if a is None else "removed"
            t.blocks_changed = nb
        elif a.dtype != b.dtype or a.shape != b.shape:
            t.status = "retyped"
            t.blocks_changed = nb
            t.a_dtype, t.a_shape = a.dtype, a.shape
            if a.shape == b.shape and stats_dtype_ok(a.dtype) and stats_dtype_ok(b.dtype):
                retyped.append((i, a, b))  # values compared across dtypes (diff_retyped.py)
        elif b.blocks is not None and a.blocks == b.blocks:
            t.status = "unchanged"
        elif not stats_dtype_ok(a.dtype) or (
            b.blocks is not None and a.rows_per_block != b.rows_per_block
        ):
            # Not measurable block by block: say which blocks differ, leave the deltas unset.
            t.status = "changed"
            t.blocks_changed = nb
            if b.blocks is not None and a.blocks is not None and len(a.blocks) == len(b.blocks):
                t.blocks_changed = sum(x != y for x, y in zip(a.blocks, b.blocks, strict=True))
        else:
            t.status = "changed"  # provisional for folders: settled once hashed
            accs[i] = _Acc()
            jobs.extend(_jobs_for(i, a, b))
    eng = _Engine(repo, progress)
    computed: dict[tuple[bytes, bytes, str], DeltaStats] = {}
    result = DiffResult(a_id, b_id, b_path, out)
    if native.kernels is None:
        import torch  # noqa: F401  (the statistics' torch twin; one_torch_thread tunes a loaded torch)
    with one_torch_thread():
        for job, res in zip(jobs, eng.run(jobs, workers or default_workers()), strict=True):
            acc = accs[res.tensor]
            acc.add(res.stats, res.changed)
            if res.changed:
                result.changed_bytes += res.nbytes
            key_b = res.b if res.changed else job.a
            assert key_b is not None
            if res.computed:
                computed[(key_b, job.a, job.dtype)] = res.stats
                if res.changed:
                    result.stats_computed += 1
                else:
                    result.norms_computed += 1
            elif res.changed:
                result.stats_reused += 1
            else:
                result.norms_reused += 1
    if retyped:
        from mergestore.diff_retyped import retyped_stats

        for i, a, b in retyped:
            acc = _Acc()
            acc.add(retyped_stats(repo, a, b, eng.meter), True)
            _finish(out[i], acc)
    for i, acc in accs.items():
        t = out[i]
        t.blocks_changed = acc.blocks_changed
        if acc.blocks_changed == 0:
            t.status = "unchanged"
        else:
            _finish(t, acc)
    for t in out:
        if t.status == "unchanged":
            _set_unchanged(t)
    if keep and computed:
        result.stats_kept = keep_stats(repo, computed)
    result.bytes_read = eng.meter.bytes_read
    result.blocks_read = eng.meter.blocks_read
    result.folder_bytes_read = eng.folder_bytes
    result.seconds = time.perf_counter() - t0
    return result


def keep_stats(repo: Repository, entries: dict[tuple[bytes, bytes, str], DeltaStats]) -> int:
    """Publish computed statistics in one atomic write session; returns how many."""
    with repo.writer() as w:
        for (b, a, dtype), st in entries.items():
            w.put_stats(b, a, dtype, st)
        w.publish()
    return len(entries)


def _is_folder_arg(repo: Repository, text: str) -> bool:
    """Whether B names a folder on disk rather than a ref."""
    if not os.path.exists(text):
        return False
    if "/" in text or text.startswith("."):
        return True
    try:
        repo.resolve(text)
    except MergestoreError:
        return True
    return False


def diff(
    repo: Repository,
    a: str,
    b: str,
    *,
    tensors: Sequence[str] | None = None,
    keep: bool = True,
    progress: Progress | None = None,
    workers: int | None = None,
) -> DiffResult:
    """Diff commit A against commit B, or against an uncommitted checkpoint folder B.

    Statistics computed for two commits are kept (unless keep=False); a folder diff writes
    nothing to the store.
    """
    reuse_freed_memory()
    a_id = repo.resolve(a)
    sides_a = _commit_sides(repo, a_id, tensors)
    if _is_folder_arg(repo, b):
        return _diff_folder(repo, a_id, sides_a, b, tensors, progress, workers)
    try:
        b_id = repo.resolve(b)
    except RefError as e:
        raise RefError(f"{e} (and no folder {b!r})") from None
    return diff_sides(
        repo,
        a_id,
        sides_a,
        _commit_sides(repo, b_id, tensors),
        b_id=b_id,
        b_path=None,
        tensors=tensors,
        keep=keep,
        progress=progress,
        workers=workers,
    )


def _diff_folder(
    repo: Repository,
    a_id: bytes,
    sides_a: dict[str, TensorSide],
    path: str,
    tensors: Sequence[str] | None,
    progress: Progress | None,
    workers: int | None,
) -> DiffResult:
    ckpt = scan_checkpoint(path)
    fds: dict[Path, int] = {}
    try:
        sides_b: dict[str, TensorSide] = {}
        for name, (f, entry) in ckpt.tensor_index().items():
            if not _matches(name, tensors):
                continue
            assert f.header is not None
            fd = fds.get(f.abspath)
            if fd is None:
                fd = fds[f.abspath] = os.open(f.abspath, os.O_RDONLY)
            a = sides_a.get(name)
            rpb = (
                a.rows_per_block
                if a is not None and a.dtype == entry.dtype and a.shape == entry.shape
                else tensor_blocking(
                    entry.shape, DTYPE_SIZES[entry.dtype], repo.config.block_size
                ).rows_per_block
            )
            sides_b[name] = TensorSide(
                entry.dtype,
                entry.shape,
                rpb,
                None,
                fd=fd,
                offset=f.header.data_start + entry.begin,
                nbytes=entry.nbytes,
            )
        return diff_sides(
            repo,
            a_id,
            sides_a,
            sides_b,
            b_id=None,
            b_path=str(Path(path)),
            tensors=tensors,
            keep=False,  # a folder diff never writes into the store
            progress=progress,
            workers=workers,
        )
    finally:
        for fd in fds.values():
            os.close(fd)


@dataclass
class AnalyzeResult:
    """What `analyze` computed or reused for one expert against its base."""

    expert: bytes
    base: bytes
    pairs: int  # changed block pairs with statistics (computed now or kept before)
    stats_computed: int
    stats_reused: int
    norms_computed: int
    bytes_read: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "expert": self.expert.hex(),
            "base": self.base.hex(),
            "pairs": self.pairs,
            "stats_computed": self.stats_computed,
            "stats_reused": self.stats_reused,
            "norms_computed": self.norms_computed,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 4),
        }


def analyze(
    repo: Repository,
    expert: str,
    base: str | None = None,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> AnalyzeResult:
    """Compute and keep the statistics of every changed block of EXPERT against BASE.

    BASE defaults to the commit's recorded base (`commit --base`). This is the diff engine with
    its output dropped: the same pairs, the same keys, so a later diff or plan reads nothing.
    """
    e_id = repo.resolve(expert)
    if base is None:
        b_id = repo.get_commit(e_id).base
        if b_id is None:
            raise MergestoreError(f"{expert} records no base commit; pass --base")
    else:
        b_id = repo.resolve(base)
    res = diff(repo, b_id.hex(), e_id.hex(), keep=True, progress=progress, workers=workers)
    return AnalyzeResult(
        expert=e_id,
        base=b_id,
        pairs=res.stats_computed + res.stats_reused,
        stats_computed=res.stats_computed,
        stats_reused=res.stats_reused,
        norms_computed=res.norms_computed,
        bytes_read=res.bytes_read,
        seconds=res.seconds,
    )


def progress_total(repo: Repository, a: str, b: str) -> int:
    """Bytes a diff will go through (for a progress bar): B's tensor bytes. Computes nothing:
    a lazy merge not computed yet gives no total."""
    from mergestore.store.merges import known_tree

    if _is_folder_arg(repo, b):
        return sum(f.size for f in scan_checkpoint(b).tensor_files)
    try:
        trees = [known_tree(repo, repo.resolve(x)) for x in (a, b)]
    except MergestoreError:
        return 0
    if trees[0] is None or trees[1] is None:
        return 0
    from mergestore.checkout import tensor_records

    sides_a, sides_b = ({r.name: _record_side(r) for r in tensor_records(repo, t)} for t in trees)
    return sum(
        s.nbytes for n, s in sides_b.items() if n in sides_a and sides_a[n].blocks != s.blocks
    )


def demo_step(store: Any, fam: Any, report: dict[str, Any], say: Callable[[str], None]) -> None:
    """`mergestore demo`: a short diff of an expert against the base, run twice (reuse)."""
    expert = "frozen" if "frozen" in fam.experts else next(iter(fam.experts))
    res = store.diff("main", expert)
    again = store.diff("main", expert)
    tot = res.totals()
    say(
        f"{'diff main ' + expert:<20}{tot['changed']} changed / {tot['unchanged']} unchanged "
        f"tensors, {tot['blocks_changed']}/{tot['blocks_total']} blocks, rel change "
        f"{tot['rel_delta'] or 0:.3g}; read {res.bytes_read / 2**20:.2f} MiB "
        f"({res.stats_computed} statistics computed, {res.stats_reused} kept by commit --base)"
    )
    top = sorted((t for t in res.tensors if t.rel_delta), key=lambda t: -(t.rel_delta or 0.0))[:3]
    for t in top:
        say(
            f"    {t.name}  rel {t.rel_delta:.3g}  cos {t.cosine:.6f}  blocks {t.blocks_changed}/"
            f"{t.blocks_total}"
        )
    report["diff"] = {
        "expert": expert,
        "totals": tot,
        "bytes_read": res.bytes_read,
        "bytes_read_again": again.bytes_read,
    }
