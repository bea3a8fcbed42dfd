"""Blocks a lazy clone knows of but does not hold yet, and the local packs that keep them.

A lazy clone records, for each block of its remote that it lacks, where the block's stored
bytes sit in a remote pack: the `promised` LMDB database, same value encoding as `blocks`,
with pack number PROMISED_PACK_BASE + slot, where the slot names (remote, pack key) in
`meta`. Reading such a block asks the attached BlockSource for those bytes (one ranged GET),
the repository verifies them against the block's id as it does for every block, and the
Keeper appends them to a local pack. The Keeper publishes its batch (fsync, then one LMDB
transaction that moves the entries from `promised` to `blocks`) every KEEP_BATCH bytes and when
the store closes. A process killed before that leaves an unreferenced pack tail (gc reclaims
it) and fetches the block again next time.

Only store/ touches LMDB and packs; the remote layer plugs in through BlockSource.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from mergestore.errors import MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.store.index import BlockLocation, Index, codec_id
from mergestore.store.packs import PackAppender

PROMISED_PACK_BASE = 0xC000_0000
KEEP_BATCH = 64 << 20
_SLOT_KEY = b"promised-pack:"
_NEXT_SLOT = b"next_promised_slot"


class PromisedStore(Protocol):
    """What promised blocks need of a repository (store.repo.Repository is one)."""

    index: Index
    pack_dir: Path

    def gc_lock(self, exclusive: bool) -> int: ...

    def upgrade_format(self) -> None: ...


class BlockSource(Protocol):
    """Where the stored bytes of promised blocks come from (the remote layer provides one)."""

    def fetch(self, remote: str, pack: str, offset: int, length: int) -> bytes:
        """The `length` stored bytes at `offset` of `pack` on `remote` (unverified)."""
        ...


@dataclass(frozen=True)
class PromisedEntry:
    """One block a remote pack holds: what `add_promised` records."""

    block: bytes
    offset: int
    length: int
    raw_len: int
    spec: str
    ref: bytes | None


def is_promised(loc: BlockLocation) -> bool:
    return loc.pack >= PROMISED_PACK_BASE


class NotFetchedError(MergestoreError):
    """A promised block was needed and no remote is attached to fetch it from."""


def slot_key(slot: int) -> bytes:
    return _SLOT_KEY + struct.pack(">I", slot)


def allocate_slot(txn, meta_db, remote: str, pack: str) -> int:  # type: ignore[no-untyped-def]
    """A slot number for (remote, pack), reusing the existing one."""
    name = remote.encode() + b"\x00" + pack.encode()
    cur = txn.cursor(db=meta_db)
    if cur.set_range(_SLOT_KEY):
        for k, v in cur:
            if not bytes(k).startswith(_SLOT_KEY):
                break
            if bytes(v) == name:
                return struct.unpack(">I", bytes(k)[len(_SLOT_KEY) :])[0]
    raw = txn.get(_NEXT_SLOT, db=meta_db)
    slot = struct.unpack("<I", raw)[0] if raw else 0
    if slot >= 0xFFFF_FFFF - PROMISED_PACK_BASE:
        raise MergestoreError("too many remote packs recorded in this lazy clone")
    txn.put(slot_key(slot), name, db=meta_db)
    txn.put(_NEXT_SLOT, struct.pack("<I", slot + 1), db=meta_db)
    return slot


class Keeper:
    """Appends fetched block payloads to a local pack and publishes them in batches."""

    def __init__(self, repo: PromisedStore) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        self._appender: PackAppender | None = None
        self._gc_fd: int | None = None
        self._pending: dict[bytes, BlockLocation] = {}
        self._pending_bytes = 0

    def pending_location(self, bid: bytes) -> BlockLocation | None:
        return self._pending.get(bid)

    def keep(self, bid: bytes, loc: BlockLocation, payload: bytes | memoryview, check: int) -> None:
        """Append a payload checked against its blake3 id (its promised location `loc`) to a
        local pack; `check` is blocks.raw_check of the bytes it decoded to."""
        with self._lock:
            if bid in self._pending:
                return
            if self._appender is None:
                self._gc_fd = self.repo.gc_lock(exclusive=False)  # gc waits for our batch
                self._appender = PackAppender(self.repo.pack_dir)
            pack, offset = self._appender.append(bid, payload)
            self._pending[bid] = BlockLocation(
                pack, offset, loc.length, loc.raw_len, loc.codec, loc.ref, check
            )
            self._pending_bytes += loc.length
            if self._pending_bytes >= KEEP_BATCH:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._appender is None:
            return
        try:
            if self._pending:
                self._appender.sync()
                self.repo.upgrade_format()  # entries with checks, sparse planes (formats 2, 3)
                idx = self.repo.index
                with idx.write() as txn:
                    for bid, loc in self._pending.items():
                        txn.put(bid, loc.encode(), db=idx.db("blocks"), overwrite=False)
                        txn.delete(bid, db=idx.db("promised"))
        finally:
            self._pending.clear()
            self._pending_bytes = 0
            self._appender.close()
            self._appender = None
            if self._gc_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._gc_fd)
                self._gc_fd = None


def record_promised(
    repo: PromisedStore, remote: str, pack: str, entries: Iterable[PromisedEntry]
) -> int:
    """Record blocks of a remote pack that this store lacks; returns how many were new."""
    idx = repo.index
    n = 0
    with idx.write() as txn:
        slot = allocate_slot(txn, idx.db("meta"), remote, pack)
        codec_ids: dict[str, int] = {}
        for e in entries:
            if txn.get(e.block, db=idx.db("blocks")) is not None:
                continue
            cid = codec_ids.get(e.spec)
            if cid is None:
                cid = codec_ids[e.spec] = codec_id(txn, idx, e.spec)
            loc = BlockLocation(
                PROMISED_PACK_BASE + slot, e.offset, e.length, e.raw_len, cid, e.ref
            )
            if txn.put(e.block, loc.encode(), db=idx.db("promised"), overwrite=False):
                n += 1
    return n


def promised_count(repo: PromisedStore, remote: str) -> int:
    """How many blocks this store still knows only as locations on `remote`."""
    idx = repo.index
    with idx.read() as txn:
        slots = set()
        cur = txn.cursor(db=idx.db("meta"))
        if cur.set_range(_SLOT_KEY):
            for k, v in cur:
                if not bytes(k).startswith(_SLOT_KEY):
                    break
                if bytes(v).split(b"\x00", 1)[0] == remote.encode():
                    slots.add(struct.unpack(">I", bytes(k)[len(_SLOT_KEY) :])[0])
        if not slots:
            return 0
        n = 0
        for _k, v in txn.cursor(db=idx.db("promised")):
            if struct.unpack_from("<I", v)[0] - PROMISED_PACK_BASE in slots:
                n += 1
        return n


def slot_name(repo: PromisedStore, slot: int) -> tuple[str, str]:
    """(remote, pack key) of a promised-pack slot."""
    with repo.index.read() as txn:
        raw = txn.get(slot_key(slot), db=repo.index.db("meta"))
    if raw is None:
        raise MergestoreError(f"unknown remote pack slot {slot}")
    remote, _, pack = bytes(raw).decode().partition("\x00")
    return remote, pack
