"""The merge cache's index entries: which commit holds a plan's output, and in what state.

One LMDB database, `merges`, with keys prefixed by their kind (all values are small):

  m | plan id    -> commit id     memo: the merge commit that holds this plan's output
  t | commit id  -> tree id       the computed tree of a lazy merge commit (its own tree field
                                  is the empty tree: a commit's id cannot wait for its output)
  e | commit id  -> JSON          evicted: the commit's own tensor blocks were dropped
                                  ({"time", "blocks", "raw_bytes", "stored_bytes"})
  j | plan id    -> JSON          journal of a merge in progress: finished tensors and their
                                  output block ids ({"time", "tensors": {name: [...]}})

Entries are written through a WriteSession (`index_puts`), so they become visible in the same
transaction as the blocks and objects they name. Objects stay immutable: these entries only
say where a plan's output is and whether its blocks are present.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mergestore.errors import CorruptionError, MergestoreError
from mergestore.store.objects import TensorFile, TensorRecord, Tree
from mergestore.store.repo import Repository, WriteSession

DB = "merges"
MEMO, TREE, EVICTED, JOURNAL = b"m", b"t", b"e", b"j"
EMPTY_TREE = Tree(entries=())
LAZY_META = "mergestore.lazy"  # commit meta key of a merge committed before it was computed


def _get(repo: Repository, key: bytes) -> bytes | None:
    found, value = repo.overlay_index_value(DB, key)  # a merge's own unpublished entries
    if found:
        return value
    with repo.index.read() as txn:
        raw = txn.get(key, db=repo.index.db(DB))
    return bytes(raw) if raw is not None else None


def _scan(repo: Repository, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    with repo.index.read() as txn:
        cur = txn.cursor(db=repo.index.db(DB))
        if not cur.set_range(prefix):
            return
        for k, v in cur:
            k = bytes(k)
            if not k.startswith(prefix):
                break
            yield k[len(prefix) :], bytes(v)


def _id(raw: bytes | None, what: str) -> bytes | None:
    if raw is None:
        return None
    if len(raw) != 32:
        raise CorruptionError(f"corrupt merge cache entry ({what})")
    return raw


# ----- memo ----------------------------------------------------------------------------------


def memo_commit(repo: Repository, plan_id: bytes) -> bytes | None:
    """The commit recorded for a plan, if it still exists in the store."""
    cid = _id(_get(repo, MEMO + plan_id), "memo")
    if cid is None or repo.get_object_bytes(cid) is None:
        return None  # gc removed it: the memo entry is stale
    return cid


def set_memo(session: WriteSession, plan_id: bytes, commit_id: bytes) -> None:
    session.index_puts[(DB, MEMO + plan_id)] = commit_id


def memo_entries(repo: Repository) -> dict[bytes, bytes]:
    return {k: v for k, v in _scan(repo, MEMO)}


# ----- lazy trees ----------------------------------------------------------------------------


def lazy_tree(repo: Repository, commit_id: bytes) -> bytes | None:
    """The computed tree of a lazy merge commit, once it has been computed."""
    return _id(_get(repo, TREE + commit_id), "lazy tree")


def set_lazy_tree(session: WriteSession, commit_id: bytes, tree_id: bytes) -> None:
    session.index_puts[(DB, TREE + commit_id)] = tree_id


def lazy_trees(repo: Repository) -> dict[bytes, bytes]:
    return {k: v for k, v in _scan(repo, TREE)}


# ----- evictions -----------------------------------------------------------------------------


def evicted(repo: Repository, commit_id: bytes) -> dict[str, Any] | None:
    raw = _get(repo, EVICTED + commit_id)
    return _json(raw) if raw is not None else None


def evictions(repo: Repository) -> dict[bytes, dict[str, Any]]:
    return {k: _json(v) for k, v in _scan(repo, EVICTED)}


def set_evicted(session: WriteSession, commit_id: bytes, info: dict[str, Any] | None) -> None:
    """Record an eviction (None: the commit's blocks are all back)."""
    value = None if info is None else json.dumps(info, sort_keys=True).encode()
    session.index_puts[(DB, EVICTED + commit_id)] = value


def drop_blocks(repo: Repository, block_ids: list[bytes], commit_id: bytes, info: dict) -> None:
    """Remove blocks from the index and record the eviction, in one transaction.

    The caller holds the gc lock exclusively (no writer may be deduplicating against these
    blocks); the pack bytes become dead space that gc reclaims.
    """
    idx = repo.index
    with idx.write() as txn:
        db = idx.db("blocks")
        for bid in block_ids:
            txn.delete(bid, db=db)
        txn.put(EVICTED + commit_id, json.dumps(info, sort_keys=True).encode(), db=idx.db(DB))


# ----- journals ------------------------------------------------------------------------------


def journal(repo: Repository, plan_id: bytes) -> dict[str, Any] | None:
    raw = _get(repo, JOURNAL + plan_id)
    return _json(raw) if raw is not None else None


def journals(repo: Repository) -> dict[bytes, dict[str, Any]]:
    """Every journal: published ones, and those of merges whose session is saved but not
    published (running, or killed: store/pending.py)."""
    from mergestore.store.pending import journals as saved

    out = saved(repo, DB, JOURNAL)
    out.update((k, _json(v)) for k, v in _scan(repo, JOURNAL))
    return out


def published_journals(repo: Repository) -> list[bytes]:
    """The plan ids of journals in the index (not those of saved, unpublished sessions)."""
    return [k for k, _ in _scan(repo, JOURNAL)]


def set_journal(session: WriteSession, plan_id: bytes, body: dict[str, Any] | None) -> None:
    value = None if body is None else json.dumps(body, sort_keys=True).encode()
    session.index_puts[(DB, JOURNAL + plan_id)] = value


def delete_journal(repo: Repository, plan_id: bytes) -> None:
    with repo.index.write() as txn:
        txn.delete(JOURNAL + plan_id, db=repo.index.db(DB))


def _json(raw: bytes) -> dict[str, Any]:
    try:
        d = json.loads(raw)
    except ValueError as e:
        raise CorruptionError("corrupt merge cache entry (not JSON)") from e
    if not isinstance(d, dict):
        raise CorruptionError("corrupt merge cache entry")
    return d


def tree_id(repo: Repository, commit: Any) -> bytes | None:
    """The tree holding a commit's files: its own, or a lazy merge's computed tree (None
    while it has not been computed)."""
    if commit.meta.get(LAZY_META) == "1":
        return lazy_tree(repo, commit.id)
    return commit.tree


def state(repo: Repository, commit: Any) -> str:
    """ "lazy" (never computed), "evicted" (blocks dropped) or "materialized"."""
    if commit.plan is None:
        return "materialized"
    if tree_id(repo, commit) is None:
        return "lazy"
    if evicted(repo, commit.id) is not None:
        return "evicted"
    return "materialized"


# A lazy or evicted merge is computed by the merge layer, above this one: it registers here
# (mergestore.api does on import), so readers in any layer get the tree they need.
Materializer = Callable[[Repository, bytes, "list[str] | None"], object]
_materializer: list[Materializer] = []


def set_materializer(fn: Materializer) -> None:
    _materializer[:] = [fn]


# A lazy merge never computed has no tree yet; reading some of its tensors computes only those
# (the merge layer journals them, so a later full materialize reuses them) and gets their
# records from this hook: the globs' matches, offsets relative to the tensor (0, nbytes).
TensorMaterializer = Callable[[Repository, bytes, Sequence[str]], "list[TensorRecord]"]
_tensor_materializer: list[TensorMaterializer] = []


def set_tensor_materializer(fn: TensorMaterializer) -> None:
    _tensor_materializer[:] = [fn]


def matches(name: str, globs: Sequence[str]) -> bool:
    """A tensor name against the names or globs a reader asked for."""
    return any(name == g or fnmatch.fnmatchcase(name, g) for g in globs)


def readable_tensors(repo: Repository, cid: bytes, globs: Sequence[str]) -> list[TensorRecord]:
    """The records of commit `cid`'s tensors matching `globs` (names or globs), their blocks
    present. A lazy merge computes only those tensors; an evicted one recomputes only those,
    checking each block id against the one its tree records."""
    c = repo.get_commit(cid)
    if c.plan is not None and tree_id(repo, c) is None:
        if not _tensor_materializer:
            raise MergestoreError(
                f"{cid.hex()[:12]} is a lazy merge commit: run `mergestore materialize` first"
            )
        return _tensor_materializer[0](repo, cid, list(globs))
    tid = tree_id(repo, c)
    assert tid is not None
    recs = [t for t in _tree_records(repo, repo.get_tree(tid)) if matches(t.name, globs)]
    if recs and c.plan is not None and evicted(repo, cid) is not None:
        readable_tree(repo, cid, [t.name for t in recs])
    return recs


def _tree_records(repo: Repository, tree: Tree) -> Iterator[TensorRecord]:
    for e in tree.entries:
        if e.kind == "tensorfile":
            tf = repo.get_file(e.object)
            if not isinstance(tf, TensorFile):
                raise CorruptionError(f"tree entry {e.path} is not a tensor file")
            yield from tf.tensors


def readable_tree(repo: Repository, cid: bytes, tensors: Any = None) -> Tree:
    """The tree of commit `cid` with the blocks of `tensors` (every tensor when None) present:
    a lazy merge is computed whole, an evicted one tensor by tensor, checking each block id.
    `tensors=()` wants the files and block ids only (a lazy merge is still computed)."""
    c = repo.get_commit(cid)
    if c.plan is None:
        return repo.get_tree(c.tree)
    st = state(repo, c)
    names = None if tensors is None else list(tensors)
    if st == "lazy" or (st == "evicted" and names != []):
        if not _materializer:
            raise MergestoreError(
                f"{cid.hex()[:12]} is a {st} merge commit: run `mergestore materialize` first"
            )
        _materializer[0](repo, cid, None if st == "lazy" else names)
    tid = tree_id(repo, c)
    if tid is None:
        raise CorruptionError(f"lazy merge {cid.hex()[:12]} has no tree after computing it")
    return repo.get_tree(tid)


def known_tree(repo: Repository, cid: bytes) -> Tree | None:
    """A commit's tree without computing anything (None: a lazy merge not computed yet)."""
    tid = tree_id(repo, repo.get_commit(cid))
    return repo.get_tree(tid) if tid is not None else None
