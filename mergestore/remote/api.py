"""Remote operations as the public API calls them: clone, push, fetch, pull, views."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import blake3

from mergestore.errors import MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.remote.client import ObjectClient
from mergestore.remote.config import add_remote, load_remotes
from mergestore.remote.fetch import FetchResult, fetch
from mergestore.remote.layout import FORMAT_KEY, parse_format_marker
from mergestore.remote.lazy import attach
from mergestore.remote.push import PushResult, push
from mergestore.remote.session import RemoteSession
from mergestore.remote.url import mask_url, parse_url
from mergestore.remote.walk import is_ancestor
from mergestore.store.refs import HEADS, REMOTES, check_ref_name
from mergestore.store.repo import CONFIG_FILE, RefUpdate, Repository, StoreConfig

Phase = Callable[[str, int | None], Callable[[int], None] | None]


def do_push(
    repo: Repository,
    remote: str,
    refs: Sequence[str] = (),
    *,
    force: bool = False,
    tags: bool = False,
    phase: Phase | None = None,
) -> PushResult:
    return push(RemoteSession.open(repo, remote), refs, force=force, tags=tags, phase=phase)


def do_fetch(repo: Repository, remote: str, *, phase: Phase | None = None) -> FetchResult:
    return fetch(RemoteSession.open(repo, remote), phase=phase)


@dataclass
class PullResult:
    """What `pull` fetched and how the branch moved."""

    fetch: FetchResult
    branch: str
    old: bytes | None
    new: bytes
    status: str  # "fast-forward", "up-to-date", "created"

    def to_json(self) -> dict[str, Any]:
        return {
            "branch": self.branch,
            "old": self.old.hex() if self.old else None,
            "new": self.new.hex(),
            "status": self.status,
            "fetch": self.fetch.to_json(),
        }


def do_pull(
    repo: Repository, remote: str, branch: str, *, phase: Phase | None = None
) -> PullResult:
    """fetch, then fast-forward local BRANCH to REMOTE/BRANCH; refuses anything else."""
    check_ref_name(branch)
    res = do_fetch(repo, remote, phase=phase)
    theirs = repo.read_ref(f"{REMOTES}{remote}/{branch}")
    if theirs is None:
        raise MergestoreError(f"pull: remote {remote} has no branch {branch!r}")
    ours = repo.read_ref(HEADS + branch)
    if ours == theirs:
        return PullResult(res, branch, ours, theirs, "up-to-date")
    if ours is not None and not is_ancestor(repo.get_commit, ours, theirs):
        raise MergestoreError(
            f"pull: {branch} and {remote}/{branch} have diverged, not a fast-forward; "
            f"merge {remote}/{branch} into {branch} yourself"
        )
    repo.update_refs(
        [RefUpdate(HEADS + branch, theirs, f"pull {remote} {branch}: fast-forward", old=ours)]
    )
    return PullResult(res, branch, ours, theirs, "created" if ours is None else "fast-forward")


def do_clone(
    url: str,
    path: str | os.PathLike[str],
    *,
    lazy: bool = False,
    name: str = "origin",
    phase: Phase | None = None,
) -> tuple[Repository, FetchResult]:
    """A new store at PATH with URL as remote `name`, fetched (or lazily: no blocks).

    Re-running a clone that was interrupted resumes it: the store it began is reused when its
    `name` remote is the same URL and it has no branch yet."""
    parsed = parse_url(url)
    target = Path(path)
    if (target / CONFIG_FILE).is_file():
        repo = Repository.open(target)
        spec = load_remotes(target).get(name)
        if spec is None or spec.url != parsed or repo.list_refs(HEADS):
            repo.close()
            raise MergestoreError(f"{target}: a store already exists here")
    else:
        if target.exists() and any(target.iterdir()):
            raise MergestoreError(f"{target}: exists and is not empty")
        marker = ObjectClient(parsed, name).get(FORMAT_KEY)
        block_size = parse_format_marker(marker)["block_size"] if marker else None
        cfg = StoreConfig(block_size=block_size) if block_size else StoreConfig()
        repo = Repository.init(target, cfg)
        add_remote(target, name, parsed.text, lazy=lazy)
    try:
        attach(repo)
        res = fetch(RemoteSession.open(repo, name), lazy=lazy, phase=phase)
        branches = {k[len(HEADS) :]: v for k, v in res.remote_refs.items() if k.startswith(HEADS)}
        if branches:
            default = "main" if "main" in branches else sorted(branches)[0]
            repo.update_refs(
                [
                    RefUpdate(
                        HEADS + default, branches[default], f"clone: from {mask_url(parsed.text)}"
                    )
                ]
            )
            repo.set_head(HEADS + default)
    except BaseException:
        repo.close()
        raise
    return repo, res


def cache_root() -> Path:
    env = os.environ.get("MERGESTORE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mergestore"


def open_view(url: str) -> Repository:
    """A read-only view of a remote: a lazy clone kept in the cache, refreshed on open."""
    parsed = parse_url(url)
    where = cache_root() / "views" / blake3.blake3(parsed.text.encode()).hexdigest()[:24]
    if (where / CONFIG_FILE).is_file() and load_remotes(where).get("origin") is not None:
        repo = Repository.open(where)
        try:
            attach(repo)
            fetch(RemoteSession.open(repo, "origin"), lazy=True)
            theirs = {k: v for k, v in repo.list_refs(REMOTES + "origin/").items()}
            main = theirs.get(REMOTES + "origin/main")
            if main is not None and repo.read_ref(HEADS + "main") != main:
                repo.update_refs([RefUpdate(HEADS + "main", main, "view: refresh")])
        except BaseException:
            repo.close()
            raise
    else:
        where.parent.mkdir(parents=True, exist_ok=True)
        repo, _res = do_clone(parsed.text, where, lazy=True)
    repo.read_only = (
        f"--store {mask_url(parsed.text)} is a read-only view of a remote; clone it to change it"
    )
    return repo
