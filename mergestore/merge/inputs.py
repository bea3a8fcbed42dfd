"""Resolve a merge's models to commits; merge/preflight.py checks their tensors against the plan."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from mergestore.errors import AmbiguousRefError, MergeError, RefError
from mergestore.fast_dataclass import dataclass
from mergestore.merge.config import MergeConfig, ModelRef
from mergestore.store.objects import TensorFile, TensorRecord
from mergestore.store.repo import Repository, WriteSession


@dataclass(frozen=True)
class ResolvedModel:
    """A config model resolved to a commit and its tensors."""

    ref: ModelRef
    commit: bytes
    tensors: dict[str, TensorRecord]
    committed_from_path: bool = False


def _tensors(repo: Repository, cid: bytes) -> dict[str, TensorRecord]:
    out: dict[str, TensorRecord] = {}
    from mergestore.store.merges import readable_tree

    tree = readable_tree(repo, cid)  # a lazy or evicted merge used as an input: computed now
    for e in tree.entries:
        if e.kind == "tensorfile":
            tf = repo.get_file(e.object)
            assert isinstance(tf, TensorFile)
            for t in tf.tensors:
                out[t.name] = t
    return out


def resolve_models(
    repo: Repository,
    refs: Sequence[ModelRef],
    *,
    commit_path: Callable[[Path], bytes] | None = None,
) -> list[ResolvedModel]:
    """Store refs resolve to their commits; local paths and hub ids are committed first
    (deduplicated); ``base+adapter`` is the adapter applied to the base (merge/lora.py)."""
    out = []
    for ref in refs:
        parts = None
        if "+" in ref.text:  # merge/lora.py is loaded for an adapter only
            from mergestore.merge.lora import apply_adapter, split_lora_ref

            parts = split_lora_ref(ref.text)
        if parts is not None:
            base, b_path = _resolve_one(repo, parts[0], commit_path)
            lora, l_path = _resolve_one(repo, parts[1], commit_path)
            cid = apply_adapter(repo, base, lora, ref.text)
            from_path = b_path or l_path
        else:
            cid, from_path = _resolve_one(repo, ref.text, commit_path)
        out.append(ResolvedModel(ref, cid, _tensors(repo, cid), from_path))
    return out


def _resolve_one(
    repo: Repository, text: str, commit_path: Callable[[Path], bytes] | None
) -> tuple[bytes, bool]:
    try:
        return repo.resolve(text), False
    except AmbiguousRefError:
        raise  # a name that is both a branch and a tag is no path or hub id either
    except RefError:
        from mergestore.sources import is_hub_source

        p = Path(os.path.expanduser(text))
        if not p.exists() and not is_hub_source(text):
            raise MergeError(
                f"unknown model {text!r}: not a ref, a path or a Hugging Face id"
                f"{repo.ref_hint(text)}"
            ) from None
        if commit_path is None:
            raise MergeError(f"model {text!r} is a path; commit it first") from None
        return commit_path(Path(text)), True


@dataclass
class PathInputs:
    """What committing the merge's folder inputs cost: files read, and taken on a stat."""

    files: int = 0
    files_read: int = 0
    bytes_read: int = 0
    # one entry per folder stored: path, commit, new blocks, bytes it added to the packs
    imported: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "input_files": self.files,
            "input_files_read": self.files_read,
            "input_bytes_read": self.bytes_read,
            "imported": list(self.imported),
            "imported_bytes_stored": sum(i["bytes_stored"] for i in self.imported),
        }


def commit_path_fn(
    repo: Repository,
    *,
    verify: bool = False,
    tally: PathInputs | None = None,
    session: WriteSession | None = None,
) -> Callable[[Path], bytes]:
    """Commit a local checkpoint (or a hub id, or .bin weights) without moving any ref: the
    merge commit will point at it. Unchanged files cost a stat (the stat cache), unless
    `verify`. With `session`, the commit goes into it, for its owner to publish."""

    def run(p: Path) -> bytes:
        from mergestore.sources import prepared_source

        with prepared_source(p) as src:
            res = commit_checkpoint(
                repo,
                src.path,
                message=f"merge input {p}",
                branch=None,
                want_stats=False,
                detached=True,
                verify=verify,
                meta=src.meta,
                session=session,
            )
        if tally is not None:
            tally.files += res.files
            tally.files_read += res.files_read
            tally.bytes_read += res.bytes_read
            tally.imported.append(
                {
                    "path": str(p),
                    "commit": res.commit.hex(),
                    "new_blocks": res.new_blocks,
                    "bytes_stored": res.written_bytes,
                }
            )
        return res.commit

    return run


