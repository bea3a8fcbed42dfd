"""Renaming branches and deleting tags: the checks git makes before `branch -m` and `tag -d`."""

from __future__ import annotations

from mergestore.errors import RefError
from mergestore.store.refs import HEADS, TAGS, check_new_ref_name
from mergestore.store.repo import RefUpdate, Repository


def rename_branch(repo: Repository, old: str, new: str, *, force: bool = False) -> bytes:
    """Branch OLD becomes NEW (its reflog and HEAD follow); refuses to replace an existing
    NEW without `force`, and never replaces HEAD's branch. Returns the commit."""
    src, dst = HEADS + old, HEADS + check_new_ref_name(new)
    cid = repo.read_ref(src)
    if cid is None:
        raise RefError(f"no branch {old!r}")
    if src == dst:
        return cid  # as git: renaming a branch to itself changes nothing
    dst_old = repo.read_ref(dst)
    if dst_old is not None:
        if not force:
            raise RefError(f"branch {new!r} already exists (-M replaces it)")
        if repo.head_target() == dst:
            raise RefError(f"cannot replace branch {new!r}: HEAD is on it")
    repo.rename_ref(src, dst, cid, dst_old)
    return cid


def delete_tag(repo: Repository, name: str) -> bytes:
    """Remove tag NAME; its reflog records the deletion. Returns the commit it named."""
    old = repo.read_ref(TAGS + name)
    if old is None:
        raise RefError(f"no tag {name!r}")
    repo.update_refs([RefUpdate(TAGS + name, None, "tag: deleted", old=old)])
    return old
