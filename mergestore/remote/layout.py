"""The remote layout: key names, the pack index and object bundle encodings, and their checks.

    <root>/mergestore-remote.json       {"format": F, "block_size": N}   created once; F only rises
    <root>/packs/<H>.pack               block entries, the local pack format (immutable)
    <root>/packs/<H>.idx                that pack's index; H = blake3 of the .idx bytes
    <root>/objects/<H>.bundle           objects and kept statistics of one push; H = blake3
    <root>/refs/heads/<name>            "<hex commit id>\\n"  (mutable: conditional writes)
    <root>/refs/tags/<name>

Everything read from a remote is untrusted: names are checked against a strict pattern, an
index or bundle must hash to its name, every index entry is bounds-checked against its pack,
and objects are checked against their ids before use (see docs/format.md).
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Iterable

import blake3
import zstandard

from mergestore.errors import CorruptionError, RefError
from mergestore.fast_dataclass import dataclass
from mergestore.store.codecs import parse_spec, spec_uses_reference
from mergestore.store.codecs.byteplane import BytePlane
from mergestore.store.index import DeltaStats
from mergestore.store.packs import ENTRY_HEADER, ENTRY_MAGIC, PACK_MAGIC
from mergestore.store.refs import HEADS, TAGS, check_ref_name

# 1: the first layout. 2: packs may hold byte-plane blocks with sparse ("s") planes (the
# codecs of store format 3). A push marks the remote with the lowest format that describes
# what it holds (format_for_specs), so an older tool reads a remote that needs nothing new and
# refuses, with a version error, one that does.
FORMAT = 2
FORMAT_KEY = "mergestore-remote.json"
PACKS = "packs/"
OBJECTS = "objects/"
REFS = "refs/"
IDX_MAGIC = b"MSRIDX01"
BUNDLE_MAGIC = b"MSRBDL01"
MAX_RAW_BLOCK = (1 << 30) + (1 << 20)  # the largest block a store can make, with room
MAX_BUNDLE = 4 << 30  # decompressed bundle size a fetch accepts
MAX_REF_BYTES = 200
_HEX64 = re.compile(r"[0-9a-f]{64}")
_IDX_HEAD = struct.Struct("<32sQIQHB")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")


class RemoteCorruptionError(CorruptionError):
    """Something read from a remote is malformed or does not match its name."""


def pack_key(h: str) -> str:
    return f"{PACKS}{h}.pack"


def idx_key(h: str) -> str:
    return f"{PACKS}{h}.idx"


def bundle_key(h: str) -> str:
    return f"{OBJECTS}{h}.bundle"


def content_name(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def name_of_key(key: str, prefix: str, suffix: str) -> str | None:
    """The 64-hex name in `prefix<H>suffix`, or None if `key` is not such a key."""
    if not (key.startswith(prefix) and key.endswith(suffix)):
        return None
    h = key[len(prefix) : len(key) - len(suffix)]
    return h if _HEX64.fullmatch(h) else None


# ----- refs -----------------------------------------------------------------------------------


def check_remote_ref(key: str) -> str:
    """A ref key from the remote: refs/heads/NAME or refs/tags/NAME with a valid NAME."""
    for prefix, what in ((HEADS, "branch"), (TAGS, "tag")):
        if key.startswith(prefix):
            try:
                check_ref_name(key[len(prefix) :], what)
            except RefError:
                break
            return key
    raise RemoteCorruptionError(f"remote ref {key[:100]!r} has an invalid name")


def encode_ref(cid: bytes) -> bytes:
    return cid.hex().encode() + b"\n"


def decode_ref(key: str, data: bytes) -> bytes:
    text = data[:MAX_REF_BYTES].decode(errors="replace").strip()
    if len(data) > MAX_REF_BYTES or not _HEX64.fullmatch(text):
        raise RemoteCorruptionError(f"remote ref {key} holds a malformed value")
    return bytes.fromhex(text)


def format_marker(block_size: int, fmt: int = FORMAT) -> bytes:
    return json.dumps({"format": fmt, "block_size": block_size}).encode() + b"\n"


def format_for_specs(specs: Iterable[str]) -> int:
    """The lowest remote format whose packs can hold blocks of these codec specs."""
    for spec in set(specs):
        if any(isinstance(st, BytePlane) and "s" in st.planes for st in parse_spec(spec)):
            return 2
    return 1


def parse_format_marker(data: bytes) -> dict[str, int]:
    try:
        d = json.loads(data)
        fmt = int(d["format"])
        block_size = int(d.get("block_size", 1 << 20))
    except (ValueError, KeyError, TypeError) as e:
        raise RemoteCorruptionError(f"{FORMAT_KEY} is malformed") from e
    if fmt > FORMAT:
        raise RemoteCorruptionError(f"remote format {fmt} is newer than this tool ({FORMAT})")
    if fmt < 1 or not 4096 <= block_size <= (1 << 30):
        raise RemoteCorruptionError(f"{FORMAT_KEY} is malformed")
    return {"format": fmt, "block_size": block_size}


# ----- pack indexes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IdxEntry:
    """Where one block's stored bytes sit in a remote pack."""

    block: bytes
    offset: int  # payload offset in the pack
    length: int  # stored bytes
    raw_len: int
    spec: str  # codec chain spec
    ref: bytes | None


@dataclass(frozen=True)
class PackIndex:
    """A remote pack's index: its size and its entries."""

    pack_size: int
    entries: tuple[IdxEntry, ...]


