"""`checkout`: write a commit's files back, byte for byte, verifying every block as it is read."""

from __future__ import annotations

import fnmatch
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergestore.errors import CheckoutError
from mergestore.formats.checkpoint import safe_join
from mergestore.formats.safetensors import encode_header
from mergestore.store.objects import BlobFile, TensorFile, TensorRecord, Tree
from mergestore.store.packs import ReadMeter
from mergestore.store.parallel import default_workers, ordered_map
from mergestore.store.repo import Repository

Progress = Callable[[int], None]


@dataclass
class CheckoutResult:
    commit: bytes
    out: Path
    files: int
    bytes_written: int
    bytes_read: int
    seconds: float


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CheckoutError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CheckoutError(f"{out}: directory is not empty (use --force to overwrite)")


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
    """The bytes of one stored file, in order, a block at a time."""
    if isinstance(obj, BlobFile):
        yield from _read_blocks(repo, obj.blocks, meter, workers)
        return
    header = repo.get_file(obj.header)
    assert isinstance(header, BlobFile)
    yield struct.pack("<Q", header.size)
    yield from _read_blocks(repo, header.blocks, meter, workers)
    ids = [b for t in obj.tensors for b in t.blocks]
    yield from _read_blocks(repo, ids, meter, workers)


def _read_blocks(
    repo: Repository, ids: Sequence[bytes], meter: ReadMeter | None, workers: int | None
) -> Iterator[bytes]:
    yield from ordered_map(
        lambda bid: repo.read_block(bid, meter), ids, workers=workers or default_workers()
    )


def _write_file(path: Path, chunks: Iterator[bytes], progress: Progress | None) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".mergestore-tmp")
    n = 0
    try:
        with open(tmp, "wb", buffering=0) as f:
            for chunk in chunks:
                f.write(chunk)
                n += len(chunk)
                if progress:
                    progress(len(chunk))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


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
    out_path = Path(out)
    tree = repo.get_tree(repo.get_commit(commit_id).tree)
    _check_target(out_path, force)
    meter = ReadMeter()
    if tensors:
        written, nfiles = _checkout_tensors(repo, tree, out_path, tensors, meter, progress)
    else:
        targets = _plan_paths(tree, out_path)
        out_path.mkdir(parents=True, exist_ok=True)
        root = out_path.resolve()
        written = 0
        for entry, target in zip(tree.entries, targets, strict=True):
            _ensure_inside(root, target)
            obj = repo.get_file(entry.object)
            written += _write_file(target, iter_file_bytes(repo, obj, meter), progress)
        nfiles = len(tree.entries)
    return CheckoutResult(
        commit_id, out_path, nfiles, written, meter.bytes_read, time.perf_counter() - t0
    )


def tensor_records(repo: Repository, tree: Tree) -> Iterator[TensorRecord]:
    for entry in tree.entries:
        if entry.kind == "tensorfile":
            tf = repo.get_file(entry.object)
            assert isinstance(tf, TensorFile)
            yield from tf.tensors


def _checkout_tensors(
    repo: Repository,
    tree: Tree,
    out: Path,
    globs: Sequence[str],
    meter: ReadMeter,
    progress: Progress | None,
) -> tuple[int, int]:
    """Write the tensors matching any glob into one safetensors file, out/model.safetensors."""
    chosen = [
        t for t in tensor_records(repo, tree) if any(fnmatch.fnmatchcase(t.name, g) for g in globs)
    ]
    if not chosen:
        raise CheckoutError(f"no tensor matches {' '.join(globs)}")
    chosen.sort(key=lambda t: t.name)
    header, _layout = encode_header([(t.name, t.dtype, t.shape) for t in chosen], {"format": "pt"})

    def chunks() -> Iterator[bytes]:
        yield struct.pack("<Q", len(header))
        yield header
        yield from _read_blocks(repo, [b for t in chosen for b in t.blocks], meter, None)

    out.mkdir(parents=True, exist_ok=True)
    return _write_file(out / "model.safetensors", chunks(), progress), 1
