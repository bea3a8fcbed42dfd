"""Blocks for workers that never open the index: places to read from, packs of their own.

A distributed merge (merge/ray_executor.py) runs tensors on workers that reach the store's
packs (a shared path) but not its LMDB index. This module is the store's side of that:

- `block_places(repo, ids)`: the driver looks blocks up once and sends each worker their
  places (pack, offset, length, raw length, codec spec, delta reference): data stays put.
- `PackBlockSource`: a worker reads blocks straight from the packs by those places (pread, in
  pack order through store.reader.BlockReader), decodes them and verifies each against its
  blake3 id. It offers the engine the reading calls of a Repository. In a lazy clone, places
  in promised packs (store/promised.py: blocks still on an object-store remote) are read with
  ranged GETs from the remote pack through a `RemotePacks` (one GET per coalesced span).
- `remote_slots(repo, places)`: the driver names the remote packs those places point into.
- `WorkerPacks`: a worker appends its output blocks to fresh packs of its own, in the store's
  pack format, fsyncs them and names what it wrote (`WrittenBlock`).
- `adopt_blocks(session, written)`: the driver checks each written block against its entry
  header in the pack and adds it to a write session, whose publish indexes it in the same
  transaction as the commit. Packs a worker wrote that are never adopted (a killed driver, a
  retried task) are named by no index entry; `gc` removes them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mergestore.errors import CorruptionError
from mergestore.fast_dataclass import dataclass
from mergestore.store import codecs
from mergestore.store.blocks import raw_matches
from mergestore.store.packs import ENTRY_HEADER, ENTRY_MAGIC, PackAppender, PackReader, ReadMeter
from mergestore.store.promised import PROMISED_PACK_BASE, BlockSource, slot_name
from mergestore.store.reader import BlockReader
from mergestore.store.repo import PendingBlock, Repository, StoreConfig, WriteSession


@dataclass(frozen=True)
class BlockPlace:
    """Where a block's stored payload is and how to decode it: all a reader needs."""

    pack: int
    offset: int
    length: int  # stored bytes
    raw_len: int
    codec: str  # codec chain spec
    ref: bytes | None = None  # delta reference block
    check: int | None = None  # blocks.raw_check of the raw bytes (None: check blake3)


def block_places(repo: Repository, ids: Iterable[bytes]) -> dict[bytes, BlockPlace]:
    """Places of the blocks and of their delta references (missing blocks are left out)."""
    locs = repo.block_locations(ids)
    refs = [loc.ref for loc in locs.values() if loc.ref is not None and loc.ref not in locs]
    locs.update(repo.block_locations(refs))
    return {
        bid: BlockPlace(
            loc.pack,
            loc.offset,
            loc.length,
            loc.raw_len,
            repo.codec_spec(loc.codec),
            loc.ref,
            loc.check,
        )  # fmt: skip
        for bid, loc in locs.items()
    }


def remote_slots(repo: Repository, places: Iterable[BlockPlace]) -> dict[int, tuple[str, str]]:
    """(remote, pack name) of every promised pack these places point into, by slot."""
    slots = {p.pack - PROMISED_PACK_BASE for p in places if p.pack >= PROMISED_PACK_BASE}
    return {slot: slot_name(repo, slot) for slot in sorted(slots)}


@dataclass(frozen=True)
class RemotePacks:
    """How a worker reaches promised packs: their (remote, pack name) by slot, and a
    BlockSource (the remote layer's) that returns ranges of them."""

    slots: dict[int, tuple[str, str]]
    source: BlockSource


