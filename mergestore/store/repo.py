"""One store on disk: config, the LMDB index, pack files, objects and refs.

    <store>/config.json   format version, block size, zstd level
    <store>/index/        LMDB environment (see index.py)
    <store>/packs/        append-only pack files (see packs.py)
    <store>/locks/        gc.lock: writers hold it shared, gc exclusive

Writing goes through a WriteSession: blocks are appended to a pack as they are encoded; the
session then fsyncs the packs and publishes every new block, object, statistic and ref move in
one LMDB transaction. Until that transaction commits nothing of the session is visible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import field
from pathlib import Path
from typing import Any

import blake3
import zstandard

from mergestore import iotally
from mergestore.errors import (
    AmbiguousRefError,
    CorruptionError,
    MergestoreError,
    RefError,
    StoreNotFoundError,
    did_you_mean,
)
from mergestore.fast_dataclass import dataclass
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.store import codecs, faults
from mergestore.store.blocks import DEFAULT_BLOCK_SIZE, block_id, raw_check, raw_matches
from mergestore.store.index import BlockLocation, DeltaStats, Index, codec_id, stats_key
from mergestore.store.locks import OnWait, flock_wait
from mergestore.store.objects import (
    BlobFile,
    Commit,
    Plan,
    StoreObject,
    TensorFile,
    Tree,
    decode_object,
)
from mergestore.store.packs import PackAppender, PackReader, ReadMeter
from mergestore.store.promised import (
    PROMISED_PACK_BASE,
    BlockSource,
    Keeper,
    NotFetchedError,
    is_promised,
    promised_count,
    slot_name,
)
from mergestore.store.reader import BlockReader
from mergestore.store.refs import (
    HEAD,
    HEADS,
    REMOTES,
    TAGS,
    ambiguous_ref,
    looks_like_hex,
    parse_ref_expr,
)
from mergestore.store.statcache import FileStamp, StatEntry

# 2: block index entries may end with a check of the raw bytes (blocks.raw_check).
# 3: byte planes may be coded sparse (plane code "s", store/codecs/sparse.py).
# A store of an older format is read as it is, and marked with this format before the first
# entry is published into it (Repository.upgrade_format).
FORMAT_VERSION = 3
CONFIG_FILE = "config.json"
_OBJ_PLAIN, _OBJ_ZSTD = b"\x00", b"\x01"
_SEQ = struct.Struct(">Q")
_STAND_IN_CODECS = 0xFF00  # codec ids above this stand in for unpublished ones (read_through)
_INPUT_COMMIT = b"\x00input-commit\x00"  # statcache keys of merge inputs' commits (no real path
# starts with NUL)


@dataclass(frozen=True)
class StoreConfig:
    """A store's settings (config.json)."""

    block_size: int = DEFAULT_BLOCK_SIZE
    zstd_level: int = 3
    format: int = FORMAT_VERSION
    delta_codecs: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "block_size": self.block_size,
            "zstd_level": self.zstd_level,
            "delta_codecs": self.delta_codecs,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoreConfig:
        return cls(
            block_size=int(d.get("block_size", DEFAULT_BLOCK_SIZE)),
            zstd_level=int(d.get("zstd_level", 3)),
            format=int(d.get("format", FORMAT_VERSION)),
            delta_codecs=bool(d.get("delta_codecs", True)),
        )


@dataclass(frozen=True)
class RefUpdate:
    """Move `name` to `new` (None deletes). `old` guards against lost updates when given."""

    name: str
    new: bytes | None
    message: str
    old: bytes | None | object = ...  # Ellipsis: don't check


@dataclass(frozen=True)
class ReflogEntry:
    """One move of a ref: from, to, when and why."""

    old: bytes | None
    new: bytes | None
    time: float
    message: str


