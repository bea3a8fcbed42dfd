"""One store talking to one of its remotes: the client and the cached view of the remote."""

from __future__ import annotations

from mergestore.fast_dataclass import dataclass
from mergestore.remote.client import ObjectClient
from mergestore.remote.config import RemoteSpec, get_remote
from mergestore.remote.state import RemoteState
from mergestore.store.repo import Repository


@dataclass
class RemoteSession:
    """A store and one of its remotes, opened for a transfer."""

    repo: Repository
    spec: RemoteSpec
    client: ObjectClient
    state: RemoteState

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def open(cls, repo: Repository, name: str) -> RemoteSession:
        spec = get_remote(repo.path, name)
        client = ObjectClient(spec.url, name)
        return cls(repo, spec, client, RemoteState(repo.path, name))
