"""fetch: bring what a remote's refs reach and this store lacks; remote-tracking refs last.

Blocks first (each verified by its id, published a chunk at a time, so a killed fetch keeps
what it finished), then objects, statistics and refs in one local transaction. A lazy fetch
records where the missing blocks sit on the remote instead of downloading them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import field

from mergestore.errors import CorruptionError
from mergestore.fast_dataclass import dataclass
from mergestore.remote.client import ObjectClient
from mergestore.remote.download import download_blocks
from mergestore.remote.layout import (
    FORMAT_KEY,
    REFS,
    RemoteCorruptionError,
    check_remote_ref,
    decode_ref,
    parse_format_marker,
)
from mergestore.remote.session import RemoteSession
from mergestore.remote.walk import closure
from mergestore.store import faults
from mergestore.store.index import DeltaStats
from mergestore.store.promised import PromisedEntry, record_promised
from mergestore.store.refs import HEADS, REMOTES, TAGS
from mergestore.store.repo import RefUpdate

Phase = Callable[[str, int | None], Callable[[int], None] | None]


@dataclass
class FetchResult:
    """What `fetch` downloaded and which remote-tracking refs moved."""

    remote: str
    updated: dict[str, tuple[bytes | None, bytes]] = field(default_factory=dict)
    remote_refs: dict[str, bytes] = field(default_factory=dict)
    objects: int = 0
    blocks: int = 0
    block_bytes: int = 0
    promised: int = 0
    metadata_bytes: int = 0
    lazy: bool = False
    block_size: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "remote": self.remote,
            "lazy": self.lazy,
            "updated": {
                k: {"old": o.hex() if o else None, "new": n.hex()}
                for k, (o, n) in self.updated.items()
            },
            "objects": self.objects,
            "blocks": self.blocks,
            "block_bytes": self.block_bytes,
            "blocks_left_on_remote": self.promised,
            "metadata_bytes": self.metadata_bytes,
        }


def read_remote_refs(client: ObjectClient) -> dict[str, bytes]:
    """Every branch and tag on the remote, names and values validated."""
    out: dict[str, bytes] = {}
    for key, size in client.list(REFS):
        check_remote_ref(key)
        if size > 200:
            raise RemoteCorruptionError(f"remote {client.name}: ref {key} is too large")
        data = client.get(key)
        if data is not None:  # deleted while listing
            out[key] = decode_ref(key, data)
    return out


def fetch(
    session: RemoteSession, *, lazy: bool | None = None, phase: Phase | None = None
) -> FetchResult:
    repo, client, state, name = session.repo, session.client, session.state, session.name
    lazy = session.spec.lazy if lazy is None else lazy
    res = FetchResult(remote=name, lazy=lazy)
    marker = client.get(FORMAT_KEY)
    refs = read_remote_refs(client)
    if marker is None:
        if refs:
            raise RemoteCorruptionError(f"remote {name}: refs but no {FORMAT_KEY}")
        return res  # an empty remote
    res.block_size = parse_format_marker(marker)["block_size"]
    res.remote_refs = refs
    res.metadata_bytes += state.sync(client, phase("fetching indexes", None) if phase else None)
    clos = closure(
        refs.values(),
        state.objects.get,
        lambda oid: repo.get_object_bytes(oid) is not None,
        f"remote {name}",
    )
    if lazy:
        res.promised = _promise(session, clos.blocks)
    else:
        want = [b for b in clos.blocks if not repo.has_block(b)]
        total = sum(state.blocks[b][1].length for b in want if b in state.blocks)
        advance = phase("fetching blocks", total) if phase else None
        res.blocks, res.block_bytes = download_blocks(client, repo, state, want, advance)
    updates = _ref_updates(repo, name, refs)
    faults.kill_point("remote-before-publish")
    with repo.writer() as w:
        for oid, data in clos.objects.items():
            w.put_object_bytes(oid, data)
        for key, value in state.stats.items():
            if key[:32] in clos.blocks:
                try:
                    DeltaStats.decode(value)
                except CorruptionError:
                    raise RemoteCorruptionError(
                        f"remote {name}: a statistics entry is malformed"
                    ) from None
                w.stats.setdefault(key, value)
        w.publish(updates)
    res.objects = len(clos.objects)
    res.updated = {
        u.name: (u.old if isinstance(u.old, bytes) else None, u.new) for u in updates if u.new
    }
    return res


def _promise(session: RemoteSession, blocks: set[bytes]) -> int:
    """Record where the blocks this store lacks sit on the remote (lazy clones)."""
    repo, state = session.repo, session.state
    by_pack: dict[str, list[PromisedEntry]] = defaultdict(list)
    seen: set[bytes] = set()
    frontier = [b for b in blocks if not repo.has_block(b)]
    while frontier:
        bid = frontier.pop()
        if bid in seen:
            continue
        seen.add(bid)
        where = state.blocks.get(bid)
        if where is None:
            raise RemoteCorruptionError(
                f"remote {session.name}: block {bid.hex()[:12]} is used but no pack holds it"
            )
        pack, e = where
        by_pack[pack].append(PromisedEntry(bid, e.offset, e.length, e.raw_len, e.spec, e.ref))
        if e.ref is not None and not repo.has_block(e.ref):
            frontier.append(e.ref)
    n = 0
    for pack, entries in sorted(by_pack.items()):
        n += record_promised(repo, session.name, pack, entries)
    return n


def _ref_updates(repo, name: str, refs: dict[str, bytes]) -> list[RefUpdate]:  # type: ignore[no-untyped-def]
    out = []
    for key, cid in sorted(refs.items()):
        if key.startswith(HEADS):
            local = REMOTES + name + "/" + key[len(HEADS) :]
            old = repo.read_ref(local)
            if old != cid:
                out.append(RefUpdate(local, cid, f"fetch {name}", old=old))
        elif key.startswith(TAGS) and repo.read_ref(key) is None:
            out.append(RefUpdate(key, cid, f"fetch {name}: tag", old=None))
    return out
