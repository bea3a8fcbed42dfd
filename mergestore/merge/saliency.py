"""Saliency for the budget planner: which blocks matter for the merged model's loss.

A saliency holds, for tensors named as the model's, either gradients of a loss (`gradient`) or a
Fisher diagonal (`fisher`); a safetensors file says which in its metadata (`saliency`). It comes
from a file, a commit in the store, or (Python API) a dict of tensors.

The planner scores each candidate (expert k, block b) from the delta statistics the store keeps
(||Δ_k,b||₂, exact fp64) and one pass over the saliency's blocks, never from the expert block
itself (which the plan may then drop):

- gradient: score = |w|·||g_b||·||Δ_k,b||, the Cauchy-Schwarz bound on the first-order
  predicted loss change |w·<g_b, Δ_k,b>| of taking that block;
- fisher: score = mean(F_b)·(w·||Δ_k,b||)², an estimate of Σ F·(w·Δ)² that is exact when F is
  constant over the block and always lies within [min F_b, max F_b]·(w·||Δ||)². Under the Fisher
  as a curvature model, leaving the block out changes the loss by about half of it.

Only per-block summaries of the saliency are kept in memory (one tensor at a time is read). The
bytes read are the planning bytes, reported apart from the merge's reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

import blake3

from mergestore.errors import BudgetError
from mergestore.fast_dataclass import dataclass
from mergestore.store.packs import ReadMeter
from mergestore.store.repo import Repository

KINDS = ("gradient", "fisher")
META_KEY = "saliency"
LOSS_CHANGE = {
    "gradient": "|first-order loss change| <= score",
    "fisher": "loss change of leaving the block out ~ score / 2",
}


@dataclass(frozen=True)
class BlockSaliency:
    """One block's summary: gradient norm, or mean/min/max of the Fisher diagonal."""

    norm: float = 0.0
    mean: float = 0.0
    low: float = 0.0
    high: float = 0.0


@dataclass
class Saliency:
    """Per-tensor saliency scores that rank the blocks a budget keeps."""

    kind: str
    id: str
    source: str  # "file", "commit" or "tensors" (no path: plan ids do not depend on where)
    tensors: Any  # name -> (shape, loader: () -> (tensor, bytes read) | RowSummary | error)
    bytes_read: int = 0
    _blocks: dict[tuple[str, int], list[BlockSaliency]] = field(default_factory=dict)

    def to_plan(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "source": self.source}

    def blocks(self, name: str, shape: tuple[int, ...], rows_per_block: int) -> list[BlockSaliency]:
        """Per-block summaries of tensor `name`, cut as the model's tensor is (rows along dim 0)."""
        key = (name, rows_per_block)
        if key not in self._blocks:
            self._blocks[key] = self._summarize(name, shape, rows_per_block)
        return self._blocks[key]

    def _summarize(
        self, name: str, shape: tuple[int, ...], rows_per_block: int
    ) -> list[BlockSaliency]:
        if name not in self.tensors:
            raise BudgetError(f"the saliency has no tensor {name!r} (it must name the model's)")
        want, load = self.tensors[name]
        if tuple(want) != tuple(shape):
            raise BudgetError(
                f"saliency tensor {name!r} has shape {list(want)}, the model's is {list(shape)}"
            )
        rows = load()
        if isinstance(rows, str):  # found wrong when the file was read
            raise BudgetError(rows)
        if not isinstance(rows, RowSummary):
            t, nbytes = rows
            self.bytes_read += nbytes
            rows = row_summary(self.kind, name, t)
            if isinstance(rows, str):
                raise BudgetError(rows)
        return rows.blocks(self.kind, rows_per_block)

    def score(self, blk: BlockSaliency, contrib: float) -> float:
        """The candidate's score from its block summary and |w|·||Δ|| (see the module doc)."""
        if self.kind == "gradient":
            return blk.norm * contrib
        return blk.mean * contrib * contrib

    def interval(self, blk: BlockSaliency, contrib: float) -> tuple[float, float]:
        """Where the exact quantity lies: [-bound, bound] of w<g,Δ>, or [min, max] of ΣF(wΔ)²."""
        if self.kind == "gradient":
            b = blk.norm * contrib
            return -b, b
        return blk.low * contrib * contrib, blk.high * contrib * contrib


