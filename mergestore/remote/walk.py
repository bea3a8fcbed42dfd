"""The objects and blocks reachable from some commits, stopping where the other side has them.

A side (a local store, or a remote) holds a commit only after everything reachable from it:
blocks first, then objects, then refs. So a walk can stop at any object the other side has.
Every object is checked against its id and its type before it is followed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import field

from mergestore.errors import CorruptionError, MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.store.objects import (
    BlobFile,
    Commit,
    Plan,
    StoreObject,
    TensorFile,
    Tree,
    decode_object,
)


@dataclass
class Closure:
    """What the other side lacks of some commits: objects, commits and blocks."""

    objects: dict[bytes, bytes] = field(default_factory=dict)  # new objects, encoded, by id
    commits: list[bytes] = field(default_factory=list)
    blocks: set[bytes] = field(default_factory=set)  # blocks the new file objects use


def closure(
    starts: Iterable[bytes],
    get: Callable[[bytes], bytes | None],
    have: Callable[[bytes], bool],
    where: str,
) -> Closure:
    """Objects reachable from `starts` that `have` says the other side lacks."""
    out = Closure()
    seen: set[bytes] = set()

    def load(oid: bytes, kind: type | tuple[type, ...], what: str) -> StoreObject:
        data = get(oid)
        if data is None:
            raise CorruptionError(f"{where}: {what} {oid.hex()[:12]} is missing")
        try:
            obj = decode_object(data, expected_id=oid)
        except MergestoreError as e:
            raise CorruptionError(f"{where}: {what} {oid.hex()[:12]}: {e}") from None
        if not isinstance(obj, kind):
            raise CorruptionError(f"{where}: {what} {oid.hex()[:12]} has the wrong type")
        out.objects[oid] = data
        return obj

    def want(oid: bytes) -> bool:
        if oid in seen:
            return False
        seen.add(oid)
        return not have(oid)

    stack = [s for s in starts]
    while stack:
        cid = stack.pop()
        if not want(cid):
            continue
        c = load(cid, Commit, "commit")
        assert isinstance(c, Commit)
        out.commits.append(cid)
        stack.extend(c.parents)
        if c.base is not None:
            stack.append(c.base)
        for oid in (c.plan, c.run):
            if oid is not None and want(oid):
                p = load(oid, Plan, "plan")
                if oid == c.plan:  # its inputs and a saliency commit: replay needs them
                    assert isinstance(p, Plan)
                    stack.extend(p.input_commits())
        if not want(c.tree):
            continue
        tree = load(c.tree, Tree, "tree")
        assert isinstance(tree, Tree)
        for e in tree.entries:
            if not want(e.object):
                continue
            f = load(e.object, (BlobFile, TensorFile), f"file {e.path[:80]!r}")
            if isinstance(f, BlobFile):
                out.blocks.update(f.blocks)
                continue
            assert isinstance(f, TensorFile)
            if want(f.header):
                header = load(f.header, BlobFile, "header")
                assert isinstance(header, BlobFile)
                out.blocks.update(header.blocks)
            for t in f.tensors:
                out.blocks.update(t.blocks)
    return out


def is_ancestor(get_commit: Callable[[bytes], Commit], ancestor: bytes, commit: bytes) -> bool:
    """True when `ancestor` is `commit` or reachable from it through parents."""
    seen: set[bytes] = set()
    stack = [commit]
    while stack:
        cid = stack.pop()
        if cid == ancestor:
            return True
        if cid in seen:
            continue
        seen.add(cid)
        stack.extend(get_commit(cid).parents)
    return False
