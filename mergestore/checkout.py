"""`checkout`: write a commit's files back, byte for byte, verifying every block as it is read.

Each output file is laid out first (every block's offset follows from the stored raw lengths),
created at its final size under a temporary name, and then filled: the store's block reader
(store/reader.py) reads the blocks of about 64 MiB of output at a time in pack order, coalesced
into large reads, decodes and checks each blake3 id on the worker threads, and each block is
written at its offsets with pwrite. A file is renamed into place once all of its blocks are
written. The whole folder is written into a temporary sibling of the target and takes its
place at the end (formats/outdir.py): on any error, Ctrl-C included, the target is as it was
and the sibling goes. `force` over a non-empty folder follows outdir.FORCE_RULE.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field
from pathlib import Path

from mergestore.errors import CheckoutError, CorruptionError
from mergestore.fast_dataclass import dataclass
from mergestore.formats.checkpoint import safe_join
from mergestore.formats.outdir import StagedDir, check_target
from mergestore.formats.safetensors import encode_header
from mergestore.store import merges
from mergestore.store.index import BlockLocation
from mergestore.store.objects import BlobFile, TensorFile, TensorRecord, Tree
from mergestore.store.packs import ReadMeter
from mergestore.store.parallel import reuse_freed_memory
from mergestore.store.repo import Repository
from mergestore.threads import default_workers, ordered_map

Progress = Callable[[int], None]

# Blocks of about this many output bytes are handed to the block reader at once.
BATCH_BYTES = 64 << 20


@dataclass
class CheckoutResult:
    """What a checkout wrote."""

    commit: bytes
    out: Path
    files: int
    bytes_written: int
    bytes_read: int
    seconds: float
    kept: list[str] = field(default_factory=list)  # --force: files of the target kept
    removed: list[str] = field(default_factory=list)  # --force: stale weight files removed


def _plan_paths(tree: Tree, out: Path) -> list[Path]:
    """Every target path, validated before anything is written."""
    paths = []
    root = out.resolve()
    for entry in tree.entries:
        target = safe_join(root, entry.path)
        paths.append(target)
    return paths


def _ensure_inside(root: Path, target: Path) -> None:
    """Refuse to write through a symlink that leads outside the target (e.g. with --force)."""
    parent = target.parent.resolve()
    if parent != root and root not in parent.parents:
        raise CheckoutError(f"{target}: would be written outside {root}")
    if target.is_symlink():
        target.unlink()


def iter_file_bytes(
    repo: Repository,
    obj: BlobFile | TensorFile,
    meter: ReadMeter | None = None,
    workers: int | None = None,
) -> Iterator[bytes]:
    """The bytes of one stored file, in order, a block at a time (for callers that stream)."""
    prefix, ids = _file_parts(repo, obj)
    if prefix:
        yield prefix
    yield from ordered_map(
        lambda bid: repo.read_block(bid, meter), ids, workers=workers or default_workers()
    )


def _file_parts(repo: Repository, obj: BlobFile | TensorFile) -> tuple[bytes, list[bytes]]:
    """A stored file as literal leading bytes and the block ids that follow them in order."""
    if isinstance(obj, BlobFile):
        return b"", list(obj.blocks)
    header = repo.get_file(obj.header)
    if not isinstance(header, BlobFile):
        raise CorruptionError(f"tensorfile header {obj.header.hex()[:12]} is not a blob")
    return struct.pack("<Q", header.size), [
        *header.blocks,
        *(b for t in obj.tensors for b in t.blocks),
    ]


@dataclass
class _OutFile:
    """One output file being filled: written as `tmp`, renamed to `target` when complete."""

    target: Path
    tmp: Path
    fd: int
    pending: int = 0
    closed: bool = False

    def finish(self) -> None:
        os.close(self.fd)
        self.closed = True
        os.replace(self.tmp, self.target)


@dataclass
class _Writer:
    """Fills output files from the store with the workers' pwrites (see the module docstring)."""

    repo: Repository
    meter: ReadMeter
    progress: Progress | None
    files: list[_OutFile] = field(default_factory=list)
    written: int = 0

    def open(self, target: Path, size: int, prefix: bytes) -> _OutFile:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".mergestore-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        of = _OutFile(target, tmp, fd)
        self.files.append(of)
        presize(fd, size)  # every block lands inside the file: no appends, no races
        if prefix:
            _pwrite_all(fd, prefix, 0)
            self._count(len(prefix))
        return of

    def _count(self, n: int) -> None:
        self.written += n
        if self.progress:
            self.progress(n)

    def tasks(
        self, of: _OutFile, start: int, ids: Sequence[bytes], size: int, what: str
    ) -> Iterator[tuple[_OutFile, int, bytes, BlockLocation]]:
        """(file, offset, block id, location) for each block; checks the blocks fill `size`."""
        locs = self.repo.block_locations(ids)
        offsets = []
        pos = start
        for bid in ids:
            loc = locs.get(bid)
            if loc is None:
                raise CorruptionError(f"block {bid.hex()[:12]} is missing from the store")
            offsets.append(pos)
            pos += loc.raw_len
        if pos != size:
            raise CorruptionError(f"{what}: its blocks add up to {pos} bytes, not {size}")
        of.pending = len(ids)
        if not ids:
            of.finish()
            return
        for i, bid in enumerate(ids):
            yield of, offsets[i], bid, locs[bid]

    def run(self, tasks: Iterator[tuple[_OutFile, int, bytes, BlockLocation]]) -> None:
        """Read the tasks' blocks through the block reader (pack order within each batch of
        about 64 MiB, the next batch announced to the kernel ahead); each block is written at
        its offsets on the reader's worker threads."""
        places: dict[bytes, list[tuple[_OutFile, int]]] = {}  # positions not yet written
        written: dict[bytes, list[tuple[_OutFile, int]]] = {}
        locs: dict[bytes, BlockLocation] = {}

        def ids() -> Iterator[bytes]:
            # Files are opened as the reader pulls their blocks. The reader pulls a whole batch
            # while no block is being written, so `places` never changes under `write`.
            for of, offset, bid, loc in tasks:
                new = bid not in places
                places.setdefault(bid, []).append((of, offset))
                locs[bid] = loc
                if new:  # else: written with the earlier position (or read again later)
                    yield bid

        def write(bid: bytes, raw: bytes | memoryview) -> None:  # on the reader's workers
            done = places.pop(bid)
            for of, offset in done:
                _pwrite_all(of.fd, raw, offset)
            written[bid] = done

        reader = self.repo.reader(batch_bytes=BATCH_BYTES)
        for bid, raw in reader.read(
            ids(), self.meter, locations=locs, view=True, workers=default_workers(), then=write
        ):
            assert not isinstance(raw, CorruptionError)
            for of, _offset in written.pop(bid):
                self._count(len(raw))
                of.pending -= 1
                if of.pending == 0:
                    of.finish()
        if places:
            raise CorruptionError(f"{len(places)} blocks were never written")  # a bug, loudly

    def cleanup(self) -> None:
        """After a failure: close and remove every temporary file not yet renamed."""
        for of in self.files:
            if not of.closed:
                os.close(of.fd)
                of.closed = True
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(of.tmp)


