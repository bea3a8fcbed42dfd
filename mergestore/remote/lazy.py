"""The block source of a lazy clone: one ranged GET per promised block the store reads.

Attached to a Repository (its `block_source`) when the store has remotes; the store asks it
for the stored bytes of a block it only knows the remote location of, checks them against
the block's id and keeps them in a local pack (store/promised.py). Clients are made on first
use, so a store that never reads a promised block never touches the network.
"""

from __future__ import annotations

import threading

from mergestore.errors import MergestoreError
from mergestore.remote.client import ObjectClient
from mergestore.remote.config import load_remotes
from mergestore.remote.layout import name_of_key, pack_key
from mergestore.store.repo import Repository


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
        key = pack_key(pack)
        if name_of_key(key, "packs/", ".pack") != pack:
            raise MergestoreError(f"malformed remote pack name {pack[:80]!r}")
        return self._client(remote).get_range(key, offset, length)


def attach(repo: Repository) -> None:
    """Give a store with remotes its block source (no network until a block is needed)."""
    if repo.block_source is None and (repo.path / "remotes.json").is_file():
        repo.block_source = RemoteBlockSource(repo)
