"""`merge --out DIR`: the merged HF folder, written in the same pass that commits the merge.

Before any tensor is computed, the output files are laid out exactly as the commit's tree will
lay them out (layout.plan_shards, from each output tensor's name, dtype and shape, which follow
from the plan and mergekit's dtype rules): every safetensors file is created at its final size
in a temporary sibling of DIR, with its header written. As the engine names each output block
(on the compute thread that merged its tensor), the sink writes the block's bytes, still in
memory, at its place in its file: no output block is read back, decoded or verified a second
time. After the commit is published:

- the layout is checked against the commit's tree (header bytes, sizes, tensor offsets); if a
  prediction was wrong (say a method whose result dtype is not the usual one), the folder is
  written by a checkout of the commit instead, and the result says so (`same_pass: false`);
- output blocks the merge never computed (a budgeted merge takes unchanged blocks from the
  base) are read from the store once, in pack order, and written;
- the other files (config, tokenizer, index json, mergekit_config.yml) are written by the
  checkout writer (checkout.write_tree_files), so the folder equals `checkout` byte for byte;
- the temporary folder is renamed to DIR (formats/outdir.py, shared with checkout). On any
  failure it is removed: DIR appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from mergestore import iotally
from mergestore.checkout import _pwrite_all, presize, write_tree_files
from mergestore.fast_dataclass import dataclass
from mergestore.formats import outdir
from mergestore.formats.checkpoint import safe_join
from mergestore.merge.engine import Engine, PreparedBlocks, Sink, TensorTask
from mergestore.merge.layout import TensorMeta, plan_shards, shard_header
from mergestore.merge.turn_writes import TurnWrites
from mergestore.store.blocks import TensorBlocking
from mergestore.store.codecs import Encoded
from mergestore.store.merges import readable_tree
from mergestore.store.objects import TensorFile, Tree
from mergestore.store.packs import ReadMeter
from mergestore.store.repo import Repository
from mergestore.threads import default_workers

_FLOATS = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
# Kernels whose result is fp32 for 16-bit inputs (docs/methods.md, "result dtype").
_F32_RESULT = frozenset({"ramplus_tl", "arcee_fusion"})


@dataclass
class _Place:
    """Where one output tensor's bytes go in its file."""

    fd: int
    start: int  # byte offset of the tensor's data in its file
    meta: TensorMeta
    written: set[int] = field(default_factory=set)  # tensor byte offsets of blocks written


@dataclass
class _File:
    """One output safetensors file being written."""

    path: str
    fd: int
    header: bytes
    size: int
    offsets: dict[str, int]  # tensor name -> data offset after the header


OUT_HINT = "use --overwrite to replace its checkpoint files, or name another folder"


def check_target(out: Path, overwrite: bool = False) -> None:
    """DIR must not exist, or be an empty directory, unless `overwrite` (merge --overwrite:
    checkout --force's rule, outdir.FORCE_RULE); checked before the merge runs."""
    outdir.check_target(out, overwrite, OUT_HINT)


def predict_outputs(engine: Engine, tasks: Sequence[TensorTask]) -> list[TensorMeta]:
    """Each output tensor's name, dtype and shape, as the engine will produce them (on either
    lane: the torch-free lane follows the same dtype rules, ops.lanes)."""
    return [_predict(engine, t) for t in tasks]


def _predict(engine: Engine, task: TensorTask) -> TensorMeta:
    recs = ([task.base] if task.base is not None else []) + list(task.inputs)
    first = recs[0]
    shape = tuple(first.shape)
    if engine.vocab is not None and shape and engine.vocab.applies(task.plan.name):
        shape = engine.vocab.out_shape(shape)  # the merged tokenizer's rows (merge/vocab.py)
    name = task.plan.name
    out = engine.out_dtype_name
    if task.plan.copy_from is not None:
        src = task.base if task.base is not None else task.inputs[0]
        float_src = src.dtype in _FLOATS
        return TensorMeta(name, out if out is not None and float_src else src.dtype, shape)
    dtypes = {r.dtype for r in recs}
    if not dtypes <= set(_FLOATS):
        return TensorMeta(name, first.dtype, shape)
    compute = engine.compute_dtype_name or _promote(dtypes)
    result = compute
    if engine.method in _F32_RESULT and _FLOATS.get(compute) == 2:
        result = "F32"
    return TensorMeta(name, out or result, shape)