def _write_config(path: Path, config: StoreConfig) -> None:
    """config.json, atomically and durably: a temporary file, fsynced, renamed over the old
    one, and the directory fsynced."""
    tmp = path / (CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(config.to_json(), indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / CONFIG_FILE)
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _flock(path: Path, mode: int, timeout: float, what: str, on_wait: OnWait | None = None) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flock_wait(fd, path, mode, timeout, what, on_wait)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Repository:
    """Low-level access to one store. Higher layers use mergestore.api.Store."""

    def __init__(self, path: Path, config: StoreConfig) -> None:
        self.path = path
        self.config = config
        self.index = Index(path / "index")
        self.pack_dir = path / "packs"
        self.packs = PackReader(self.pack_dir)
        self._codec_specs: dict[int, str] = {}
        self._codec_lock = threading.Lock()
        self.lock_timeout = float(os.environ.get("MERGESTORE_LOCK_TIMEOUT", "600"))
        # Lazy clones: where promised blocks come from, the bytes fetched, the local keeper.
        self.block_source: BlockSource | None = None
        self.fetch_meter = ReadMeter()
        self._keeper: Keeper | None = None
        self._slots: dict[int, tuple[str, str]] = {}
        self.read_only: str | None = None  # why writing is refused (a view of a remote)
        self.on_lock_wait: OnWait | None = None  # told the holders when the lock is busy
        # An unpublished session this process reads through (read_through): a merge reads the
        # folders it stored, and what it computed, before publishing them all at once.
        self._overlay: WriteSession | None = None
        # Decoded file and tree objects by id, while cached_objects() is held (a merge).
        self._decoded: dict[bytes, StoreObject] | None = None

    # ----- lifecycle -------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path, config: StoreConfig | None = None) -> Repository:
        config = config or StoreConfig()
        if config.block_size < 4096 or config.block_size > (1 << 30):
            raise MergestoreError("block size must be between 4 KiB and 1 GiB")
        if not 1 <= config.zstd_level <= 22:
            raise MergestoreError("zstd level must be between 1 and 22")
        if (path / CONFIG_FILE).exists():
            raise MergestoreError(f"{path}: a store already exists here")
        if path.exists() and not path.is_dir():
            raise MergestoreError(f"{path}: exists and is not a directory")
        for sub in ("packs", "locks", "index"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        repo = cls(path, config)
        with repo.index.write() as txn:
            txn.put(HEAD.encode(), b"ref: " + (HEADS + "main").encode(), db=repo.index.db("refs"))
        _write_config(path, config)  # the config file's presence marks a complete store
        return repo

    @classmethod
    def open(cls, path: Path) -> Repository:
        cfg_path = path / CONFIG_FILE
        if not cfg_path.is_file():
            raise StoreNotFoundError(f"{path}: not a mergestore store (run `mergestore init`)")
        try:
            config = StoreConfig.from_json(json.loads(cfg_path.read_text()))
        except (ValueError, TypeError) as e:
            raise CorruptionError(f"{cfg_path}: unreadable store config") from e
        if config.format > FORMAT_VERSION:
            raise MergestoreError(f"{path}: store format {config.format} is newer than this tool")
        if config.format < 1:
            raise CorruptionError(f"{cfg_path}: unknown store format {config.format}")
        return cls(path, config)

    def upgrade_format(self) -> None:
        """Mark a store of an older format as this tool's before writing entries that only
        this format has (atomic: a new config.json, fsynced, renamed over the old one)."""
        if self.config.format >= FORMAT_VERSION:
            return
        config = dataclasses.replace(self.config, format=FORMAT_VERSION)
        _write_config(self.path, config)
        self.config = config

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.flush()  # blocks a lazy clone fetched are kept in local packs
            self._keeper = None
        self.packs.close()
        self.index.close()

    # ----- blocks ----------------------------------------------------------------------------

    def codec_spec(self, codec_id: int) -> str:
        spec = self._codec_specs.get(codec_id)
        if spec is None:
            with self.index.read() as txn:
                raw = txn.get(b"i:" + struct.pack("<H", codec_id), db=self.index.db("codecs"))
            if raw is None:
                raise CorruptionError(f"unknown codec id {codec_id}")
            spec = raw.decode()
            with self._codec_lock:
                self._codec_specs[codec_id] = spec
        return spec

    def block_location(self, bid: bytes) -> BlockLocation | None:
        """A block's index entry; in a lazy clone, its remote location if it is not here yet."""
        with self.index.read() as txn:
            raw = txn.get(bid, db=self.index.db("blocks"))
            if raw is None:
                return self._promised_location(txn, bid)
        return BlockLocation.decode(raw)

    def block_locations(self, ids: Iterable[bytes]) -> dict[bytes, BlockLocation]:
        """Locations of many blocks in one read transaction (missing ones are left out)."""
        out: dict[bytes, BlockLocation] = {}
        with self.index.read() as txn:
            db = self.index.db("blocks")
            for bid in ids:
                if bid not in out:
                    raw = txn.get(bid, db=db)
                    if raw is not None:
                        out[bid] = BlockLocation.decode(raw)
                    else:
                        loc = self._promised_location(txn, bid)
                        if loc is not None:
                            out[bid] = loc
        return out

    def _promised_location(self, txn: Any, bid: bytes) -> BlockLocation | None:
        """A block of the session read through, or fetched but not yet published by the
        keeper, else its promised entry."""
        overlay = self._overlay
        if overlay is not None:
            pb = overlay.blocks.get(bid)
            if pb is not None:
                codec = self._pending_codec_id(txn, pb.spec)
                return BlockLocation(
                    pb.pack, pb.offset, pb.length, pb.raw_len, codec, pb.ref, pb.check
                )
        if self._keeper is not None:
            kept = self._keeper.pending_location(bid)
            if kept is not None:
                return kept
        raw = txn.get(bid, db=self.index.db("promised"))
        return BlockLocation.decode(raw) if raw is not None else None

    def block_is_promised(self, bid: bytes) -> bool:
        """True when the block is known only as a remote location (a lazy clone)."""
        loc = self.block_location(bid)
        return loc is not None and is_promised(loc)

    def has_block(self, bid: bytes) -> bool:
        overlay = self._overlay
        if overlay is not None and bid in overlay.blocks:
            return True
        with self.index.read() as txn:
            return txn.get(bid, db=self.index.db("blocks")) is not None

    def read_block(
        self,
        bid: bytes,
        meter: ReadMeter | None = None,
        *,
        reference: bytes | memoryview | None = None,
        location: BlockLocation | None = None,
        view: bool = False,
    ) -> bytes:
        """The raw bytes of a block, decoded and checked against its id.

        With `view`, the bytes may come back as a read-only memoryview of the decoder's own
        buffer (one copy fewer; the merge engine copies blocks into tensors anyway).

        `reference` may carry the raw bytes of the block's delta reference when the caller
        already holds them (a merge holds the base block), so it is not read twice.
        `location` may carry the block's index entry when the caller looked many up at once.
        """
        loc, payload, ref_raw = self._payload(bid, meter, reference, location)
        return self.decode_verified(bid, loc, payload, ref_raw, view=view)  # type: ignore[return-value]

    def decode_verified(
        self,
        bid: bytes,
        loc: BlockLocation,
        payload: bytes | memoryview,
        reference: bytes | memoryview | None,
        *,
        out: np.ndarray | None = None,
        view: bool = False,
        full: bool = False,
    ) -> bytes | memoryview:
        """Decode a block's stored payload (into `out` when given) and check it: against the
        check its entry holds (blocks.raw_check), or with `full`, or when the entry has none,
        against its blake3 id.

        Returns the raw bytes (a view of `out` when given). On an error `out` holds garbage."""
        spec = self.codec_spec(loc.codec)
        try:
            if out is not None:
                if len(out) != loc.raw_len:
                    raise ValueError(
                        f"block {bid.hex()[:12]} holds {loc.raw_len} bytes, not {len(out)}"
                    )
                codecs.decode_block_into(spec, payload, out, reference=reference)
                raw: bytes | memoryview = memoryview(out)
            else:
                raw = codecs.decode_block(spec, payload, reference=reference, view=view)
        except CorruptionError as e:
            raise CorruptionError(f"block {bid.hex()[:12]}: {e}") from e
        if not raw_matches(bid, raw, loc.raw_len, loc.check, full=full):
            raise CorruptionError(f"block {bid.hex()[:12]} is corrupt (hash mismatch)")
        if is_promised(loc):
            self._keep(bid, loc, payload, raw_check(bid, raw))
        return raw

    def read_block_into(
        self,
        bid: bytes,
        out: np.ndarray,
        meter: ReadMeter | None = None,
        *,
        reference: bytes | memoryview | None = None,
        location: BlockLocation | None = None,
    ) -> None:
        """read_block, decoding into `out` (a writable uint8 array of the block's length)
        and checking the bytes there against the id. On an error `out` holds garbage."""
        loc, payload, ref_raw = self._payload(bid, meter, reference, location)
        self.decode_verified(bid, loc, payload, ref_raw, out=out)

    def _keep(self, bid: bytes, loc: BlockLocation, payload: bytes, check: int) -> None:
        if self._keeper is None:
            with self._codec_lock:
                if self._keeper is None:
                    self._keeper = Keeper(self)
        self._keeper.keep(bid, loc, payload, check)

    def _fetch_promised(self, bid: bytes, loc: BlockLocation) -> tuple[BlockLocation, bytes]:
        """The stored bytes of a promised block: from a local pack if it was kept meanwhile,
        else from the remote (checked by the caller against the block's id)."""
        now = self.block_location(bid)
        if now is not None and not is_promised(now):
            return now, self.packs.read(now.pack, now.offset, now.length)
        loc = now or loc
        if self.block_source is None:
            raise NotFetchedError(
                f"block {bid.hex()[:12]} is not fetched yet and no remote is attached"
            )
        slot = loc.pack - PROMISED_PACK_BASE
        name = self._slots.get(slot)
        if name is None:
            name = self._slots[slot] = slot_name(self, slot)
        payload = self.block_source.fetch(name[0], name[1], loc.offset, loc.length)
        if len(payload) != loc.length:
            raise CorruptionError(
                f"remote {name[0]}: pack {name[1][:12]} gave {len(payload)} bytes for block "
                f"{bid.hex()[:12]}, not {loc.length}"
            )
        self.fetch_meter.add(loc.length)
        return loc, payload

    def read_span(self, pack: int, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of a pack: a local pack file, or in a lazy clone a
        remote pack (one ranged GET, counted on fetch_meter). Unverified: the block reader
        checks each block in it against its id."""
        if pack < PROMISED_PACK_BASE:
            return self.packs.read(pack, start, length)
        if self.block_source is None:
            raise NotFetchedError("blocks are not fetched yet and no remote is attached")
        slot = pack - PROMISED_PACK_BASE
        name = self._slots.get(slot)
        if name is None:
            name = self._slots[slot] = slot_name(self, slot)
        data = self.block_source.fetch(name[0], name[1], start, length)
        if len(data) != length:
            raise CorruptionError(
                f"remote {name[0]}: pack {name[1][:12]} gave {len(data)} bytes at {start}, "
                f"not {length}"
            )
        self.fetch_meter.add(length)
        iotally.add_read(length)
        return data

    def promised_count(self, remote: str) -> int:
        """Blocks this store still knows only as locations on `remote` (a lazy clone)."""
        return promised_count(self, remote)

    def read_stored(self, bid: bytes) -> tuple[BlockLocation, str, bytes]:
        """A block's index entry, codec spec and stored (encoded) bytes, as they sit in its
        pack: what a push sends. A promised block is fetched (and verified) first."""
        loc = self.block_location(bid)
        if loc is None:
            raise CorruptionError(f"block {bid.hex()[:12]} is missing from the store")
        if is_promised(loc):
            self.read_block(bid)
            loc = self.block_location(bid)
            assert loc is not None
        loc, payload, _ref = self._payload(bid, None, b"", loc)
        return loc, self.codec_spec(loc.codec), payload

    def _payload(
        self,
        bid: bytes,
        meter: ReadMeter | None,
        reference: bytes | memoryview | None,
        location: BlockLocation | None,
    ) -> tuple[BlockLocation, bytes, bytes | memoryview | None]:
        """A block's index entry, its stored payload (counted on `meter`), and the raw
        bytes of its delta reference (given, or read) if it has one."""
        loc = location or self.block_location(bid)
        if loc is None:
            raise CorruptionError(f"block {bid.hex()[:12]} is missing from the store")
        try:
            if is_promised(loc):
                loc, payload = self._fetch_promised(bid, loc)
            else:
                payload = self.packs.read(loc.pack, loc.offset, loc.length)
        except CorruptionError:
            # A concurrent gc may have moved the block to a new pack and removed the old one
            # after we looked it up: look again before calling it corrupt.
            moved = self.block_location(bid)
            if moved is None or moved == loc:
                raise
            loc = moved
            payload = self.packs.read(loc.pack, loc.offset, loc.length)
        if meter is not None:
            meter.add(loc.length)
        ref_raw = None
        if loc.ref is not None:
            ref_raw = reference if reference is not None else self.read_block(loc.ref, meter)
        return loc, payload, ref_raw

    def reader(self, **options: int) -> BlockReader:
        """Many blocks at once, in pack order, verified (see reader.py for `options`)."""
        return BlockReader(self, **options)

    def stored_size(self, bid: bytes) -> int:
        loc = self.block_location(bid)
        return loc.length if loc else 0

    def iter_raw_blocks(self) -> Iterator[tuple[bytes, bytes]]:
        """Block ids and their undecoded index values (fsck checks each one)."""
        with self.index.read() as txn:
            for k, v in txn.cursor(db=self.index.db("blocks")):
                yield bytes(k), bytes(v)

    def iter_blocks(self) -> Iterator[tuple[bytes, BlockLocation]]:
        with self.index.read() as txn:
            for k, v in txn.cursor(db=self.index.db("blocks")):
                yield bytes(k), BlockLocation.decode(v)

    # ----- objects ---------------------------------------------------------------------------

    def get_object_bytes(self, oid: bytes) -> bytes | None:
        overlay = self._overlay
        if overlay is not None and oid in overlay.objects:
            return overlay.objects[oid]
        with self.index.read() as txn:
            raw = txn.get(oid, db=self.index.db("objects"))
        if raw is None:
            return None
        return _unwrap_object(bytes(raw))

    def get_object(self, oid: bytes) -> StoreObject:
        cache = self._decoded
        if cache is not None and oid in cache:
            return cache[oid]
        data = self.get_object_bytes(oid)
        if data is None:
            raise CorruptionError(f"object {oid.hex()[:12]} is missing from the store")
        obj = decode_object(data, expected_id=oid)
        if cache is not None and isinstance(obj, (Tree, TensorFile, BlobFile)):
            cache[oid] = obj
        return obj

    @contextlib.contextmanager
    def cached_objects(self) -> Iterator[None]:
        """While held, get_object reads, checks and decodes each tree and file object once:
        a merge looks its inputs' trees and tensor files up 2-3 times each (planning, the
        output layout, the output tree). Those objects are immutable (frozen, tuples) and
        named by their hash. Outside (fsck, gc), every read checks the stored bytes."""
        if self._decoded is not None:  # nested: the outer scope's cache
            yield
            return
        self._decoded = {}
        try:
            yield
        finally:
            self._decoded = None

    def get_commit(self, oid: bytes) -> Commit:
        obj = self.get_object(oid)
        if not isinstance(obj, Commit):
            raise RefError(f"{oid.hex()[:12]} is not a commit")
        return obj

    def get_tree(self, oid: bytes) -> Tree:
        obj = self.get_object(oid)
        if not isinstance(obj, Tree):
            raise CorruptionError(f"{oid.hex()[:12]} is not a tree")
        return obj

    def get_file(self, oid: bytes) -> BlobFile | TensorFile:
        obj = self.get_object(oid)
        if not isinstance(obj, (BlobFile, TensorFile)):
            raise CorruptionError(f"{oid.hex()[:12]} is not a file object")
        return obj

    def get_plan(self, oid: bytes) -> Plan:
        obj = self.get_object(oid)
        if not isinstance(obj, Plan):
            raise CorruptionError(f"{oid.hex()[:12]} is not a plan")
        return obj

    def iter_object_ids(self) -> Iterator[bytes]:
        with self.index.read() as txn:
            for k in txn.cursor(db=self.index.db("objects")).iternext(keys=True, values=False):
                yield bytes(k)

    def commits_with_prefix(self, prefix: str) -> list[bytes]:
        """Commit ids whose hex form starts with `prefix`."""
        even = prefix[: len(prefix) // 2 * 2]
        start = bytes.fromhex(even)
        found = []
        with self.index.read() as txn:
            cur = txn.cursor(db=self.index.db("objects"))
            if not cur.set_range(start):
                return []
            for k, v in cur:
                k = bytes(k)
                if not k.startswith(start):
                    break
                if k.hex().startswith(prefix) and _unwrap_object(bytes(v)).startswith(b"commit\n"):
                    found.append(k)
        return found

    # ----- statistics ------------------------------------------------------------------------

    def get_stats(self, b: bytes, a: bytes, dtype: str) -> DeltaStats | None:
        return self.get_stats_many([(b, a, dtype)]).get((b, a, dtype))

    def get_stats_many(
        self, pairs: Iterable[tuple[bytes, bytes, str]]
    ) -> dict[tuple[bytes, bytes, str], DeltaStats]:
        """Kept statistics of many (b, a, dtype) pairs, in one read transaction."""
        out: dict[tuple[bytes, bytes, str], DeltaStats] = {}
        with self.index.read() as txn:
            db = self.index.db("stats")
            for b, a, dtype in pairs:
                raw = txn.get(stats_key(b, a, dtype), db=db)
                if raw is not None:
                    out[(b, a, dtype)] = DeltaStats.decode(bytes(raw))
        return out

    def stats_of_blocks(self, ids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Every kept statistic (raw key, raw value) whose block B is one of `ids`."""
        with self.index.read() as txn:
            cur = txn.cursor(db=self.index.db("stats"))
            for b in dict.fromkeys(ids):
                if not cur.set_range(b):
                    continue
                for k, v in cur:
                    if not bytes(k).startswith(b):
                        break
                    yield bytes(k), bytes(v)

    def put_stats(self, entries: Iterable[tuple[bytes, bytes, str, DeltaStats]]) -> int:
        """Keep computed statistics (a derived cache: its own small transaction)."""
        n = 0
        with self.index.write() as txn:
            for b, a, dtype, st in entries:
                if txn.put(
                    stats_key(b, a, dtype), st.encode(), db=self.index.db("stats"), overwrite=False
                ):
                    n += 1
        return n

    # ----- stat cache ------------------------------------------------------------------------

    def stat_entries(self, paths: Iterable[bytes]) -> dict[bytes, StatEntry]:
        """The stat cache's entries for these paths (path_key), in one read transaction."""
        out: dict[bytes, StatEntry] = {}
        with self.index.read() as txn:
            db = self.index.db("statcache")
            for key in paths:
                raw = txn.get(key, db=db)
                entry = StatEntry.decode(bytes(raw)) if raw is not None else None
                if entry is not None:
                    out[key] = entry
        return out

    def input_commit(self, folder: bytes) -> bytes | None:
        """The commit last made of this folder as a merge input (see put_input_commit)."""
        overlay = self._overlay
        if overlay is not None and _INPUT_COMMIT + folder in overlay.input_commits:
            return overlay.input_commits[_INPUT_COMMIT + folder]
        with self.index.read() as txn:
            raw = txn.get(_INPUT_COMMIT + folder, db=self.index.db("statcache"))
        return bytes(raw) if raw is not None and len(raw) == 32 else None

    def file_is_complete(self, oid: bytes) -> bool:
        """A stored BlobFile or TensorFile whose blocks (header included) are all present."""
        raw = self.get_object_bytes(oid)
        if raw is None:
            return False
        try:
            obj = self.get_file(oid)
            blocks: list[bytes] = list(obj.blocks) if isinstance(obj, BlobFile) else []
            if isinstance(obj, TensorFile):
                header = self.get_file(obj.header)
                if not isinstance(header, BlobFile):
                    return False
                blocks.extend(header.blocks)
                for t in obj.tensors:
                    blocks.extend(t.blocks)
        except MergestoreError:
            return False
        return len(self.block_locations(blocks)) == len(set(blocks))

    # ----- refs ------------------------------------------------------------------------------

    def read_ref(self, name: str) -> bytes | None:
        """The commit a ref points at (following HEAD), or None if unborn/missing."""
        with self.index.read() as txn:
            return self._read_ref_txn(txn, name)

    def _read_ref_txn(self, txn: Any, name: str, depth: int = 0) -> bytes | None:
        raw = txn.get(name.encode(), db=self.index.db("refs"))
        if raw is None:
            return None
        value = bytes(raw).decode()
        if value.startswith("ref: "):
            if depth > 3:
                raise CorruptionError(f"symbolic ref loop at {name}")
            return self._read_ref_txn(txn, value[5:], depth + 1)
        try:
            return bytes.fromhex(value)
        except ValueError as e:
            raise CorruptionError(f"ref {name} holds a malformed value") from e

    def head_target(self) -> str | None:
        """The ref HEAD points at (e.g. refs/heads/main), or None when HEAD is detached."""
        with self.index.read() as txn:
            raw = txn.get(HEAD.encode(), db=self.index.db("refs"))
        if raw is None:
            return None
        value = bytes(raw).decode()
        return value[5:] if value.startswith("ref: ") else None

    def set_head(self, target: str) -> None:
        """Point HEAD at a branch (a full ref name such as refs/heads/main)."""
        if not target.startswith(HEADS):
            raise RefError(f"HEAD can only point at a branch, not {target!r}")
        with self.index.write() as txn:
            txn.put(HEAD.encode(), b"ref: " + target.encode(), db=self.index.db("refs"))

    def list_refs(self, prefix: str = "") -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        with self.index.read() as txn:
            cur = txn.cursor(db=self.index.db("refs"))
            if not cur.set_range(prefix.encode()):
                return out
            for k, v in cur:
                name = bytes(k).decode()
                if not name.startswith(prefix):
                    break
                value = bytes(v).decode()
                if value.startswith("ref: "):
                    continue
                out[name] = bytes.fromhex(value)
        return out

    def raw_refs(self) -> dict[str, bytes]:
        """Every ref name (HEAD included) and its undecoded value (fsck checks each one)."""
        with self.index.read() as txn:
            return {
                bytes(k).decode(errors="replace"): bytes(v)
                for k, v in txn.cursor(db=self.index.db("refs"))
            }

    def reflog(self, name: str) -> list[ReflogEntry]:
        out = []
        key = name.encode() + b"\x00"
        with self.index.read() as txn:
            cur = txn.cursor(db=self.index.db("reflog"))
            if cur.set_range(key):
                for k, v in cur:
                    if not bytes(k).startswith(key):
                        break
                    d = json.loads(bytes(v))
                    out.append(
                        ReflogEntry(
                            old=bytes.fromhex(d["old"]) if d.get("old") else None,
                            new=bytes.fromhex(d["new"]) if d.get("new") else None,
                            time=d["time"],
                            message=d["message"],
                        )
                    )
        return out

    def reflog_names(self) -> list[str]:
        names: list[str] = []
        with self.index.read() as txn:
            for k in txn.cursor(db=self.index.db("reflog")).iternext(keys=True, values=False):
                name = bytes(k).split(b"\x00", 1)[0].decode()
                if not names or names[-1] != name:
                    names.append(name)
        return names

    def refs_named(self, short: str) -> dict[str, bytes]:
        """The branch, tag and remote-tracking refs spelled `short` (more than one: ambiguous)."""
        found = {}
        for name in (HEADS + short, TAGS + short, REMOTES + short):
            cid = self.read_ref(name)
            if cid is not None:
                found[name] = cid
        return found

    def resolve(self, text: str) -> bytes:
        """A commit id from a ref expression: id or prefix, branch, tag, HEAD, ~N, ^N."""
        expr = parse_ref_expr(text)
        cid = self._resolve_start(expr.start)
        for op, n in expr.steps:
            if op == "~":
                for _ in range(n):
                    parents = self.get_commit(cid).parents
                    if not parents:
                        raise RefError(f"{text}: not enough ancestors")
                    cid = parents[0]
            else:
                if n == 0:
                    continue
                parents = self.get_commit(cid).parents
                if n > len(parents):
                    raise RefError(f"{text}: commit has no parent {n}")
                cid = parents[n - 1]
        return cid

    def _resolve_start(self, start: str) -> bytes:
        if start == HEAD:
            cid = self.read_ref(HEAD)
            if cid is None:
                raise RefError("HEAD does not point at a commit yet")
            return cid
        if start.startswith("refs/"):
            cid = self.read_ref(start)
            if cid is not None:
                return cid
        found = self.refs_named(start)
        if len(found) > 1:
            raise AmbiguousRefError(ambiguous_ref(start, list(found)))
        if found:
            return next(iter(found.values()))
        if looks_like_hex(start):
            matches = self.commits_with_prefix(start.lower())
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AmbiguousRefError(f"ambiguous ref {start!r}: {len(matches)} commits match")
        if re.fullmatch(r"[0-9a-fA-F]{1,5}", start):
            raise RefError(
                f"unknown ref {start!r} (a commit id prefix needs at least 6 hex characters)"
            )
        raise RefError(f"unknown ref {start!r}{self.ref_hint(start)}")

    def ref_hint(self, text: str) -> str:
        """The hint ` (did you mean 'main'?)` for a mistyped branch, tag or remote name."""
        names = [HEAD]
        for prefix in (HEADS, TAGS, REMOTES):
            names += [n[len(prefix) :] for n in self.list_refs(prefix)]
        return did_you_mean(text, names)

    # ----- writing ---------------------------------------------------------------------------

    def writer(self) -> WriteSession:
        if self.read_only:
            raise MergestoreError(self.read_only)
        return WriteSession(self)

    @contextlib.contextmanager
    def read_through(self, session: WriteSession) -> Iterator[None]:
        """Reads in this process see `session`'s blocks and objects before it is published
        (a merge reads the folders it stored in it, and builds its tree from what it
        computed). Other processes see nothing until it publishes."""
        if self._overlay is not None:
            raise MergestoreError("read_through: a session is read through already")
        self._overlay = session
        try:
            yield
        finally:
            self._overlay = None

    @property
    def reading_session(self) -> WriteSession | None:
        """The unpublished session this process reads through (read_through), if any: work
        done inside a merge (a lazy input computed, an adapter applied) goes into it."""
        return self._overlay

    def overlay_index_value(self, db: str, key: bytes) -> tuple[bool, bytes | None]:
        """(True, value) when the session read through sets index entry `key` of `db` (value
        None: deletes it); (False, None) when it does not touch it."""
        overlay = self._overlay
        if overlay is not None and (db, key) in overlay.index_puts:
            return True, overlay.index_puts[(db, key)]
        return False, None

    def _pending_codec_id(self, txn: Any, spec: str) -> int:
        """The codec id of `spec` for a location of an unpublished block: the stored id if
        the store knows the codec, else a stand-in from the top of the id range, known only
        to this process (publish() gives the real one)."""
        raw = txn.get(b"s:" + spec.encode(), db=self.index.db("codecs"))
        if raw is not None:
            return int(struct.unpack("<H", raw)[0])
        with self._codec_lock:
            for cid, known in self._codec_specs.items():
                if known == spec and cid >= _STAND_IN_CODECS:
                    return cid
            cid = 0xFFFF - sum(1 for c in self._codec_specs if c >= _STAND_IN_CODECS)
            self._codec_specs[cid] = spec
            return cid

    def gc_lock(self, exclusive: bool) -> int:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        what = "a running gc" if not exclusive else "running writers to finish"
        return _flock(self.gc_lock_path, mode, self.lock_timeout, what, self.on_lock_wait)

    @property
    def gc_lock_path(self) -> Path:
        return self.path / "locks" / "gc.lock"

    def update_refs(self, updates: Iterable[RefUpdate]) -> None:
        """Move refs (no new data): one transaction."""
        with self.writer() as w:
            w.publish(list(updates))

    def rename_ref(self, src: str, dst: str, cid: bytes, dst_old: bytes | None) -> None:
        """Move ref `src` (at `cid`) to `dst` (at `dst_old`, or None) in one transaction, as
        `git branch -m` does: `dst` takes `src`'s reflog (after its own entries, which stay),
        `src` keeps one entry saying where it went, and HEAD follows if it was on `src`."""
        src_key, dst_key = src.encode() + b"\x00", dst.encode() + b"\x00"
        moved: list[tuple[bytes, bytes]] = []
        seq = 0
        with self.index.read() as txn:
            cur = txn.cursor(db=self.index.db("reflog"))
            for key, entries in ((src_key, moved), (dst_key, None)):
                if not cur.set_range(key):
                    continue
                for k, v in cur:
                    if not bytes(k).startswith(key):
                        break
                    if entries is not None:
                        entries.append((bytes(k), bytes(v)))
                    else:
                        seq = _SEQ.unpack(bytes(k)[len(key) :])[0] + 1
        with self.writer() as w:
            for k, v in moved:
                w.index_puts[("reflog", k)] = None
                w.index_puts[("reflog", dst_key + _SEQ.pack(seq))] = v
                seq += 1
            if self.head_target() == src:
                w.index_puts[("refs", HEAD.encode())] = b"ref: " + dst.encode()
            w.publish(
                [
                    RefUpdate(src, None, f"branch: renamed {src} to {dst}", old=cid),
                    RefUpdate(dst, cid, f"branch: renamed {src} to {dst}", old=dst_old),
                ]
            )


def _wrap_object(data: bytes) -> bytes:
    if len(data) > 4096:
        return _OBJ_ZSTD + zstandard.ZstdCompressor(level=3).compress(data)
    return _OBJ_PLAIN + data


def _unwrap_object(value: bytes) -> bytes:
    flag, body = value[:1], value[1:]
    if flag == _OBJ_PLAIN:
        return body
    if flag == _OBJ_ZSTD:
        try:
            return zstandard.ZstdDecompressor().decompress(body)
        except zstandard.ZstdError as e:
            raise CorruptionError("corrupt object encoding") from e
    raise CorruptionError("corrupt object encoding")


@dataclass
class PendingBlock:
    """A block written by this session, not yet published."""

    spec: str
    pack: int
    offset: int
    length: int
    raw_len: int
    ref: bytes | None
    check: int | None = None  # blocks.raw_check of the raw bytes, when computed here


@dataclass
class WriteSession:
    """Collects new blocks, objects and statistics, then publishes them atomically."""

    repo: Repository
    blocks: dict[bytes, PendingBlock] = field(default_factory=dict)
    objects: dict[bytes, bytes] = field(default_factory=dict)
    stats: dict[bytes, bytes] = field(default_factory=dict)
    stat_cache: dict[bytes, tuple[FileStamp, str, bytes]] = field(default_factory=dict)
    input_commits: dict[bytes, bytes] = field(default_factory=dict)
    bytes_written: int = 0
    on_publish: list[Callable[[], None]] = field(default_factory=list)
    # (db name, key) -> value, or None to delete: index entries published with the rest
    index_puts: dict[tuple[str, bytes], bytes | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._gc_fd: int | None = None
        self._appender = PackAppender(self.repo.pack_dir)
        self.published = False
        self._committing = False

    def __enter__(self) -> WriteSession:
        self._gc_fd = self.repo.gc_lock(exclusive=False)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and not self.published and not self._committing:
            # Failed before the index transaction could commit: nothing points at what we
            # appended, so give the space back (a full disk) and keep the packs walkable.
            with contextlib.suppress(OSError):  # else: an unreferenced tail, gc reclaims it
                self._appender.rollback()
        self._appender.close()
        if self._gc_fd is not None:
            os.close(self._gc_fd)
            self._gc_fd = None

    def sync(self) -> None:
        """Make every block appended so far durable (pending.py saves the session after)."""
        self._appender.sync()

    def pack_sizes(self) -> dict[int, tuple[int, int, bool]]:
        """Per pack appended to: (size when taken, size now, created by this session)."""
        return self._appender.sizes()

    @property
    def holds_anything(self) -> bool:
        """Whether publishing would write anything (blocks, objects or index entries)."""
        return bool(
            self.blocks or self.objects or self.stats or self.stat_cache or self.input_commits
            or self.index_puts
        )  # fmt: skip

    def discard(self) -> None:
        """Give back what this session appended (it will not publish): see __exit__."""
        if not self.published and not self._committing:
            with contextlib.suppress(OSError):
                self._appender.rollback()

    # blocks

    def known(self, bid: bytes) -> bool:
        return bid in self.blocks or self.repo.has_block(bid)

    def is_delta(self, bid: bytes) -> bool:
        # The published copy first: publish() keeps it over ours, so it decides.
        loc = self.repo.block_location(bid)
        if loc is not None:
            return loc.ref is not None
        pend = self.blocks.get(bid)
        return pend is not None and pend.ref is not None

    def add_encoded(self, bid: bytes, raw_len: int, enc: codecs.Encoded, check: int | None) -> bool:
        """Append an encoded block unless it is already stored; True if written. `check` is
        blocks.raw_check of the raw bytes whose blake3 is `bid`, computed from those bytes by
        the caller (None when it has not: reads of the block then check its blake3)."""
        if self.known(bid):
            return False
        pack, offset = self._appender.append(bid, enc.buffers)
        _fault_point("after-append")
        n = enc.nbytes
        self.blocks[bid] = PendingBlock(enc.spec, pack, offset, n, raw_len, enc.ref, check)
        self.bytes_written += n
        return True

    def put_raw(self, raw: bytes | memoryview, dtype: str | None = None) -> bytes:
        """Hash, encode and store one block in the calling thread; returns its id."""
        bid = block_id(raw)
        if not self.known(bid):
            enc = codecs.encode_block(raw, dtype=dtype, level=self.repo.config.zstd_level)
            self.add_encoded(bid, len(raw), enc, raw_check(bid, raw))
        return bid

    # objects

    def put_object(self, obj: StoreObject) -> bytes:
        data = obj.encode()
        oid = blake3.blake3(data).digest()
        self.objects.setdefault(oid, data)
        return oid

    def put_object_bytes(self, oid: bytes, data: bytes) -> None:
        """Add an already-encoded object (from a remote), checked against its id first."""
        decode_object(data, expected_id=oid)
        self.objects.setdefault(oid, data)

    def put_stats(self, b: bytes, a: bytes, dtype: str, st: DeltaStats) -> None:
        self.stats[stats_key(b, a, dtype)] = st.encode()

    def put_input_commit(self, folder: bytes, cid: bytes) -> None:
        """Remember `cid` as the commit of `folder` (a merge input given as a path): the next
        merge naming the unchanged folder names the same commit, so its plan (and memo) is the
        same as well."""
        self.input_commits[_INPUT_COMMIT + folder] = cid

    def put_stat_entry(self, path: bytes, stamp: FileStamp, kind: str, oid: bytes) -> None:
        """Remember that the file at `path`, as `stamp` describes it, is stored as `oid`; kept
        when the session publishes, with the publish time as the entry's write time."""
        self.stat_cache[path] = (stamp, kind, oid)

    # publish

    def publish(self, ref_updates: Iterable[RefUpdate] = ()) -> None:
        """fsync the packs, then make everything visible in one LMDB transaction."""
        self._appender.sync()
        if self.blocks:
            self.repo.upgrade_format()  # entries with checks, sparse planes (formats 2, 3)
        _fault_point("before-publish")
        idx = self.repo.index
        with idx.write() as txn:
            codec_ids: dict[str, int] = {}
            for bid, pb in self.blocks.items():
                if txn.get(bid, db=idx.db("blocks")) is not None:
                    continue  # a concurrent writer published it first; keep theirs
                cid = codec_ids.get(pb.spec)
                if cid is None:
                    cid = codec_ids[pb.spec] = codec_id(txn, idx, pb.spec)
                loc = BlockLocation(
                    pb.pack, pb.offset, pb.length, pb.raw_len, cid, pb.ref, pb.check
                )
                txn.put(bid, loc.encode(), db=idx.db("blocks"))
            for oid, data in self.objects.items():
                txn.put(oid, _wrap_object(data), db=idx.db("objects"), overwrite=False)
            for key, value in self.stats.items():
                txn.put(key, value, db=idx.db("stats"), overwrite=False)
            written = time.time_ns()  # after every read the entries describe
            block_size = self.repo.config.block_size
            for key, (stamp, kind, oid) in self.stat_cache.items():
                entry = StatEntry(stamp, written, block_size, kind, oid)
                txn.put(key, entry.encode(), db=idx.db("statcache"))
            for key, cid in self.input_commits.items():
                txn.put(key, cid, db=idx.db("statcache"))
            for (db_name, key), value in self.index_puts.items():
                if value is None:
                    txn.delete(key, db=idx.db(db_name))
                else:
                    txn.put(key, value, db=idx.db(db_name))
            now = time.time()
            for up in ref_updates:
                _apply_ref_update(txn, idx, up, now)
            _fault_point("inside-publish")
            self._committing = True  # past this point the commit may or may not have happened
        self._committing = False
        self.published = True
        for cb in self.on_publish:
            cb()


def _apply_ref_update(txn: Any, idx: Index, up: RefUpdate, now: float) -> None:
    refs = idx.db("refs")
    key = up.name.encode()
    raw = txn.get(key, db=refs)
    cur = bytes.fromhex(bytes(raw).decode()) if raw is not None else None
    if up.old is not ... and cur != up.old:
        raise RefError(f"{up.name} moved while this command ran; try again")
    if up.new is None:
        txn.delete(key, db=refs)
    else:
        txn.put(key, up.new.hex().encode(), db=refs)
    # reflog: append with the next sequence number for this ref
    log = idx.db("reflog")
    prefix = key + b"\x00"
    seq = 0
    cur_log = txn.cursor(db=log)
    if cur_log.set_range(prefix + b"\xff" * 8):
        if cur_log.prev() and bytes(cur_log.key()).startswith(prefix):
            seq = _SEQ.unpack(bytes(cur_log.key())[len(prefix) :])[0] + 1
    elif cur_log.last() and bytes(cur_log.key()).startswith(prefix):
        seq = _SEQ.unpack(bytes(cur_log.key())[len(prefix) :])[0] + 1
    entry = {
        "old": cur.hex() if cur else None,
        "new": up.new.hex() if up.new else None,
        "time": now,
        "message": up.message,
    }
    txn.put(prefix + _SEQ.pack(seq), json.dumps(entry).encode(), db=log)


@contextlib.contextmanager
def in_progress(repo: Repository) -> Iterator[None]:
    """Hold the gc lock shared, so gc waits until a multi-session command has finished
    (store/gc.py)."""
    fd = repo.gc_lock(exclusive=False)
    try:
        _fault_point("in-progress")
        yield
    finally:
        os.close(fd)


def _fault_point(name: str) -> None:
    """Test-only hook: MERGESTORE_FAULT=<name>[@N] kills the process here (see faults.py)."""
    faults.kill_point(name)
