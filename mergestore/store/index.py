"""The LMDB index: block locations, objects, refs, reflogs, delta statistics, codec specs.

Databases (all keys are bytes):
  blocks   block id (32)            -> BlockLocation
  objects  object id (32)           -> type byte | encoding byte | payload
  refs     ref name (utf-8)         -> value (hex commit id, or "ref: <name>" for HEAD)
  reflog   ref name | 0 | seq (u64) -> JSON entry
  stats    id B | id A | dtype      -> DeltaStats
  codecs   "s:" spec / "i:" u16     -> codec chain ids (blocks store a u16 instead of the spec)
  meta     misc counters
  statcache real path of an input file -> its stat and stored object (store/statcache.py)
  merges   merge cache state (store/merges.py): plan -> commit memo, lazy trees, evictions,
           resume journals
  promised block id (32)            -> BlockLocation in a remote pack (lazy clones, promised.py)
Only store/ touches this module.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import Any

import lmdb

from mergestore.errors import CorruptionError
from mergestore.fast_dataclass import dataclass

DB_NAMES = (
    "blocks",
    "objects",
    "refs",
    "reflog",
    "stats",
    "codecs",
    "meta",
    "statcache",
    "merges",
    "promised",
)
MAP_SIZE = 1 << 40  # address space only; the file grows as needed

_LOC = struct.Struct("<IQIQH")
_CHECK = struct.Struct("<Q")


@dataclass(frozen=True)
class BlockLocation:
    """Where a stored block is: pack, offset, stored and raw lengths, codec, delta reference,
    and the check of its raw bytes (blocks.raw_check) when it was computed here."""

    pack: int
    offset: int
    length: int  # stored (encoded) bytes
    raw_len: int
    codec: int  # id of the codec chain spec
    ref: bytes | None = None  # reference block for delta codecs
    check: int | None = None  # None: entries of format 1, promised ones: read checks blake3

    def encode(self) -> bytes:
        head = _LOC.pack(self.pack, self.offset, self.length, self.raw_len, self.codec)
        tail = _CHECK.pack(self.check) if self.check is not None else b""
        return head + (self.ref or b"") + tail

    @classmethod
    def decode(cls, value: bytes) -> BlockLocation:
        extra = len(value) - _LOC.size
        if extra not in (0, 32, _CHECK.size, 32 + _CHECK.size):
            raise CorruptionError("corrupt block index entry")
        pack, offset, length, raw_len, codec = _LOC.unpack_from(value)
        ref = bytes(value[_LOC.size : _LOC.size + 32]) if extra >= 32 else None
        check = _CHECK.unpack_from(value, len(value) - _CHECK.size)[0] if extra % 32 else None
        return cls(pack, offset, length, raw_len, codec, ref, check)


_STATS = struct.Struct("<ddddQQ")


@dataclass(frozen=True)
class DeltaStats:
    """Exact fp64 statistics of the delta between block B and block A at the same position."""

    l2: float  # ||B - A||_2
    l1: float  # ||B - A||_1
    max_abs: float  # max |B - A|
    l2_b: float  # ||B||_2
    nnz: int  # elements where B != A
    numel: int
    # ||A||_2 and <A,B> are derivable: ||A||^2 = ||B||^2 - 2<A,B> + ... so we keep dot as well
    dot: float = 0.0  # <A, B>
    l2_a: float = 0.0

    def encode(self) -> bytes:
        return _STATS.pack(self.l2, self.l1, self.max_abs, self.l2_b, self.nnz, self.numel) + (
            struct.pack("<dd", self.dot, self.l2_a)
        )

    @classmethod
    def decode(cls, value: bytes) -> DeltaStats:
        if len(value) != _STATS.size + 16:
            raise CorruptionError("corrupt statistics entry")
        l2, l1, mx, l2b, nnz, numel = _STATS.unpack_from(value)
        dot, l2a = struct.unpack_from("<dd", value, _STATS.size)
        return cls(l2, l1, mx, l2b, nnz, numel, dot, l2a)


def stats_key(b: bytes, a: bytes, dtype: str) -> bytes:
    return b + a + dtype.encode()


_OPEN: dict[str, list] = {}  # LMDB allows one environment per path per process: share it
_OPEN_LOCK = threading.Lock()


class Index:
    """An open LMDB environment with named databases (shared within a process)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._key = str(path.resolve())
        with _OPEN_LOCK:
            entry = _OPEN.get(self._key)
            if entry is None:
                env = lmdb.open(
                    self._key,
                    map_size=MAP_SIZE,
                    max_dbs=len(DB_NAMES) + 2,
                    max_readers=512,
                    subdir=True,
                    readahead=False,
                    meminit=False,
                )
                dbs = {name: env.open_db(name.encode()) for name in DB_NAMES}
                entry = _OPEN[self._key] = [env, dbs, 0]
            entry[2] += 1
        self.env, self.dbs = entry[0], entry[1]
        self._closed = False
        self.path = path

    def files_size(self) -> int:
        """Bytes of the LMDB files on disk (data and lock file)."""
        return sum(os.path.getsize(p) for p in self.path.iterdir() if p.is_file())

    def db(self, name: str):
        return self.dbs[name]

    def read(self):
        return self.env.begin(write=False)

    def write(self):
        return self.env.begin(write=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _OPEN_LOCK:
            entry = _OPEN.get(self._key)
            if entry is None:
                return
            entry[2] -= 1
            if entry[2] <= 0:
                del _OPEN[self._key]
                entry[0].close()


def codec_id(txn: Any, idx: Index, spec: str) -> int:
    """The id of a codec spec in this index, allocated (in txn) on first use."""
    key = b"s:" + spec.encode()
    raw = txn.get(key, db=idx.db("codecs"))
    if raw is not None:
        return struct.unpack("<H", raw)[0]
    nxt = txn.get(b"next_codec_id", db=idx.db("meta"))
    cid = struct.unpack("<H", nxt)[0] if nxt else 1
    txn.put(key, struct.pack("<H", cid), db=idx.db("codecs"))
    txn.put(b"i:" + struct.pack("<H", cid), spec.encode(), db=idx.db("codecs"))
    txn.put(b"next_codec_id", struct.pack("<H", cid + 1), db=idx.db("meta"))
    return cid