class _CachedPacks:
    """A PackReader whose reads are counted and, when `cache_bytes` > 0, kept in an LRU keyed
    by (pack, offset, length): the same span read again (a sweep's next merge of the same
    tensors) comes from memory. Promised packs are read through `remote` (ranged GETs)."""

    def __init__(self, pack_dir: Path, cache_bytes: int, remote: RemotePacks | None = None):
        self._packs = PackReader(pack_dir)
        self.remote = remote
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()
        self.bytes_read = 0  # bytes really read from packs, local or remote (no cache hits)
        self.bytes_fetched = 0  # of which from remote packs
        self.cache_hits = 0

    def read(self, pack_id: int, offset: int, length: int) -> bytes:
        key = (pack_id, offset, length)
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return data
        remote = pack_id >= PROMISED_PACK_BASE
        data = (
            self._fetch(pack_id, offset, length)
            if remote
            else self._packs.read(pack_id, offset, length)
        )
        with self._lock:
            self.bytes_read += len(data)
            if remote:
                self.bytes_fetched += len(data)
            if self.cache_bytes and len(data) <= self.cache_bytes and key not in self._cache:
                self._cache[key] = data
                self._cached += len(data)
                while self._cached > self.cache_bytes:
                    _k, old = self._cache.popitem(last=False)
                    self._cached -= len(old)
        return data

    def _fetch(self, pack_id: int, offset: int, length: int) -> bytes:
        """Bytes of a promised pack, by one ranged GET (unverified: the caller checks ids)."""
        name = self.remote.slots.get(pack_id - PROMISED_PACK_BASE) if self.remote else None
        if name is None or self.remote is None:
            raise CorruptionError(f"pack {pack_id} is a remote pack this task was not given")
        data = self.remote.source.fetch(name[0], name[1], offset, length)
        if len(data) != length:
            raise CorruptionError(
                f"remote {name[0]}: pack {name[1][:12]} gave {len(data)} bytes at {offset}, "
                f"not {length}"
            )
        return data

    def advise(self, pack_id: int, offset: int, length: int) -> None:
        if pack_id < PROMISED_PACK_BASE:
            self._packs.advise(pack_id, offset, length)

    def close(self) -> None:
        self._packs.close()


