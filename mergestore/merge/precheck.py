"""Check a merge before any folder input is stored, so a refused merge leaves the store as it was.

A model given as a local folder is committed into the store before the merge reads it
(merge/inputs.py). Stored first and refused after, a bad parameter or a tensor of the wrong
shape would leave an orphan commit, its blocks and their pack bytes behind. So the checks
that need only tensor names, shapes and dtypes run first, on the folders' safetensors headers:
the config and every parameter's range (tensorplan.validate_config), missing tensors, shape and
dtype mismatches (preflight.py), duplicate store inputs, the budget's syntax and the target
branch; for BASE+ADAPTER, the adapter's targets against the base (from the adapter's header).
Only then are the folders stored. A merge with an input known only once stored or computed (a
hub id not in the Hugging Face cache, .bin weights, a lazy merge not computed yet) skips this
pass; the checks run after, in the merge's one write session (merge/session.py), so a refusal
then stores nothing either.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mergestore.errors import MergeError, RefError
from mergestore.formats.checkpoint import scan_checkpoint
from mergestore.merge.config import MergeConfig, ModelRef
from mergestore.merge.inputs import ResolvedModel
from mergestore.merge.preflight import preflight
from mergestore.merge.tensorplan import plan_tensors
from mergestore.ops import get_method
from mergestore.store.merges import known_tree
from mergestore.store.objects import TensorFile, TensorRecord
from mergestore.store.repo import Repository

ADAPTER_CONFIG = "adapter_config.json"


def precheck(
    repo: Repository,
    cfg: MergeConfig,
    refs: Sequence[ModelRef],
    *,
    budget: str | int | None = None,
    max_error: float | None = None,
    branch: str | None = None,
    force_branch: bool = False,
) -> None:
    """Refuse, before anything is stored, a merge whose folder inputs would be refused after.
    Does nothing when no input is a local folder (nothing would be stored first). `branch`
    and `force_branch` are the merge's -b and --force (merge/target.py)."""
    models: list[ResolvedModel] = []
    any_folder = False
    for ref in refs:
        peeked = _peek(repo, ref)
        if peeked is None:
            return  # an input known only once stored: prepare() checks everything after
        models.append(peeked)
        any_folder = any_folder or peeked.committed_from_path
    if not any_folder:
        return
    _check_budget(budget, max_error)
    spec = get_method(cfg.merge_method)
    plans = plan_tensors(cfg, spec, refs, {i: list(m.tensors) for i, m in enumerate(models)})
    if not plans:
        raise MergeError("the merge has no tensors to produce")
    preflight(plans, models, compute_dtype=cfg.dtype, tokenizer_source=cfg.tokenizer_source)
    if cfg.tokenizer_source is not None:  # the tokenizer merge, from the folders' files
        from mergestore.merge.vocab import build_vocab

        base = next((i for i, m in enumerate(models) if m.ref == cfg.base_model), None)
        build_vocab(repo, cfg, models, base)
    stored = [m for m in models if not m.committed_from_path]
    if len(stored) > 1:
        from mergestore.merge.inputs import refuse_duplicate_commits

        refuse_duplicate_commits(repo, cfg, stored)
    if branch is not None:
        from mergestore.merge.target import merge_target

        named = [(f"{m.ref.text!r}, a model of this merge", m.commit) for m in stored]
        merge_target(repo, spec.name, branch, named, force=force_branch)


def _check_budget(budget: str | int | None, max_error: float | None) -> None:
    from mergestore.merge.budget import BudgetError, parse_budget

    if isinstance(budget, str):
        parse_budget(budget, 1)  # the syntax; the amount is checked against the inputs later
    if max_error is not None and not 0 <= max_error <= 1:
        raise BudgetError("--max-error is a share of the merge delta, between 0 and 1")


def _known_tensors(repo: Repository, cid: bytes) -> dict[str, TensorRecord] | None:
    """A commit's tensors without computing anything (None: a lazy merge not computed yet,
    which only reading it computes; the checks then wait until after the folders are stored)."""
    tree = known_tree(repo, cid)
    if tree is None:
        return None
    out: dict[str, TensorRecord] = {}
    for e in tree.entries:
        if e.kind == "tensorfile":
            tf = repo.get_file(e.object)
            assert isinstance(tf, TensorFile)
            out.update((t.name, t) for t in tf.tensors)
    return out


def _peek(repo: Repository, ref: ModelRef) -> ResolvedModel | None:
    """A store ref as it is; a local checkpoint folder (or a cached hub snapshot) from its
    headers (no blocks, no commit); None for what must be stored or fetched to be known."""
    text = ref.text
    try:
        cid = repo.resolve(text)
    except RefError:
        pass
    else:
        tensors = _known_tensors(repo, cid)
        return None if tensors is None else ResolvedModel(ref, cid, tensors)
    if "+" in text:
        return _peek_adapted(repo, ref)
    path = Path(os.path.expanduser(text))
    if not path.exists():
        from mergestore.formats.hub import cached_snapshot, parse_hub_id

        parsed = parse_hub_id(text)
        hit = cached_snapshot(*parsed) if parsed is not None else None
        if hit is None:
            return None  # a hub id to download, or an unknown model: prepare() says which
        path = hit.path  # a hub id in the Hugging Face cache: its headers are at hand
    from mergestore.formats.torchbin import needs_conversion

    if needs_conversion(path) or (path.is_dir() and (path / ADAPTER_CONFIG).is_file()):
        return None
    return ResolvedModel(ref, b"", _header_records(path), committed_from_path=True)


def _header_records(path: Path) -> dict[str, TensorRecord]:
    """A checkpoint folder's tensors as its safetensors headers give them (no data read)."""
    ckpt = scan_checkpoint(path)
    return {
        name: TensorRecord(name, e.dtype, tuple(e.shape), e.begin, e.end, 0, ())
        for name, (_, e) in ckpt.tensor_index().items()
    }


def _peek_adapted(repo: Repository, ref: ModelRef) -> ResolvedModel | None:
    """BASE+ADAPTER: the base's tensors (an adapter changes values, not names or shapes), once
    an adapter given as a folder is checked against them from its safetensors header. Marked
    as stored from a path: its commit is made only by applying the adapter."""
    from mergestore.merge.lora import check_adapter, split_lora_ref

    parts = split_lora_ref(ref.text)
    assert parts is not None
    base = _peek(repo, ModelRef(parts[0]))
    if base is None:
        return None
    folder = Path(os.path.expanduser(parts[1]))
    if folder.is_dir() and (folder / ADAPTER_CONFIG).is_file():
        try:
            repo.resolve(parts[1])
        except RefError:
            raw_cfg = (folder / ADAPTER_CONFIG).read_bytes()
            check_adapter(ref.text, raw_cfg, _header_records(folder), base.tensors)
    return ResolvedModel(ref, b"", base.tensors, committed_from_path=True)
