"""The block sources of a lazy clone: one ranged GET per promised block (or span) read.

`RemoteBlockSource` is attached to a Repository (its `block_source`) when the store has
remotes; the store asks it for the stored bytes of a block it only knows the remote location
of, checks them against the block's id and keeps them in a local pack (store/promised.py).
`UrlBlockSource` serves a process that has no store at all, a Ray worker of a lazy clone's
merge: remotes by URL, ranged GETs through remote.packs.read_stored; the worker checks every
block against its id. Clients are made on first use, so nothing touches the network unless a
promised block is read.
"""

from __future__ import annotations

import threading

from mergestore.errors import MergestoreError
from mergestore.remote.client import ObjectClient
from mergestore.remote.config import load_remotes
from mergestore.remote.layout import name_of_key, pack_key
from mergestore.remote.packs import read_stored
from mergestore.remote.url import RemoteURL
from mergestore.store.repo import Repository


def _checked_key(pack: str) -> str:
    key = pack_key(pack)
    if name_of_key(key, "packs/", ".pack") != pack:
        raise MergestoreError(f"malformed remote pack name {pack[:80]!r}")
    return key


class RemoteBlockSource:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._clients: dict[str, ObjectClient] = {}
        self._lock = threading.Lock()

    def _client(self, remote: str) -> ObjectClient:
        with self._lock:
            client = self._clients.get(remote)
            if client is None:
                spec = load_remotes(self.repo.path).get(remote)
                if spec is None:
                    raise MergestoreError(
                        f"blocks of this lazy clone live on remote {remote!r}, which is gone "
                        "(add it back with `mergestore remote add`)"
                    )
                client = self._clients[remote] = ObjectClient(spec.url, remote)
        return client

    def fetch(self, remote: str, pack: str, offset: int, length: int) -> bytes:
        return self._client(remote).get_range(_checked_key(pack), offset, length)


class UrlBlockSource:
    """Ranges of remote packs for a process without a store (a Ray worker): remotes by URL,
    credentials from this process's environment, as ObjectClient takes them."""

    def __init__(self, urls: dict[str, RemoteURL]) -> None:
        self.urls = urls
        self._clients: dict[str, ObjectClient] = {}
        self._lock = threading.Lock()

    def fetch(self, remote: str, pack: str, offset: int, length: int) -> memoryview:
        _checked_key(pack)
        with self._lock:
            client = self._clients.get(remote)
            if client is None:
                url = self.urls.get(remote)
                if url is None:
                    raise MergestoreError(f"remote {remote!r} was not given to this worker")
                client = self._clients[remote] = ObjectClient(url, remote)
        return read_stored(client, pack, [(offset, length)])[0]


def attach(repo: Repository) -> None:
    """Give a store with remotes its block source (no network until a block is needed)."""
    if repo.block_source is None and (repo.path / "remotes.json").is_file():
        repo.block_source = RemoteBlockSource(repo)
