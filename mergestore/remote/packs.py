"""Moving blocks in their stored form: upload packs, read and verify ranges of remote packs.

The two calls other layers build on (the Ray executor among them):

    upload_pack(client, repo, block_ids) -> UploadedPack
        one immutable pack of those blocks' stored bytes (never re-encoded), then its index;
    read_stored(client, pack, [(offset, length), ...]) -> [bytes-like, ...]
        stored bytes of blocks in a remote pack, by (pack name, offset, length), coalesced
        ranged GETs; unverified, so check them with verify_stored before use.

A pack's name is the blake3 of its index, so uploading the same blocks again writes the same
names; the index is written after its pack, so an index on the remote means a whole pack.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from mergestore.fast_dataclass import dataclass
from mergestore.remote.client import ObjectClient
from mergestore.remote.layout import (
    IdxEntry,
    PackIndex,
    RemoteCorruptionError,
    content_name,
    encode_index,
    entry_header,
    idx_key,
    pack_key,
)
from mergestore.store import codecs, faults
from mergestore.store.blocks import block_id
from mergestore.store.packs import PACK_MAGIC
from mergestore.store.repo import Repository

Advance = Callable[[int], None]


def pack_target() -> int:
    """Bytes per uploaded pack: a killed push resends at most one pack's worth."""
    return int(os.environ.get("MERGESTORE_REMOTE_PACK_BYTES", str(256 << 20)))


def fetch_chunk() -> int:
    """Bytes fetched, verified and published locally at a time (a killed fetch keeps the rest)."""
    return int(os.environ.get("MERGESTORE_REMOTE_FETCH_BYTES", str(64 << 20)))


@dataclass(frozen=True)
class UploadedPack:
    """A pack a push made sure is on the remote."""

    name: str
    index: bytes
    pack_bytes: int
    blocks: int
    sent: bool  # False when the pack was already on the remote (a resumed push)


def plan_index(repo: Repository, block_ids: Sequence[bytes]) -> PackIndex:
    """The index of a pack holding these blocks' stored bytes, in this order."""
    locs = repo.block_locations(block_ids)
    entries = []
    off = len(PACK_MAGIC)
    for bid in block_ids:
        loc = locs.get(bid)
        if loc is None:
            raise RemoteCorruptionError(f"block {bid.hex()[:12]} is missing from the store")
        off += len(entry_header(bid, 0))
        entries.append(
            IdxEntry(bid, off, loc.length, loc.raw_len, repo.codec_spec(loc.codec), loc.ref)
        )
        off += loc.length
    return PackIndex(off, tuple(entries))


def _pack_chunks(repo: Repository, idx: PackIndex, advance: Advance | None) -> Iterator[bytes]:
    yield PACK_MAGIC
    for e in idx.entries:
        loc, _spec, payload = repo.read_stored(e.block)
        if loc.length != e.length:
            raise RemoteCorruptionError(f"block {e.block.hex()[:12]} changed while pushing")
        yield entry_header(e.block, e.length) + payload
        if advance:
            advance(len(payload))
        faults.kill_point("remote-pack-entry")


def upload_pack(
    client: ObjectClient,
    repo: Repository,
    block_ids: Sequence[bytes],
    advance: Advance | None = None,
) -> UploadedPack:
    """Upload one pack of these blocks (stored bytes as they are), then its index."""
    idx = plan_index(repo, block_ids)
    data = encode_index(idx)
    name = content_name(data)
    sent = client.exists(pack_key(name)) != idx.pack_size
    if sent:
        client.put_stream(pack_key(name), _pack_chunks(repo, idx, advance), idx.pack_size)
    elif advance:
        advance(sum(e.length for e in idx.entries))
    client.put_new(idx_key(name), data)
    return UploadedPack(name, data, idx.pack_size, len(block_ids), sent)


def split_packs(repo: Repository, block_ids: Iterable[bytes], target: int) -> list[list[bytes]]:
    """Group blocks into packs of about `target` stored bytes, in local pack order (reads
    sequentially), each block's delta reference in an earlier or the same pack."""
    locs = repo.block_locations(block_ids)
    order = sorted(locs, key=lambda b: (locs[b].ref is not None, locs[b].pack, locs[b].offset))
    packs: list[list[bytes]] = [[]]
    size = 0
    for bid in order:
        if size >= target and packs[-1]:
            packs.append([])
            size = 0
        packs[-1].append(bid)
        size += locs[bid].length
    return [p for p in packs if p]


def read_stored(
    client: ObjectClient, pack: str, ranges: Sequence[tuple[int, int]]
) -> list[memoryview]:
    """Stored bytes at (offset, length) ranges of remote pack `pack` (unverified)."""
    bufs = client.get_ranges(pack_key(pack), [o for o, _ in ranges], [n for _, n in ranges])
    out = [memoryview(b) for b in bufs]
    for (o, n), b in zip(ranges, out, strict=True):
        if b.nbytes != n:
            raise RemoteCorruptionError(
                f"remote {client.name}: pack {pack[:16]} gave {b.nbytes} bytes at {o}, not {n}"
            )
    return out


def verify_stored(
    repo: Repository, remote: str, pack: str, e: IdxEntry, payload: memoryview
) -> None:
    """Decode a fetched payload and check it against its block id (the reference must be
    in the store already)."""
    try:
        ref_raw = repo.read_block(e.ref) if e.ref is not None else None
        out = np.empty(e.raw_len, dtype=np.uint8)
        codecs.decode_block_into(e.spec, payload, out, reference=ref_raw)
        ok = block_id(out) == e.block
    except Exception as ex:  # a hostile payload may fail anywhere in a decoder
        raise RemoteCorruptionError(
            f"remote {remote}: block {e.block.hex()[:12]} in pack {pack[:16]} does not decode "
            f"({type(ex).__name__}: {str(ex)[:120]})"
        ) from None
    if not ok:
        raise RemoteCorruptionError(
            f"remote {remote}: block {e.block.hex()[:12]} in pack {pack[:16]} does not match "
            "its id (corrupt or tampered)"
        )


def _chunks(entries: list[IdxEntry], target: int) -> Iterator[list[IdxEntry]]:
    """Runs of entries of about `target` stored bytes (remote/worker_output.py's reads)."""
    cur: list[IdxEntry] = []
    size = 0
    for e in entries:
        cur.append(e)
        size += e.length
        if size >= target:
            yield cur
            cur, size = [], 0
    if cur:
        yield cur