def _promote(dtypes: set[str]) -> str:
    """torch.promote_types over float dtypes: bf16 + fp16 -> fp32, else the widest."""
    if len(dtypes) == 1:
        return next(iter(dtypes))
    widest = max(dtypes, key=lambda d: _FLOATS[d])
    return "F32" if _FLOATS[widest] == 2 else widest


class FolderOutput:
    """The folder merge --out writes (see the module docstring)."""

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.stage = outdir.StagedDir(self.out, force=overwrite, hint=OUT_HINT)
        self.tmp = self.stage.path
        self.files: list[_File] = []
        self.places: dict[str, _Place] = {}
        self.mismatch: str | None = None
        self.bytes_written = 0
        self._complete: dict[str, Any] | None = None  # complete()'s result
        self._lock = threading.Lock()
        self._writes = TurnWrites()  # the compute threads' block writes, one at a time

    # -- before the merge -------------------------------------------------------------------

    def prepare(
        self,
        repo: Repository,
        outputs: Sequence[TensorMeta],
        layout_commit: bytes,
        shard_bytes: int | None = None,
    ) -> None:
        """Create every safetensors file at its final size, its header written."""
        layout = plan_shards(repo, outputs, layout_commit, shard_bytes)
        for shard in layout.shards:
            header, entries = shard_header(repo, shard)
            target = safe_join(self.tmp, shard.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            data_start = 8 + len(header)
            size = data_start + (entries[-1].end if entries else 0)
            f = _File(shard.path, fd, header, size, {e.name: e.begin for e in entries})
            self.files.append(f)
            presize(fd, size)
            _pwrite_all(fd, struct.pack("<Q", len(header)) + header, 0)
            self.bytes_written += data_start
            for meta, e in zip(shard.tensors, entries, strict=True):
                self.places[meta.name] = _Place(fd, data_start + e.begin, meta)

    def sink(self, inner: Sink) -> FolderSink:
        return FolderSink(inner, self)

    def put(self, name: str, offset: int, raws: Sequence[memoryview], dtype: str) -> None:
        """Write output blocks (consecutive bytes of tensor `name` from `offset` on); any
        thread (each tensor's blocks are written by one)."""
        place = self.places.get(name)
        if place is None or place.meta.dtype != dtype:
            self.mismatch = self.mismatch or f"{name}: not laid out as {dtype}"
            return
        pos = offset
        writes = []
        for raw in raws:
            view = memoryview(raw).cast("B")
            writes.append((place.fd, view, place.start + pos))
            place.written.add(pos)
            pos += view.nbytes
        self._writes.write(writes)
        with self._lock:  # the engine's compute threads count their bytes side by side
            self.bytes_written += pos - offset
        iotally.add_written(pos - offset)

    # -- after the commit -------------------------------------------------------------------

    def finish(self, repo: Repository, commit: bytes) -> dict[str, Any]:
        """Complete the folder (unless complete() did) and move it into place."""
        info = self._complete if self._complete is not None else self.complete(repo, commit)
        self.stage.publish()
        return {
            **info,
            "kept": list(self.stage.kept),  # --overwrite: files of DIR that are not the model's
            "removed": list(self.stage.removed),  # --overwrite: stale checkpoint files
        }

    def complete(self, repo: Repository, commit: bytes) -> dict[str, Any]:
        """Write what the merge pass did not into the staged folder, from `commit` (published,
        or not yet: a merge completes its folder before it publishes, so an error writing it
        stores nothing, merge/session.py)."""
        self._writes.flush()  # blocks one compute thread left to another
        tree = readable_tree(repo, commit, ())  # a lazy merge's computed tree (store/merges.py)
        meter = ReadMeter()
        problem = self.mismatch or self._layout_problem(repo, tree)
        if problem is None:
            self._fill_untouched(repo, tree, meter)
            skip = frozenset(f.path for f in self.files)
            self._close()
            self.bytes_written += write_tree_files(repo, tree, self.tmp, skip=skip, meter=meter)
        else:
            from mergestore.checkout import checkout_commit

            self._close()
            shutil.rmtree(self.tmp)
            res = checkout_commit(repo, commit, self.tmp)
            self.bytes_written = res.bytes_written
            meter.add(res.bytes_read)
        self._complete = {
            "path": str(self.out.absolute()),
            "files": len(tree.entries),
            "bytes_written": self.bytes_written,
            "bytes_read": meter.bytes_read,
            "same_pass": problem is None,
            **({"fallback_reason": problem} if problem else {}),
        }
        return self._complete

    def abort(self) -> None:
        self._writes.drop()
        self._close()
        self.stage.abort()

    def _close(self) -> None:
        for f in self.files:
            if f.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(f.fd)
                f.fd = -1

    def _layout_problem(self, repo: Repository, tree: Tree) -> str | None:
        """Why the files laid out before the merge differ from the commit's, or None."""
        by_path = {f.path: f for f in self.files}
        tensor_files = [e for e in tree.entries if e.kind == "tensorfile"]
        if sorted(e.path for e in tensor_files) != sorted(by_path):
            return "the commit's safetensors files are not the ones laid out"
        for e in tensor_files:
            f = by_path[e.path]
            tf = repo.get_file(e.object)
            assert isinstance(tf, TensorFile)
            if tf.size != f.size or e.size != f.size:
                return f"{e.path}: size differs from the one laid out"
            header = repo.get_file(tf.header)
            if header.size != len(f.header):
                return f"{e.path}: header differs from the one laid out"
            offsets = {t.name: t.begin for t in tf.tensors}
            if offsets != f.offsets:
                return f"{e.path}: tensor offsets differ from the ones laid out"
            for t in tf.tensors:
                meta = self.places[t.name].meta
                if (t.dtype, tuple(t.shape)) != (meta.dtype, tuple(meta.shape)):
                    return f"{t.name}: dtype or shape differs from the one laid out"
        return None

    def _fill_untouched(self, repo: Repository, tree: Tree, meter: ReadMeter) -> None:
        """Blocks of the commit that the merge did not compute (taken from the base)."""
        want: dict[bytes, list[tuple[int, int]]] = {}
        for e in tree.entries:
            if e.kind != "tensorfile":
                continue
            tf = repo.get_file(e.object)
            assert isinstance(tf, TensorFile)
            for t in tf.tensors:
                place = self.places[t.name]
                if not t.blocks:
                    continue
                rows = t.shape[0] if t.shape else 1
                row_bytes = t.nbytes // rows if rows else 0
                blocking = TensorBlocking(rows, row_bytes, t.rows_per_block)
                for i, bid in enumerate(t.blocks):
                    lo, _hi = blocking.byte_range(i)
                    if lo not in place.written:
                        want.setdefault(bid, []).append((place.fd, place.start + lo))
        if not want:
            return
        for bid, raw in repo.reader().read(list(want), meter, workers=default_workers()):
            if isinstance(raw, Exception):
                raise raw
            for fd, pos in want[bid]:
                _pwrite_all(fd, raw, pos)
                self.bytes_written += len(raw)


class FolderSink:
    """A sink that writes each output block into the folder too (merge --out): on the thread
    that prepares the blocks, since every block has its own place in its file."""

    def __init__(self, inner: Sink, folder: FolderOutput) -> None:
        self.inner = inner
        self.folder = folder

    def prepare_blocks(
        self,
        raws: Sequence[memoryview],
        dtype: str,
        refs: Sequence[bytes | None],
        ref_raw: Mapping[bytes, memoryview] | None = None,
        workers: int = 1,
        tensor: tuple[str, int] | None = None,
    ) -> PreparedBlocks:
        if tensor is None:
            self.folder.mismatch = self.folder.mismatch or "an output block without its tensor"
            return self.inner.prepare_blocks(raws, dtype, refs, ref_raw, workers, tensor)
        if workers > 1:  # a task merged alone: its blocks are prepared on several threads
            prepared = self.inner.prepare_blocks(raws, dtype, refs, ref_raw, workers, tensor)
            self.folder.put(tensor[0], tensor[1], raws, dtype)
            return prepared
        # One block at a time, each written to the folder right after it is hashed and
        # encoded, while it is still in the CPU's caches: a tensor's blocks written after all
        # of them were encoded are read from memory a second time, and the two cores share
        # one memory's bandwidth (docs/benchmarks.md, issue 14 session 8).
        name, pos = tensor
        ids: list[bytes] = []
        lens: list[int] = []
        encoded: list[Encoded | None] = []
        checks: list[int | None] = []
        for raw, ref in zip(raws, refs, strict=True):
            one = self.inner.prepare_blocks([raw], dtype, [ref], ref_raw, 1, (name, pos))
            self.folder.put(name, pos, [raw], dtype)
            ids += one.ids
            lens += one.raw_lens
            encoded += one.encoded
            checks += one.checks
            pos += len(raw)
        return PreparedBlocks(ids, lens, encoded, checks)

    def commit_blocks(self, prepared: PreparedBlocks) -> list[bytes]:
        return self.inner.commit_blocks(prepared)
