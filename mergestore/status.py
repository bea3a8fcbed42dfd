"""`status` and `switch`: where HEAD is, how big the store is, what is running in it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergestore.errors import RefError
from mergestore.store.refs import HEADS, check_new_ref_name, check_ref_name
from mergestore.store.repo import RefUpdate

if TYPE_CHECKING:
    from mergestore.api import Store


def store_bytes(path: Path) -> int:
    """Bytes the store takes on disk (packs, index, config), by walking its directory."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                continue
    return total


def running_operations(path: Path) -> list[str]:
    """What holds the store now, probed on its gc lock without waiting.

    Writers (commit, merge, checkout of a merge input) hold it shared, gc holds it exclusive;
    nothing is left to resume after a crash: a command that dies publishes nothing, and gc
    reclaims what it had appended.
    """
    lock = path / "locks" / "gc.lock"
    if not lock.exists():
        return []
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return ["gc is running"]
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return ["a commit or merge is writing to the store"]
        fcntl.flock(fd, fcntl.LOCK_UN)
        return []
    finally:
        os.close(fd)


def remote_status(store: Store) -> list[dict[str, Any]]:
    """Ahead/behind counts per remote-tracking branch, once the store has remotes."""
    heads = store.branches()
    out = []
    tracking = store.repo.list_refs("refs/remotes/")
    for name, rid in sorted(tracking.items()):
        short = name[len("refs/remotes/") :]
        remote, _, branch = short.partition("/")
        local = heads.get(branch)
        if local is None:
            continue
        ahead, behind = ahead_behind(store, local, rid)
        out.append({"remote": remote, "branch": branch, "ahead": ahead, "behind": behind})
    return out


def _ancestors(store: Store, cid: bytes) -> set[bytes]:
    seen: set[bytes] = set()
    stack = [cid]
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        try:
            stack.extend(store.repo.get_commit(c).parents)
        except Exception:  # a commit not fetched yet: stop there
            continue
    return seen


def ahead_behind(store: Store, local: bytes, remote: bytes) -> tuple[int, int]:
    a, b = _ancestors(store, local), _ancestors(store, remote)
    return len(a - b), len(b - a)


def status(store: Store) -> dict[str, Any]:
    branch = store.current_branch()
    head = store.repo.read_ref("HEAD")
    target = store.repo.head_target()
    return {
        "store": str(store.path.resolve()),
        "head": head.hex() if head else None,
        "branch": branch,
        "detached": target is None,
        "unborn": head is None,
        "store_bytes": store_bytes(store.path),
        "branches": len(store.branches()),
        "tags": len(store.tags()),
        "in_progress": running_operations(store.path),
        "remotes": remote_status(store),
    }


def switch(store: Store, branch: str, *, create: bool = False, start: str = "HEAD") -> bytes:
    """Point HEAD at BRANCH (created at START with `create`); returns the commit it names."""
    full = HEADS + (check_new_ref_name(branch) if create else check_ref_name(branch))
    cid = store.repo.read_ref(full)
    if create:
        if cid is not None:
            raise RefError(f"branch {branch!r} already exists")
        cid = store.resolve(start)
        store.repo.update_refs([RefUpdate(full, cid, f"branch: created from {start}", old=None)])
    elif cid is None:
        raise RefError(f"no branch {branch!r} (create it with `mergestore switch -c {branch}`)")
    store.repo.set_head(full)
    return cid
