"""Lazy and evicted merge commits: compute what a read needs, and drop what can be rebuilt.

A merge commit's plan rebuilds its output bit for bit, so its blocks are a cache:

- lazy: `merge --lazy` publishes the commit and plan only. The commit's tree field is the
  empty tree (a commit's id cannot depend on output not yet computed); once computed, the
  store records commit -> tree (store/merges.py) and the commit reads like any other.
- evicted: `evict` drops the tensor blocks only that commit reaches; its tree, and so every
  expected output block id, stays.

Every reader calls `store.merges.readable_tree`, which calls `materialize` here (registered
by mergestore.api): it computes the missing tensors a read needs through the streaming engine
(journaled, merge/journal.py) and checks each recomputed block id against the one the commit
records, where known.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

from mergestore.errors import MergeError
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.merge.engine import OutputTensor
from mergestore.store import merges
from mergestore.store.objects import BlobFile, Commit, TensorFile, TensorRecord, Tree
from mergestore.store.repo import Repository

Progress = Callable[[int], None]


def prepared_from_commit(repo: Repository, c: Commit) -> Any:
    """The PreparedMerge a merge commit's plan describes (its recorded inputs and reads)."""
    from mergestore.merge import budget as budget_mod
    from mergestore.merge.config import config_from_mapping, models_in_config
    from mergestore.merge.inputs import ResolvedModel, _tensors
    from mergestore.merge.prepared import PreparedMerge, find_base_index, make_tasks
    from mergestore.merge.tensorplan import plan_tensors
    from mergestore.ops import get_method

    if c.plan is None:
        raise MergeError(f"{c.id.hex()[:12]} is not a merge commit (it has no plan)")
    body = repo.get_plan(c.plan).body
    if body.get("type") != "merge_plan":
        raise MergeError("the commit's plan is not a merge plan")
    cfg = config_from_mapping(body["config"], raw_text=body.get("config_yaml"))
    commits = [bytes.fromhex(m["commit"]) for m in body["models"]]
    spec = get_method(cfg.merge_method)
    refs = models_in_config(cfg)
    models = [
        ResolvedModel(r, cid, _tensors(repo, cid)) for r, cid in zip(refs, commits, strict=True)
    ]
    plans = plan_tensors(cfg, spec, refs, {i: list(m.tensors) for i, m in enumerate(models)})
    base_index = find_base_index(cfg, models)
    tasks = make_tasks(plans, models, base_index)
    selection = budget_mod.Selection.from_plan(body)
    for t in tasks:
        t.selected = [selection.for_input(t.plan.name, m) for m in t.input_models]
    from mergestore.merge import trim

    trim.apply(tasks, selection.trim)
    from mergestore.merge.vocab import build_vocab

    vocab = build_vocab(repo, cfg, models, base_index)  # a tokenizer merge: from the inputs
    return PreparedMerge(cfg, models, plans, tasks, base_index, selection, body, vocab=vocab)


def _records(tree: Tree, repo: Repository) -> dict[str, TensorRecord]:
    out: dict[str, TensorRecord] = {}
    for e in tree.entries:
        if e.kind == "tensorfile":
            tf = repo.get_file(e.object)
            assert isinstance(tf, TensorFile)
            for t in tf.tensors:
                out[t.name] = t
    return out