@dataclass(frozen=True)
class RowSummary:
    """Per row (dim 0) of a saliency tensor: Σg² (gradient), or Σ, min and max (Fisher).

    Any block of rows is summarized from it, so a tensor is read once whatever the model's
    blocking; it holds a few numbers per row, not the tensor."""

    cols: int
    sumsq: Any = None
    total: Any = None
    low: Any = None
    high: Any = None

    def blocks(self, kind: str, rows_per_block: int) -> list[BlockSaliency]:
        n = len(self.sumsq if kind == "gradient" else self.total)
        out = []
        for r0 in range(0, n, rows_per_block):
            r1 = min(n, r0 + rows_per_block)
            if kind == "gradient":
                out.append(BlockSaliency(norm=float(self.sumsq[r0:r1].sum()) ** 0.5))
            else:
                out.append(
                    BlockSaliency(
                        mean=float(self.total[r0:r1].sum()) / ((r1 - r0) * self.cols),
                        low=float(self.low[r0:r1].min()),
                        high=float(self.high[r0:r1].max()),
                    )
                )
        return out


def row_summary(kind: str, name: str, t: Any) -> RowSummary | str:
    """The tensor's row summary, or why it cannot be a saliency (one line)."""
    import torch

    if not t.is_floating_point():
        return f"saliency tensor {name!r} is not a float tensor ({t.dtype})"
    rows = t.double().reshape(t.shape[0] if t.dim() else 1, -1)
    if not bool(torch.isfinite(rows).all()):
        return f"saliency tensor {name!r} holds NaN or infinite values"
    if kind == "fisher" and bool((rows < 0).any()):
        return f"saliency tensor {name!r}: a Fisher diagonal is never negative"
    cols = rows.shape[1]
    if kind == "gradient":
        return RowSummary(cols, sumsq=rows.square().sum(dim=1))
    if cols == 0:
        return RowSummary(0, total=rows.sum(dim=1), low=rows.sum(dim=1), high=rows.sum(dim=1))
    return RowSummary(cols, total=rows.sum(dim=1), low=rows.amin(dim=1), high=rows.amax(dim=1))


def open_saliency(
    repo: Repository, source: Any, kind: str | None = None, meter: ReadMeter | None = None
) -> Saliency:
    """A saliency from a safetensors path, a commit ref of the store, or a dict of tensors."""
    if kind is not None and kind not in KINDS:
        raise BudgetError(f"unknown saliency kind {kind!r} (gradient or fisher)")
    if isinstance(source, Mapping):
        if kind is None:
            raise BudgetError("a saliency given as tensors needs its kind: gradient or fisher")
        return _from_tensors(dict(source), kind)
    text = os.fspath(source)
    path = Path(text)
    if path.is_file():
        return _from_file(path, kind)
    try:
        cid = repo.resolve(text)
    except Exception:
        raise BudgetError(
            f"--saliency {text}: neither a safetensors file nor a commit of this store"
        ) from None
    return _from_commit(repo, cid, kind, meter or ReadMeter())


def _check_kind(meta_kind: str | None, kind: str | None, where: str) -> str:
    if meta_kind is None and kind is None:
        raise BudgetError(
            f"{where}: its metadata does not say `saliency: gradient` or `saliency: fisher`"
        )
    if meta_kind is not None and meta_kind not in KINDS:
        raise BudgetError(f"{where}: unknown saliency kind {meta_kind!r} (gradient or fisher)")
    if meta_kind is not None and kind is not None and meta_kind != kind:
        raise BudgetError(f"{where} holds a {meta_kind} saliency, not {kind}")
    return meta_kind or kind  # type: ignore[return-value]


