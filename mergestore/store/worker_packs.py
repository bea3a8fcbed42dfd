"""Blocks for workers that never open the index: places to read from, packs of their own.

A distributed merge (merge/ray_executor.py) runs tensors on workers that reach the store's
packs (a shared path) but not its LMDB index. This module is the store's side of that:

- `block_places(repo, ids)`: the driver looks blocks up once and sends each worker their
  places (pack, offset, length, raw length, codec spec, delta reference): data stays put.
- `PackBlockSource`: a worker reads blocks straight from the packs by those places (pread),
  decodes them and verifies each against its blake3 id. It offers the engine the same reading
  calls as Repository (block_locations, read_block, read_block_into).
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergestore.errors import CorruptionError
from mergestore.store import codecs
from mergestore.store.blocks import block_id
from mergestore.store.packs import ENTRY_HEADER, ENTRY_MAGIC, PackAppender, PackReader, ReadMeter
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


def block_places(repo: Repository, ids: Iterable[bytes]) -> dict[bytes, BlockPlace]:
    """Places of the blocks and of their delta references (missing blocks are left out)."""
    locs = repo.block_locations(ids)
    refs = [loc.ref for loc in locs.values() if loc.ref is not None and loc.ref not in locs]
    locs.update(repo.block_locations(refs))
    return {
        bid: BlockPlace(
            loc.pack, loc.offset, loc.length, loc.raw_len, repo.codec_spec(loc.codec), loc.ref
        )
        for bid, loc in locs.items()
    }


class PackBlockSource:
    """Reads blocks from the packs at the places it was given; no index.

    `owners` names, per block, the tensor that needs it, for one-line errors. Payloads read are
    kept in an LRU of at most `cache_bytes` (0: none), so several merges run in one task that
    need the same blocks (a sweep's shared base and experts) read them once.
    """

    def __init__(
        self,
        pack_dir: Path,
        places: dict[bytes, BlockPlace],
        owners: dict[bytes, str] | None = None,
        cache_bytes: int = 0,
    ) -> None:
        self.packs = PackReader(pack_dir)
        self.places = places
        self.owners = owners or {}
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()
        self.pack_bytes_read = 0  # bytes really read from packs (cache hits excluded)
        self.cache_hits = 0

    def _what(self, bid: bytes) -> str:
        owner = self.owners.get(bid)
        return f"tensor {owner!r}: block {bid.hex()[:12]}" if owner else f"block {bid.hex()[:12]}"

    def block_locations(self, ids: Iterable[bytes]) -> dict[bytes, BlockPlace]:
        out = {}
        for bid in ids:
            place = self.places.get(bid)
            if place is None:
                raise CorruptionError(f"{self._what(bid)} is missing from the store")
            out[bid] = place
        return out

    def _payload(self, bid: bytes, place: BlockPlace, meter: ReadMeter | None) -> bytes:
        with self._lock:
            data = self._cache.get(bid)
            if data is not None:
                self._cache.move_to_end(bid)
                self.cache_hits += 1
        if data is None:
            try:
                data = self.packs.read(place.pack, place.offset, place.length)
            except CorruptionError as e:
                raise CorruptionError(f"{self._what(bid)}: {e}") from None
            with self._lock:
                self.pack_bytes_read += len(data)
                if self.cache_bytes and len(data) <= self.cache_bytes:
                    self._cache[bid] = data
                    self._cached += len(data)
                    while self._cached > self.cache_bytes:
                        _k, old = self._cache.popitem(last=False)
                        self._cached -= len(old)
        if meter is not None:
            meter.add(place.length)
        return data

    def _reference(
        self, place: BlockPlace, reference: bytes | memoryview | None, meter: ReadMeter | None
    ) -> bytes | memoryview | None:
        if place.ref is None:
            return None
        return reference if reference is not None else self.read_block(place.ref, meter)

    def _place(self, bid: bytes, location: BlockPlace | None) -> BlockPlace:
        return location or self.block_locations([bid])[bid]

    def read_block(
        self,
        bid: bytes,
        meter: ReadMeter | None = None,
        *,
        reference: bytes | memoryview | None = None,
        location: BlockPlace | None = None,
        view: bool = False,
    ) -> bytes:
        """The raw bytes of a block, decoded and checked against its id."""
        place = self._place(bid, location)
        payload = self._payload(bid, place, meter)
        ref_raw = self._reference(place, reference, meter)
        try:
            raw = codecs.decode_block(place.codec, payload, reference=ref_raw, view=view)
        except (CorruptionError, ValueError) as e:
            raise CorruptionError(f"{self._what(bid)} is corrupt ({e})") from None
        if len(raw) != place.raw_len or block_id(raw) != bid:
            raise CorruptionError(f"{self._what(bid)} is corrupt (hash mismatch)")
        return raw

    def read_block_into(
        self,
        bid: bytes,
        out: np.ndarray,
        meter: ReadMeter | None = None,
        *,
        reference: bytes | memoryview | None = None,
        location: BlockPlace | None = None,
    ) -> None:
        """read_block, decoding into `out` and checking the bytes there against the id."""
        place = self._place(bid, location)
        if len(out) != place.raw_len:
            raise CorruptionError(f"{self._what(bid)} holds {place.raw_len} bytes, not {len(out)}")
        payload = self._payload(bid, place, meter)
        ref_raw = self._reference(place, reference, meter)
        try:
            codecs.decode_block_into(place.codec, payload, out, reference=ref_raw)
        except (CorruptionError, ValueError) as e:
            raise CorruptionError(f"{self._what(bid)} is corrupt ({e})") from None
        if block_id(out) != bid:
            raise CorruptionError(f"{self._what(bid)} is corrupt (hash mismatch)")

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

    def add_encoded(self, bid: bytes, raw_len: int, enc: codecs.Encoded) -> bool:
        with self._lock:
            if self.known(bid):
                return False
            pack, offset = self._appender.append(bid, enc.payload)
            place = BlockPlace(pack, offset, len(enc.payload), raw_len, enc.spec, enc.ref)
            self.written[bid] = WrittenBlock(bid, place)
            self.bytes_written += len(enc.payload)
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
        session.blocks[wb.id] = PendingBlock(p.codec, p.pack, p.offset, p.length, p.raw_len, p.ref)
        session.bytes_written += p.length
        adopted += p.length
    return adopted