def materialize(
    repo: Repository,
    cid: bytes,
    *,
    tensors: list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compute and store a lazy or evicted merge commit's missing tensors (all, or `tensors`).

    Returns {"commit", "state" (before), "tensors_computed", "tensors_reused", ...}.
    """
    c = repo.get_commit(cid)
    before = merges.state(repo, c)
    if before == "materialized":
        return {"commit": cid.hex(), "state": before, "tensors_computed": 0}
    return _compute(repo, c, prepared_from_commit(repo, c), tensors, progress)[0]


def lazy_tensor_records(repo: Repository, cid: bytes, globs: list[str]) -> list[TensorRecord]:
    """The records of a lazy merge's tensors matching `globs`, computing only those.

    They are journaled under the plan id (merge/journal.py), so a later full materialize
    reuses them; the full tree is built only once every tensor is computed. A record's
    offsets are relative to its own tensor (0, nbytes): the file layout is not fixed yet.
    """
    c = repo.get_commit(cid)
    prep = prepared_from_commit(repo, c)
    names = [t.plan.name for t in prep.tasks if merges.matches(t.plan.name, globs)]
    if not names:
        return []
    _, outputs = _compute(repo, c, prep, names, None)
    tid = merges.tree_id(repo, repo.get_commit(cid))
    if tid is not None:  # that was the last tensor missing: the tree exists now
        recs = _records(repo.get_tree(tid), repo)
        return [recs[n] for n in names]
    return [_record(outputs[n]) for n in names]


def _record(o: OutputTensor) -> TensorRecord:
    nbytes = math.prod(o.shape) * DTYPE_SIZES[o.dtype]
    return TensorRecord(o.name, o.dtype, tuple(o.shape), 0, nbytes, o.rows_per_block, o.blocks)


def _compute(
    repo: Repository,
    c: Commit,
    prep: Any,
    tensors: list[str] | None,
    progress: Progress | None,
) -> tuple[dict[str, Any], dict[str, OutputTensor]]:
    """materialize's work; also returns the wanted tensors' outputs (computed or reused)."""
    from mergestore.merge import journal
    from mergestore.merge.prepared import ENGINE, make_engine, publish_tree

    cid = c.id
    out: dict[str, Any] = {"commit": cid.hex(), "state": merges.state(repo, c)}
    assert c.plan is not None
    tid = merges.tree_id(repo, c)
    names = [t.plan.name for t in prep.tasks]
    want = set(names) if tensors is None else set(tensors)
    unknown = want - set(names)
    if unknown:
        raise MergeError(f"merge {cid.hex()[:12]} has no tensor {sorted(unknown)[0]!r}")
    expected: dict[str, tuple[bytes, ...]] = {}
    reuse: dict[str, OutputTensor] = {}
    if tid is not None:
        recs = _records(repo.get_tree(tid), repo)
        present = set(repo.block_locations({b for r in recs.values() for b in r.blocks}))
        for n, r in recs.items():
            expected[n] = r.blocks
            if all(b in present for b in r.blocks):
                reuse[n] = OutputTensor(n, r.dtype, r.shape, r.rows_per_block, r.blocks)
    else:
        reuse = journal.journaled_outputs(repo, c.plan, ENGINE, set(names), repo.reading_session)
    tasks = [t for t in prep.tasks if t.plan.name in want or t.plan.name in reuse]
    res = journal.compute(
        repo,
        make_engine(repo, prep),
        tasks,
        len(prep.models),
        c.plan,
        expected=expected,
        reuse=dict(reuse),
        track_delta=False,
        omitted=prep.plan_body.get("omitted_from_base"),
        progress=progress,
        journal=tid is None,
        session=repo.reading_session,  # inside a merge: its session, published with it
    )
    out["tensors_computed"] = res.computed
    out["tensors_reused"] = len([n for n in want if n in reuse])
    out["bytes_written"] = res.bytes_written
    complete = all(n in res.outputs for n in names)
    if complete:
        ambient = repo.reading_session
        with repo.writer() if ambient is None else contextlib.nullcontext(ambient) as session:
            assert session is not None
            if tid is None:
                tree = publish_tree(repo, session, prep, [res.outputs[n] for n in names])
                merges.set_lazy_tree(session, cid, tree)
                merges.set_journal(session, c.plan, None)
            merges.set_evicted(session, cid, None)
            if ambient is None:
                session.publish()
    out["state_after"] = merges.state(repo, repo.get_commit(cid))
    return out, {n: res.outputs[n] for n in want}


# ----- evict ---------------------------------------------------------------------------------


def _tree_blocks(repo: Repository, tree: Tree, tensors_only: bool) -> set[bytes]:
    out: set[bytes] = set()
    for e in tree.entries:
        obj = repo.get_file(e.object)
        if isinstance(obj, TensorFile):
            if not tensors_only:
                header = repo.get_file(obj.header)
                assert isinstance(header, BlobFile)
                out.update(header.blocks)
            for t in obj.tensors:
                out.update(t.blocks)
        elif not tensors_only:
            out.update(obj.blocks)
    return out


def evict(repo: Repository, cid: bytes) -> dict[str, Any]:
    """Drop the tensor blocks only merge commit `cid` uses; keep its commit, plan and tree.

    Blocks any other commit (reachable or not), lazy tree, journal, or kept delta-coded block
    needs stay. Holds the gc lock exclusively: no writer may deduplicate against a block
    while it is being dropped. The pack bytes become dead space that `gc` reclaims.
    """
    c = repo.get_commit(cid)
    if c.plan is None:
        raise MergeError(f"{cid.hex()[:12]} is not a merge commit: only merges can be rebuilt")
    st = merges.state(repo, c)
    if st == "lazy":
        return {"commit": cid.hex(), "state": st, "blocks": 0, "stored_bytes": 0, "raw_bytes": 0}
    fd = repo.gc_lock(exclusive=True)
    try:
        import os

        tid = merges.tree_id(repo, c)
        assert tid is not None
        mine = _tree_blocks(repo, repo.get_tree(tid), tensors_only=True)
        others: set[bytes] = set()
        seen_trees = {tid}
        for oid, other in _all_commits(repo):
            if oid == cid:
                continue
            t = merges.tree_id(repo, other)
            if t is not None and t not in seen_trees:
                seen_trees.add(t)
                others |= _tree_blocks(repo, repo.get_tree(t), tensors_only=False)
        for j in merges.journals(repo).values():
            for v in (j.get("tensors") or {}).values():
                others.update(bytes.fromhex(b) for b in v[3])
        candidates = mine - others
        # keep what a kept block is delta-coded against
        for _bid, loc in repo.iter_blocks():
            if loc.ref is not None and loc.ref in candidates and _bid not in candidates:
                candidates.discard(loc.ref)
        locs = repo.block_locations(candidates)
        prior = merges.evicted(repo, cid) or {}
        info = {
            "blocks": prior.get("blocks", 0) + len(locs),
            "raw_bytes": prior.get("raw_bytes", 0) + sum(x.raw_len for x in locs.values()),
            "stored_bytes": prior.get("stored_bytes", 0) + sum(x.length for x in locs.values()),
            "time": __import__("time").time(),
        }
        merges.drop_blocks(repo, list(locs), cid, info)
    finally:
        os.close(fd)
    return {"commit": cid.hex(), "state": st, **info, "dropped_now": len(locs)}


def _hook(repo: Repository, cid: bytes, tensors: list[str] | None) -> None:
    materialize(repo, cid, tensors=tensors)


merges.set_materializer(_hook)
merges.set_tensor_materializer(lazy_tensor_records)


def _all_commits(repo: Repository) -> Iterable[tuple[bytes, Commit]]:
    for oid in repo.iter_object_ids():
        data = repo.get_object_bytes(oid)
        if data is None or not data.startswith(b"commit\n"):
            continue
        yield oid, repo.get_commit(oid)