def content_id(kind: str, items: Iterator[tuple[str, Any]]) -> str:
    """blake3 of the kind and every (name, dtype, shape, bytes), in name order."""
    h = blake3.blake3(f"mergestore-saliency-1\0{kind}\0".encode())
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype)}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(-1).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _from_tensors(tensors: dict[str, Any], kind: str) -> Saliency:
    import torch

    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise BudgetError(f"saliency {name!r} is not a torch tensor")
    ids = content_id(kind, ((n, _bits(tensors[n])) for n in sorted(tensors)))
    entries = {
        n: (tuple(t.shape), (lambda t=t: (t, t.numel() * t.element_size())))
        for n, t in tensors.items()
    }
    return Saliency(kind, ids, "tensors", entries)


def _bits(t: Any) -> Any:
    """A tensor whose raw bytes numpy can take (bf16 has no numpy dtype: reinterpret)."""
    import torch

    if t.dtype in (torch.bfloat16, torch.float16):
        return t.contiguous().view(torch.int16)
    return t


def _from_file(path: Path, kind: str | None) -> Saliency:
    from safetensors import SafetensorError, safe_open

    try:
        f = safe_open(str(path), framework="pt")
        meta = f.metadata() or {}
        names = sorted(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise BudgetError(f"{path}: not a readable safetensors file ({e})") from None
    kind = _check_kind(meta.get(META_KEY), kind, str(path))
    # One pass reads every tensor once: it hashes it (the id is of the content, as for tensors
    # given in Python) and keeps its row summary, from which the planner cuts any blocking.
    rows: dict[str, RowSummary | str] = {}

    def read_all() -> Iterator[tuple[str, Any]]:
        for n in names:
            t = f.get_tensor(n)
            rows[n] = row_summary(kind, n, t)
            yield n, _bits(t)

    sid = content_id(kind, read_all())
    entries = {n: (tuple(f.get_slice(n).get_shape()), (lambda n=n: rows[n])) for n in names}
    s = Saliency(kind, sid, "file", entries)
    s.bytes_read = path.stat().st_size  # the whole file, read once
    return s


def _from_commit(repo: Repository, cid: bytes, kind: str | None, meter: ReadMeter) -> Saliency:
    from mergestore.checkout import tensor_records
    from mergestore.merge.layout import _header_metadata
    from mergestore.store.objects import TensorFile

    commit = repo.get_commit(cid)
    tree = repo.get_tree(commit.tree)
    meta_kinds = set()
    for e in tree.entries:
        if e.kind == "tensorfile":
            tf = repo.get_file(e.object)
            if isinstance(tf, TensorFile):
                meta = _header_metadata(repo, tf.header) or {}
                meta_kinds.add(meta.get(META_KEY))
    where = f"commit {cid.hex()[:12]}"
    if len(meta_kinds) > 1:
        raise BudgetError(f"{where}: its files disagree on the saliency kind")
    kind = _check_kind(next(iter(meta_kinds), None), kind, where)
    recs = {r.name: r for r in tensor_records(repo, tree)}
    entries = {n: (r.shape, _record_loader(repo, r, meter)) for n, r in recs.items()}
    # A commit is content-addressed: its id names the saliency exactly.
    return Saliency(kind, cid.hex(), "commit", entries)


def _record_loader(repo: Repository, rec: Any, meter: ReadMeter):
    def load():
        from mergestore.records import read_record

        before = meter.bytes_read
        return read_record(repo, rec, meter), meter.bytes_read - before

    return load


def block_scores(plan: dict[str, Any], tensor: str, model: int, read: list[int]) -> dict:
    """blame's view of one input: each candidate block's score and predicted loss change."""
    sal = (plan.get("budget") or {}).get("saliency")
    if not sal:
        return {}
    half = 0.5 if sal["kind"] == "fisher" else 1.0
    got = set(read)
    rows = sal["scores"].get(tensor, {}).get(str(model), [])
    return {
        "scores": [
            {"block": int(b), "score": v, "loss_change": half * v, "read": int(b) in got}
            for b, v in rows
        ]
    }
