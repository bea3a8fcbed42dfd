"""Memo by plan: a merge whose plan already has a commit returns that commit.

A plan id is the id of the merge's plan object, which names the method, its parameters, the
exact input commits, dtypes, seed, engine version, block size and budget selections (see
run.prepare). The store keeps plan id -> commit (store/merges.py). A hit reads no blocks: it
moves the requested branch to the commit in one transaction. A hit on a lazy or evicted
commit computes what is missing first, unless the merge itself is lazy.
"""

from __future__ import annotations

import json
from typing import Any

from mergestore.errors import MergeError
from mergestore.store import merges
from mergestore.store.repo import RefUpdate, Repository, WriteSession


def lookup(repo: Repository, plan_id: bytes) -> bytes | None:
    return merges.memo_commit(repo, plan_id)


def use(
    repo: Repository,
    cid: bytes,
    prep: Any,
    ref: str,
    *,
    materialize: bool,
    progress: Any = None,
) -> Any:
    """Return the memo commit as the merge's result and move `ref` to it."""
    from mergestore.merge.prepared import MergeResult

    c = repo.get_commit(cid)
    computed = None
    if materialize and merges.state(repo, c) != "materialized":
        from mergestore.merge.materialize import materialize as run_materialize

        computed = run_materialize(repo, cid, progress=progress)
    old = repo.read_ref(ref)
    if old != cid:
        repo.update_refs(
            [RefUpdate(ref, cid, f"merge: already merged (plan {c.plan.hex()[:12]})", old=old)]
        )
    run = dict(repo.get_plan(c.run).body) if c.run else {}
    run.pop("type", None)
    run.pop("plan", None)
    run["memo"] = True
    run["notes"] = list(prep.selection.notes)  # about this request (its budget), not the first
    run["state"] = merges.state(repo, repo.get_commit(cid))
    if computed is not None:
        run["tensors_computed"] = computed["tensors_computed"]
    else:
        run["tensors_computed"] = 0
    return MergeResult(cid, prep.plan.id, run, [])


def check_forced(
    repo: Repository, session: Any, cid: bytes, tree: bytes, prep: Any, ref: str, run: dict
) -> Any:
    """--force on a memo hit: the recomputed tree must be the commit's; then move `ref`."""
    from mergestore.merge.prepared import MergeResult

    c = repo.get_commit(cid)
    want = merges.tree_id(repo, c)
    if want is not None and want != tree:
        raise MergeError(
            f"recomputed plan {prep.plan.id.hex()[:12]} gave other blocks than commit "
            f"{cid.hex()[:12]} holds (tree {tree.hex()[:12]} != {want.hex()[:12]}): the merge "
            "is not deterministic here; nothing was changed"
        )
    if want is None:
        merges.set_lazy_tree(session, cid, tree)
    merges.set_evicted(session, cid, None)
    merges.set_journal(session, prep.plan.id, None)
    old = repo.read_ref(ref)
    session.publish([RefUpdate(ref, cid, "merge --force: same blocks", old=old)])
    run = {**run, "memo": True, "forced": True, "identical": True, "state": "materialized"}
    return MergeResult(cid, prep.plan.id, run, [])


def drop_stale_journals(
    repo: Repository, ref: str, plan_id: bytes, session: WriteSession | None = None
) -> None:
    """Journals of other plans for the same branch no longer match: remove them (with
    `session`, a merge's, when it publishes: merge/session.py)."""
    stale = [
        pid
        for pid, body in merges.journals(repo).items()
        if pid != plan_id and body.get("ref") == ref
    ]
    if session is not None:
        for key, raw in list(session.index_puts.items()):  # adopted from a killed merge
            if key[0] == merges.DB and key[1].startswith(merges.JOURNAL) and raw is not None:
                pid = key[1][len(merges.JOURNAL) :]
                if pid != plan_id and json.loads(raw).get("ref") == ref:
                    stale.append(pid)
    for pid in stale:
        if session is not None:
            merges.set_journal(session, pid, None)
        else:
            merges.delete_journal(repo, pid)
