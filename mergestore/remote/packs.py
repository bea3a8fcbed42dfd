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
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

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
from mergestore.remote.state import RemoteState
from mergestore.remote.verify import check_blocks
from mergestore.store import codecs, faults
from mergestore.store.blocks import block_id
from mergestore.store.codecs import Encoded
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


def download_blocks(
    client: ObjectClient,
    repo: Repository,
    state: RemoteState,
    wanted: Iterable[bytes],
    advance: Advance | None = None,
) -> tuple[int, int]:
    """Fetch these blocks (and their delta references the store lacks) into local packs,
    each verified by its id first; published a chunk at a time. Returns (blocks, bytes)."""
    need: dict[bytes, tuple[str, IdxEntry]] = {}
    for bid in wanted:
        if bid in need or repo.has_block(bid):
            continue
        where = state.blocks.get(bid)
        if where is None:
            raise RemoteCorruptionError(
                f"remote {state.name}: block {bid.hex()[:12]} is used but no pack holds it"
            )
        need[bid] = where
        ref = where[1].ref
        if ref is not None and ref not in need and not repo.has_block(ref):
            ref_where = state.blocks.get(ref)
            if ref_where is None:
                raise RemoteCorruptionError(
                    f"remote {state.name}: reference block {ref.hex()[:12]} is missing"
                )
            need[ref] = ref_where
    # References first: a delta is verified by decoding it against its reference.
    first = {b: w for b, w in need.items() if w[1].ref is None}
    second = {b: w for b, w in need.items() if w[1].ref is not None}
    n = nbytes = 0
    for phase in (first, second):
        tasks = [
            (pack, chunk)
            for pack, entries in _by_pack(phase).items()
            for chunk in _chunks(entries, fetch_chunk())
        ]
        if not tasks:
            continue
        # Three stages overlap: the next chunk downloads while this one is verified and the
        # previous one is written and published (in that order, each after its check).
        with (
            ThreadPoolExecutor(1, thread_name_prefix="mergestore-fetch") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="mergestore-fetch-write") as writer,
        ):
            ahead = pool.submit(_get_chunk, client, *tasks[0])
            pending: Future[int] | None = None
            pending_ids: set[bytes] = set()
            for i, (pack, chunk) in enumerate(tasks):
                bufs = ahead.result()
                if i + 1 < len(tasks):
                    ahead = pool.submit(_get_chunk, client, *tasks[i + 1])
                if pending is not None and any(e.ref in pending_ids for e in chunk):
                    nbytes += pending.result()  # a reference still being written: wait for it
                    pending = None
                check_blocks(repo, state.name, pack, chunk, bufs)
                if pending is not None:
                    nbytes += pending.result()
                pending = writer.submit(_publish_chunk, repo, chunk, bufs, advance)
                pending_ids = {e.block for e in chunk}
                n += len(chunk)
            assert pending is not None
            nbytes += pending.result()
    return n, nbytes


def _by_pack(need: dict[bytes, tuple[str, IdxEntry]]) -> dict[str, list[IdxEntry]]:
    out: dict[str, list[IdxEntry]] = defaultdict(list)
    for pack, e in need.values():
        out[pack].append(e)
    for entries in out.values():
        entries.sort(key=lambda e: e.offset)
    return dict(sorted(out.items()))


def _chunks(entries: list[IdxEntry], target: int) -> Iterator[list[IdxEntry]]:
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


def _get_chunk(client: ObjectClient, pack: str, entries: list[IdxEntry]) -> list[memoryview]:
    return read_stored(client, pack, [(e.offset, e.length) for e in entries])


def _publish_chunk(
    repo: Repository, entries: list[IdxEntry], bufs: list[memoryview], advance: Advance | None
) -> int:
    """Write verified payloads as they were stored, and publish them in one transaction."""
    with repo.writer() as w:
        for e, payload in zip(entries, bufs, strict=True):
            w.add_encoded(e.block, e.raw_len, Encoded(e.spec, payload, e.ref))
        w.publish()
    got = sum(e.length for e in entries)
    if advance:
        advance(got)
    faults.kill_point("remote-after-chunk")
    return got