def presize(fd: int, size: int) -> None:
    """Give a new, empty output file its final size, its blocks allocated up front.

    The file's bytes are what ftruncate alone gives (zeros until written), but ext4 (and xfs,
    btrfs, tmpfs) then need no delayed allocation per page of every later pwrite: writing a
    388 MiB folder took 0.06-0.07 sys-s into an allocated file against 0.12-0.85 into a sparse
    one (docs/benchmarks.md, "s6-pipeline"). Where the filesystem cannot allocate, the file
    stays sparse.
    """
    os.ftruncate(fd, size)
    if size and hasattr(os, "posix_fallocate"):
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError("short write")
        view, offset = view[n:], offset + n


def checkout_commit(
    repo: Repository,
    commit_id: bytes,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    tensors: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> CheckoutResult:
    t0 = time.perf_counter()
    reuse_freed_memory()
    out_path = Path(out)
    check_target(out_path, force)
    if tensors:  # a lazy or evicted merge computes only the matching tensors
        chosen = merges.readable_tensors(repo, commit_id, tensors)
    else:
        tree = merges.readable_tree(repo, commit_id)  # computes a lazy/evicted merge's blocks
    meter = ReadMeter()
    writer = _Writer(repo, meter, progress)
    stage = StagedDir(out_path, force=force)
    try:
        try:
            if tensors:
                writer.run(_tensor_tasks(writer, chosen, stage.path, tensors))
                nfiles = 1
            else:
                writer.run(_tree_tasks(writer, repo, tree, stage.path))
                nfiles = len(tree.entries)
        finally:
            writer.cleanup()
    except BaseException:
        stage.abort()
        raise
    stage.publish()
    return CheckoutResult(
        commit_id,
        out_path,
        nfiles,
        writer.written,
        meter.bytes_read,
        time.perf_counter() - t0,
        stage.kept,
        stage.removed,
    )


def write_tree_files(
    repo: Repository, tree: Tree, out: Path, *, skip: frozenset[str], meter: ReadMeter
) -> int:
    """Write the tree's files but those in `skip` into `out` as checkout does (merge --out:
    the tensor files it has written itself); returns the bytes written."""
    writer = _Writer(repo, meter, None)
    try:
        writer.run(_tree_tasks(writer, repo, tree, out, skip))
    finally:
        writer.cleanup()
    return writer.written


def _tree_tasks(
    writer: _Writer, repo: Repository, tree: Tree, out: Path, skip: frozenset[str] = frozenset()
) -> Iterator[tuple[_OutFile, int, bytes, BlockLocation]]:
    targets = _plan_paths(tree, out)
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    for entry, target in zip(tree.entries, targets, strict=True):
        if entry.path in skip:
            continue
        _ensure_inside(root, target)
        obj = repo.get_file(entry.object)
        prefix, ids = _file_parts(repo, obj)
        of = writer.open(target, obj.size, prefix)
        yield from writer.tasks(of, len(prefix), ids, obj.size, entry.path)


def tensor_records(repo: Repository, tree: Tree) -> Iterator[TensorRecord]:
    for entry in tree.entries:
        if entry.kind == "tensorfile":
            tf = repo.get_file(entry.object)
            assert isinstance(tf, TensorFile)
            yield from tf.tensors


def _tensor_tasks(
    writer: _Writer, chosen: list[TensorRecord], out: Path, globs: Sequence[str]
) -> Iterator[tuple[_OutFile, int, bytes, BlockLocation]]:
    """The chosen tensors (matching a glob), as one safetensors file, out/model.safetensors."""
    chosen = list(chosen)
    if not chosen:
        raise CheckoutError(f"no tensor matches {' '.join(globs)}")
    chosen.sort(key=lambda t: t.name)
    header, _layout = encode_header([(t.name, t.dtype, t.shape) for t in chosen], {"format": "pt"})
    prefix = struct.pack("<Q", len(header)) + header
    size = len(prefix) + sum(t.end - t.begin for t in chosen)
    out.mkdir(parents=True, exist_ok=True)
    of = writer.open(out / "model.safetensors", size, prefix)
    ids = [b for t in chosen for b in t.blocks]
    yield from writer.tasks(of, len(prefix), ids, size, "model.safetensors")