def encode_index(idx: PackIndex) -> bytes:
    specs: dict[str, int] = {}
    for e in idx.entries:
        specs.setdefault(e.spec, len(specs))
    out = io.BytesIO()
    out.write(IDX_MAGIC)
    out.write(_U32.pack(len(specs)))
    for spec in specs:
        raw = spec.encode()
        out.write(_U16.pack(len(raw)) + raw)
    out.write(_U32.pack(len(idx.entries)))
    for e in idx.entries:
        flag = 1 if e.ref is not None else 0
        out.write(_IDX_HEAD.pack(e.block, e.offset, e.length, e.raw_len, specs[e.spec], flag))
        if e.ref is not None:
            out.write(e.ref)
    out.write(_U64.pack(idx.pack_size))
    return out.getvalue()


def decode_index(data: bytes, name: str) -> PackIndex:
    """Parse and check a pack index: magic, specs, entries inside the pack, no overlaps."""

    def bad(why: str) -> RemoteCorruptionError:
        return RemoteCorruptionError(f"remote pack index {name[:16]}: {why}")

    mv = memoryview(data)
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(mv):
            raise bad("truncated")
        part = mv[pos : pos + n]
        pos += n
        return part

    if bytes(take(len(IDX_MAGIC))) != IDX_MAGIC:
        raise bad("bad magic")
    (n_specs,) = _U32.unpack(take(4))
    if n_specs > 4096:
        raise bad("too many codec specs")
    specs = []
    for _ in range(n_specs):
        (n,) = _U16.unpack(take(2))
        try:
            spec = bytes(take(n)).decode()
            parse_spec(spec)
        except (UnicodeDecodeError, CorruptionError) as e:
            raise bad(f"invalid codec spec ({e})") from None
        specs.append(spec)
    (n_entries,) = _U32.unpack(take(4))
    if n_entries > len(data) // _IDX_HEAD.size:
        raise bad("entry count larger than the index")
    raw_entries = []
    for _ in range(n_entries):
        bid, off, length, raw_len, spec_i, flag = _IDX_HEAD.unpack(take(_IDX_HEAD.size))
        if flag not in (0, 1) or spec_i >= len(specs):
            raise bad("malformed entry")
        ref = bytes(take(32)) if flag else None
        raw_entries.append((bytes(bid), off, length, raw_len, specs[spec_i], ref))
    (pack_size,) = _U64.unpack(take(8))
    if pos != len(mv):
        raise bad("trailing bytes")
    entries = []
    prev_end = len(PACK_MAGIC)
    for bid, off, length, raw_len, spec, ref in sorted(raw_entries, key=lambda t: t[1]):
        if off < prev_end + ENTRY_HEADER.size or off + length > pack_size:
            raise bad(f"entry for block {bid.hex()[:12]} lies outside the pack or overlaps")
        if raw_len > MAX_RAW_BLOCK or length > MAX_RAW_BLOCK + (1 << 20):
            raise bad(f"entry for block {bid.hex()[:12]} is too large")
        if (ref is not None) != spec_uses_reference(spec):
            raise bad(f"entry for block {bid.hex()[:12]}: reference does not match its codec")
        if ref == bid:
            raise bad(f"block {bid.hex()[:12]} names itself as its reference")
        prev_end = off + length
        entries.append(IdxEntry(bid, off, length, raw_len, spec, ref))
    return PackIndex(pack_size, tuple(entries))


def entry_header(bid: bytes, length: int) -> bytes:
    return ENTRY_HEADER.pack(ENTRY_MAGIC, bid, length)


# ----- object bundles -------------------------------------------------------------------------


@dataclass
class Bundle:
    """Objects (encoded, by id) and kept statistics (raw key -> raw value) of one push."""

    objects: dict[bytes, bytes]
    stats: dict[bytes, bytes]


def encode_bundle(b: Bundle) -> bytes:
    out = io.BytesIO()
    out.write(BUNDLE_MAGIC)
    out.write(_U32.pack(len(b.objects)))
    for data in b.objects.values():
        out.write(_U32.pack(len(data)) + data)
    out.write(_U32.pack(len(b.stats)))
    for k, v in b.stats.items():
        out.write(_U16.pack(len(k)) + k + _U16.pack(len(v)) + v)
    return zstandard.ZstdCompressor(level=3).compress(out.getvalue())


_STATS_LEN = len(DeltaStats(0, 0, 0, 0, 0, 0).encode())


def decode_bundle(data: bytes, name: str) -> Bundle:
    """Parse a bundle; each object's id is its hash (so objects are checked by construction)."""

    def bad(why: str) -> RemoteCorruptionError:
        return RemoteCorruptionError(f"remote object bundle {name[:16]}: {why}")

    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        body = reader.read(MAX_BUNDLE + 1)
    except zstandard.ZstdError:
        raise bad("not a zstd frame") from None
    if len(body) > MAX_BUNDLE:
        raise bad("too large")
    mv = memoryview(body)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(mv):
            raise bad("truncated")
        part = bytes(mv[pos : pos + n])
        pos += n
        return part

    if take(len(BUNDLE_MAGIC)) != BUNDLE_MAGIC:
        raise bad("bad magic")
    objects: dict[bytes, bytes] = {}
    (n,) = _U32.unpack(take(4))
    for _ in range(n):
        (length,) = _U32.unpack(take(4))
        obj = take(length)
        objects[blake3.blake3(obj).digest()] = obj
    stats: dict[bytes, bytes] = {}
    (n,) = _U32.unpack(take(4))
    for _ in range(n):
        (kl,) = _U16.unpack(take(2))
        key = take(kl)
        (vl,) = _U16.unpack(take(2))
        value = take(vl)
        if not 64 < kl <= 64 + 32 or vl != _STATS_LEN:
            raise bad("malformed statistics entry")
        stats[key] = value
    if pos != len(mv):
        raise bad("trailing bytes")
    return Bundle(objects, stats)