class PackBlockSource:
    """Reads blocks from the packs at the places it was given; no index.

    It offers what the engine and store.reader.BlockReader read through on a Repository
    (block_locations, reader, read_block, read_block_into, decode_verified, packs, config),
    with each block's codec spec taken from its place. Every block is checked against its
    blake3 id. `cache_bytes`: see _CachedPacks.
    """

    def __init__(
        self,
        pack_dir: Path,
        places: dict[bytes, BlockPlace],
        config: StoreConfig,
        cache_bytes: int = 0,
        remote: RemotePacks | None = None,
    ) -> None:
        self.places = places
        self.config = config
        self.packs = _CachedPacks(pack_dir, cache_bytes, remote)

    @property
    def pack_bytes_read(self) -> int:
        return self.packs.bytes_read

    @property
    def bytes_fetched(self) -> int:
        return self.packs.bytes_fetched

    @property
    def cache_hits(self) -> int:
        return self.packs.cache_hits

    def block_locations(self, ids: Iterable[bytes]) -> dict[bytes, BlockPlace]:
        """Places of the blocks this source was given (others are left out: missing)."""
        return {bid: self.places[bid] for bid in ids if bid in self.places}

    def reader(self, **options: int) -> BlockReader:
        return BlockReader(self, **options)  # type: ignore[arg-type]  # a Repository's reads

    def read_span(self, pack: int, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of a pack, unverified (the block reader checks each
        block in the span against its id), as Repository.read_span gives them."""
        return self.packs.read(pack, start, length)

    def decode_verified(
        self,
        bid: bytes,
        loc: BlockPlace,
        payload: bytes | memoryview,
        reference: bytes | memoryview | None,
        *,
        out: np.ndarray | None = None,
        view: bool = False,
        full: bool = False,
    ) -> bytes | memoryview:
        try:
            if out is not None:
                if len(out) != loc.raw_len:
                    raise CorruptionError(f"holds {loc.raw_len} bytes, not {len(out)}")
                codecs.decode_block_into(loc.codec, payload, out, reference=reference)
                raw: bytes | memoryview = memoryview(out)
            else:
                raw = codecs.decode_block(loc.codec, payload, reference=reference, view=view)
        except (CorruptionError, ValueError) as e:
            raise CorruptionError(f"block {bid.hex()[:12]} is corrupt ({e})") from None
        if not raw_matches(bid, raw, loc.raw_len, loc.check, full=full):
            raise CorruptionError(f"block {bid.hex()[:12]} is corrupt (hash mismatch)")
        return raw

    def _payload(
        self,
        bid: bytes,
        meter: ReadMeter | None,
        reference: bytes | memoryview | None,
        location: BlockPlace | None,
    ) -> tuple[BlockPlace, bytes, bytes | memoryview | None]:
        place = location or self.places.get(bid)
        if place is None:
            raise CorruptionError(f"block {bid.hex()[:12]} is missing from the store")
        payload = self.packs.read(place.pack, place.offset, place.length)
        if meter is not None:
            meter.add(place.length)
        ref_raw = reference
        if place.ref is not None and ref_raw is None:
            ref_raw = self.read_block(place.ref, meter)
        return place, payload, ref_raw

    def read_block(
        self,
        bid: bytes,
        meter: ReadMeter | None = None,
        *,
        reference: bytes | memoryview | None = None,
        location: BlockPlace | None = None,
        view: bool = False,
    ) -> bytes:
        place, payload, ref_raw = self._payload(bid, meter, reference, location)
        return self.decode_verified(bid, place, payload, ref_raw, view=view)  # type: ignore[return-value]

    def read_block_into(
        self,
        bid: bytes,
        out: np.ndarray,
        meter: ReadMeter | None = None,
        *,
        reference: bytes | memoryview | None = None,
        location: BlockPlace | None = None,
    ) -> None:
        place, payload, ref_raw = self._payload(bid, meter, reference, location)
        self.decode_verified(bid, place, payload, ref_raw, out=out)

    def close(self) -> None:
        self.packs.close()


@dataclass(frozen=True)
class WrittenBlock:
    """A block a worker appended to a pack of its own."""

    id: bytes
    place: BlockPlace


class WorkerPacks:
    """A worker's output: blocks appended to fresh packs (the write-session calls StoreSink
    uses: known, is_delta, add_encoded). Blocks the worker was given places for are in the
    store already and are not written again."""

    def __init__(self, pack_dir: Path, config: StoreConfig, places: dict[bytes, BlockPlace]):
        self.config = config  # StoreSink reads zstd_level and delta_codecs from here
        self.places = places
        self._appender = PackAppender(pack_dir, fresh=True)
        self.written: dict[bytes, WrittenBlock] = {}
        self.bytes_written = 0
        self._lock = threading.Lock()

    def known(self, bid: bytes) -> bool:
        return bid in self.places or bid in self.written

    def is_delta(self, bid: bytes) -> bool:
        place = self.places.get(bid)
        return place is None or place.ref is not None  # unknown: never a delta reference

    def add_encoded(self, bid: bytes, raw_len: int, enc: codecs.Encoded, check: int | None) -> bool:
        with self._lock:
            if self.known(bid):
                return False
            pack, offset = self._appender.append(bid, enc.buffers)
            n = enc.nbytes
            place = BlockPlace(pack, offset, n, raw_len, enc.spec, enc.ref, check)
            self.written[bid] = WrittenBlock(bid, place)
            self.bytes_written += n
            return True

    def finish(self) -> list[WrittenBlock]:
        """fsync the packs and close them; the blocks written, in order."""
        try:
            self._appender.sync()
        finally:
            self._appender.close()
        return list(self.written.values())

    def abort(self) -> None:
        self._appender.close()  # an unreferenced pack: gc removes it


def adopt_blocks(session: WriteSession, written: Iterable[WrittenBlock]) -> int:
    """Check each block a worker wrote against its entry header in the pack, and add it to
    the session (indexed by its publish). Returns the stored bytes adopted."""
    repo = session.repo
    adopted = 0
    h = ENTRY_HEADER.size
    for wb in written:
        p = wb.place
        if p.offset < h:
            raise CorruptionError(f"block {wb.id.hex()[:12]}: offset {p.offset} is in a header")
        head = repo.packs.read(p.pack, p.offset - h, h)
        magic, hid, length = ENTRY_HEADER.unpack(head)
        if magic != ENTRY_MAGIC or hid != wb.id or length != p.length:
            raise CorruptionError(
                f"block {wb.id.hex()[:12]} does not match its entry in pack {p.pack}"
            )
        if session.known(wb.id):
            continue  # stored already (or by another task): these bytes stay dead
        session.blocks[wb.id] = PendingBlock(
            p.codec, p.pack, p.offset, p.length, p.raw_len, p.ref, p.check
        )
        session.bytes_written += p.length
        adopted += p.length
    return adopted
