"""The public Python API: one method per command (the CLI is a thin layer over this)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergestore.checkout import CheckoutResult, checkout_commit, tensor_records
from mergestore.errors import MergestoreError, RefError, StoreNotFoundError
from mergestore.formats.safetensors import torch_dtype
from mergestore.ingest import CommitResult, commit_checkpoint
from mergestore.store.objects import BlobFile, Commit, TensorFile, TensorRecord, Tree
from mergestore.store.packs import ReadMeter
from mergestore.store.refs import HEADS, TAGS, check_ref_name
from mergestore.store.repo import CONFIG_FILE, RefUpdate, Repository, StoreConfig

STORE_DIRNAME = ".mergestore"
Progress = Callable[[int], None]


def find_store(start: str | os.PathLike[str] | None = None) -> Path:
    """--store, then $MERGESTORE_DIR, then the nearest .mergestore upward from the cwd."""
    if start is not None:
        return Path(start)
    env = os.environ.get("MERGESTORE_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / STORE_DIRNAME / CONFIG_FILE).is_file():
            return d / STORE_DIRNAME
    raise StoreNotFoundError(
        "no store found (run `mergestore init`, or pass --store / set MERGESTORE_DIR)"
    )


@dataclass(frozen=True)
class LogEntry:
    id: bytes
    commit: Commit


@dataclass(frozen=True)
class FileInfo:
    path: str
    kind: str
    size: int
    tensors: int


class Store:
    """A mergestore store. Create with Store.init(path), open with Store.open(path)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    # ----- lifecycle -------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        block_size: int | None = None,
        zstd_level: int | None = None,
    ) -> Store:
        p = Path(path) if path is not None else Path.cwd() / STORE_DIRNAME
        cfg = StoreConfig()
        if block_size is not None:
            cfg = StoreConfig(block_size=block_size, zstd_level=cfg.zstd_level)
        if zstd_level is not None:
            cfg = StoreConfig(block_size=cfg.block_size, zstd_level=zstd_level)
        return cls(Repository.init(p, cfg))

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Store:
        return cls(Repository.open(find_store(path)))

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.repo.path

    # ----- commits ---------------------------------------------------------------------------

    def commit(
        self,
        path: str | os.PathLike[str],
        *,
        message: str = "",
        branch: str | None = None,
        base: str | None = None,
        meta: dict[str, str] | None = None,
        author: str | None = None,
        stats: bool = True,
        progress: Progress | None = None,
    ) -> CommitResult:
        """Store a checkpoint (HF directory or one .safetensors file) as a new commit."""
        base_id = self.resolve(base) if base else None
        return commit_checkpoint(
            self.repo,
            path,
            message=message,
            branch=branch,
            base=base_id,
            meta=meta,
            author=author,
            want_stats=stats,
            progress=progress,
        )

    def checkout(
        self,
        ref: str,
        out: str | os.PathLike[str],
        *,
        force: bool = False,
        tensors: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> CheckoutResult:
        return checkout_commit(
            self.repo, self.resolve(ref), out, force=force, tensors=tensors, progress=progress
        )

    def resolve(self, ref: str) -> bytes:
        return self.repo.resolve(ref)

    def get_commit(self, ref: str | bytes) -> Commit:
        cid = ref if isinstance(ref, bytes) else self.resolve(ref)
        return self.repo.get_commit(cid)

    def tree(self, ref: str | bytes) -> Tree:
        return self.repo.get_tree(self.get_commit(ref).tree)

    def log(self, ref: str | None = None, *, all_refs: bool = False) -> list[LogEntry]:
        """Commits reachable from `ref` (default HEAD) or from every ref, newest first."""
        if all_refs:
            starts = list(self.repo.list_refs("refs/").values())
        else:
            starts = [self.resolve(ref or "HEAD")]
        seen: dict[bytes, Commit] = {}
        stack = list(starts)
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            c = self.repo.get_commit(cid)
            seen[cid] = c
            stack.extend(c.parents)
        order = sorted(seen.items(), key=lambda kv: (-kv[1].time, kv[0]))
        return [LogEntry(cid, c) for cid, c in order]

    def files(self, ref: str | bytes) -> list[FileInfo]:
        out = []
        for e in self.tree(ref).entries:
            n = 0
            if e.kind == "tensorfile":
                tf = self.repo.get_file(e.object)
                assert isinstance(tf, TensorFile)
                n = len(tf.tensors)
            out.append(FileInfo(e.path, e.kind, e.size, n))
        return out

    def tensors(self, ref: str | bytes) -> list[TensorRecord]:
        return list(tensor_records(self.repo, self.tree(ref)))

    def tensor_record(self, ref: str | bytes, name: str) -> TensorRecord:
        for t in self.tensors(ref):
            if t.name == name:
                return t
        raise MergestoreError(f"no tensor {name!r} in {ref if isinstance(ref, str) else ref.hex()}")

    def read_tensor(
        self, ref: str | bytes, name: str, *, meter: ReadMeter | None = None
    ) -> torch.Tensor:
        """One tensor as a torch tensor, reading only its blocks."""
        rec = self.tensor_record(ref, name)
        return read_record(self.repo, rec, meter)

    def commit_sizes(self, ref: str | bytes) -> dict[str, int]:
        """Logical bytes, and the unique raw and stored bytes of the blocks a commit uses."""
        tree = self.tree(ref)
        blocks: set[bytes] = set()
        for e in tree.entries:
            obj = self.repo.get_file(e.object)
            if isinstance(obj, TensorFile):
                header = self.repo.get_file(obj.header)
                assert isinstance(header, BlobFile)
                blocks.update(header.blocks)
                for t in obj.tensors:
                    blocks.update(t.blocks)
            else:
                blocks.update(obj.blocks)
        raw = stored = 0
        for b in blocks:
            loc = self.repo.block_location(b)
            if loc is not None:
                raw += loc.raw_len
                stored += loc.length
        logical = sum(e.size for e in tree.entries)
        return {
            "logical_bytes": logical,
            "unique_bytes": raw,
            "stored_bytes": stored,
            "blocks": len(blocks),
        }

    # ----- refs ------------------------------------------------------------------------------

    def branches(self) -> dict[str, bytes]:
        return {k[len(HEADS) :]: v for k, v in self.repo.list_refs(HEADS).items()}

    def tags(self) -> dict[str, bytes]:
        return {k[len(TAGS) :]: v for k, v in self.repo.list_refs(TAGS).items()}

    def current_branch(self) -> str | None:
        t = self.repo.head_target()
        return t[len(HEADS) :] if t and t.startswith(HEADS) else None

    def create_branch(self, name: str, ref: str = "HEAD", *, force: bool = False) -> bytes:
        full = HEADS + check_ref_name(name)
        cid = self.resolve(ref)
        old = self.repo.read_ref(full)
        if old is not None and not force:
            raise RefError(f"branch {name!r} already exists")
        self.repo.update_refs([RefUpdate(full, cid, f"branch: created from {ref}", old=old)])
        return cid

    def delete_branch(self, name: str) -> bytes:
        full = HEADS + check_ref_name(name)
        old = self.repo.read_ref(full)
        if old is None:
            raise RefError(f"no branch {name!r}")
        self.repo.update_refs([RefUpdate(full, None, "branch: deleted", old=old)])
        return old

    def create_tag(self, name: str, ref: str = "HEAD", *, force: bool = False) -> bytes:
        full = TAGS + check_ref_name(name, "tag")
        cid = self.resolve(ref)
        old = self.repo.read_ref(full)
        if old is not None and not force:
            raise RefError(f"tag {name!r} already exists")
        self.repo.update_refs([RefUpdate(full, cid, f"tag: {ref}", old=old)])
        return cid

    def reflog(self, ref: str | None = None) -> list[tuple[str, Any]]:
        names = [self._full_ref_name(ref)] if ref else self.repo.reflog_names()
        return [(n, e) for n in names for e in self.repo.reflog(n)]

    def _full_ref_name(self, ref: str) -> str:
        if ref == "HEAD":
            return self.repo.head_target() or "HEAD"
        if ref.startswith("refs/"):
            return ref
        if self.repo.read_ref(TAGS + ref) is not None and self.repo.read_ref(HEADS + ref) is None:
            return TAGS + ref
        return HEADS + ref


def read_record(
    repo: Repository, rec: TensorRecord, meter: ReadMeter | None = None
) -> torch.Tensor:
    buf = bytearray(rec.nbytes)
    pos = 0
    for bid in rec.blocks:
        raw = repo.read_block(bid, meter)
        buf[pos : pos + len(raw)] = raw
        pos += len(raw)
    dt = torch_dtype(rec.dtype)
    if rec.nbytes == 0:
        return torch.empty(rec.shape, dtype=dt)
    return torch.frombuffer(buf, dtype=dt).reshape(rec.shape)


def iter_commit_blocks(repo: Repository, cid: bytes) -> Iterator[bytes]:
    tree = repo.get_tree(repo.get_commit(cid).tree)
    for e in tree.entries:
        obj = repo.get_file(e.object)
        if isinstance(obj, TensorFile):
            header = repo.get_file(obj.header)
            assert isinstance(header, BlobFile)
            yield from header.blocks
            for t in obj.tensors:
                yield from t.blocks
        else:
            yield from obj.blocks