def store_folders(
    repo: Repository,
    refs: Sequence[ModelRef],
    *,
    verify: bool = False,
    tally: PathInputs | None = None,
    session: WriteSession | None = None,
) -> Callable[[Path], bytes]:
    """Commit every model given as a local folder (or file, or hub id) in one write session,
    published once all are stored: interrupted or failed while storing them, the merge leaves
    the store as it was (the session rolls back, packs and all). With `session` (the merge's
    own, merge/session.py), into that one, unpublished, and the parts of BASE+ADAPTER too:
    the merge publishes them with its commit. Returns the commit_path function for
    resolve_models, which finds those folders stored; without `session` the parts of
    BASE+ADAPTER are committed one by one as before."""
    one_by_one = commit_path_fn(repo, verify=verify, tally=tally, session=session)
    folders = [Path(r.text) for r in refs if _is_folder_input(repo, r.text)]
    if not folders:
        return one_by_one
    done: dict[Path, bytes] = {}
    with repo.writer() if session is None else contextlib.nullcontext(session) as ws:
        assert ws is not None
        run = commit_path_fn(repo, verify=verify, tally=tally, session=ws)
        for p in folders:
            done[p] = run(p)
        if session is None:
            ws.publish()
    return lambda p: done[p] if p in done else one_by_one(p)


def _is_folder_input(repo: Repository, text: str) -> bool:
    """A model that is a local path or a hub id, not a store ref nor BASE+ADAPTER."""
    from mergestore.formats.hub import looks_like_hub_id  # not sources: no .bin or LoRA code

    if "+" in text:
        return False
    if not os.path.exists(os.path.expanduser(text)) and not looks_like_hub_id(text):
        return False
    try:
        repo.resolve(text)
    except RefError:
        return True
    return False


def commit_checkpoint(*args: Any, **kwargs: Any) -> Any:
    """ingest.commit_checkpoint, imported when a folder input is stored (a merge of store
    refs does not load the commit path)."""
    from mergestore.ingest import commit_checkpoint as commit

    return commit(*args, **kwargs)


def base_blocks_of(repo: Repository, cid: bytes | None) -> dict:
    from mergestore.ingest import base_tensor_blocks

    return base_tensor_blocks(repo, cid)


def config_models_text(cfg: MergeConfig) -> list[str]:
    return [m.ref.text for m in (cfg.models or ())]


def refuse_duplicate_commits(
    repo: Repository, cfg: MergeConfig, models: Sequence[ResolvedModel]
) -> None:
    """Two differently written inputs of one merge (or of one slice) that are the same
    checkpoint: `e1 e1~0`, `e1 <e1's id>`, `e1 <e1's folder>`, `--base e1 e1~0`. mergekit
    refuses duplicate models ("Duplicate model IDs"); here the test is the resolved commit's
    tree (the checkpoint's content), not the text. The base written the same way among the
    models is mergekit's usual form and fine."""

    def identity(cid: bytes) -> tuple[bytes, bytes | None]:
        c = repo.get_commit(cid)
        return c.tree, c.plan  # lazy merges share an empty tree; their plans tell them apart

    commit_of = {m.ref.text: identity(m.commit) for m in models}
    groups: list[list[str]] = []
    if cfg.models is not None:
        groups.append([m.ref.text for m in cfg.models])
        if cfg.base_model is not None:
            groups[-1].append(cfg.base_model.text)
    for sl in cfg.slices or ():
        group = [s.ref.text for s in sl.sources]
        base = sl.base_model or cfg.base_model
        if base is not None:
            group.append(base.text)
        groups.append(group)
    for group in groups:
        seen: dict[tuple[bytes, bytes | None], str] = {}
        for text in dict.fromkeys(group):  # the same text twice is validate_config's
            cid = commit_of.get(text)
            if cid is None:
                continue
            if cid in seen:
                raise MergeError(
                    f"models {seen[cid]!r} and {text!r} are the same checkpoint (tree"
                    f" {cid[0].hex()[:12]}); give each model once"
                )
            seen[cid] = text
