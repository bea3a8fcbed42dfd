"""Check fetched blocks against their ids in bulk, cheaply: what a full fetch or clone runs.

A block id is the blake3 of the block's raw bytes, not of its stored form (docs/format.md),
so a fetched payload is decoded to be checked, as `fsck --full` does. Doing that one block at a
time (packs.verify_stored, which lazy reads use) cost a clone most of its CPU: each block got a
fresh output buffer (page faults on every megabyte), and each delta-coded block read its
reference through the store's verified read, which decodes and hashes the reference again.

Here every worker thread decodes into buffers it keeps. A delta whose reference is fetched in
the same batch (check_fetched; remote/download.py plans batches that way) is checked against
the reference's raw bytes as the batch's check of the reference just decoded them, so nothing
is decoded twice. A delta whose reference is already in the store has it decoded from its
stored bytes without hashing it again: if the reference's bytes were wrong, the delta would
decode to bytes that do not hash to the delta's id, and be refused. A reference that is itself
delta-coded (or only promised) is read the verified way.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mergestore.remote.layout import IdxEntry, RemoteCorruptionError
from mergestore.store import codecs
from mergestore.store.blocks import block_id, raw_check
from mergestore.store.promised import is_promised
from mergestore.store.repo import Repository
from mergestore.threads import default_workers, ordered_map

if TYPE_CHECKING:
    import numpy as np
else:
    from mergestore.lazy_numpy import np


class _Buffers(threading.local):
    """Per-thread decode buffers, grown on demand and reused (no fresh pages per block)."""

    def __init__(self) -> None:
        self.out = np.empty(0, dtype=np.uint8)
        self.ref = np.empty(0, dtype=np.uint8)

    def get(self, which: str, n: int) -> Any:
        buf = getattr(self, which)
        if len(buf) < n:
            buf = np.empty(n, dtype=np.uint8)
            setattr(self, which, buf)
        return buf[:n]


_buffers = _Buffers()


def _reference_raw(repo: Repository, ref: bytes) -> Any:
    """The raw bytes of a delta's reference block, decoded into this thread's buffer."""
    loc = repo.block_location(ref)
    if loc is None or loc.ref is not None or is_promised(loc):
        return repo.read_block(ref)  # missing (an error), a chain, or promised: the slow way
    payload = repo.packs.read(loc.pack, loc.offset, loc.length)
    out = _buffers.get("ref", loc.raw_len)
    codecs.decode_block_into(repo.codec_spec(loc.codec), payload, out)
    return out


def _decode_into(
    remote: str, pack: str, e: IdxEntry, payload: Any, out: Any, ref_raw: Any
) -> int | None:
    """Decode one payload into `out`; if its blake3 is the entry's id, the raw_check that
    local reads will compare it with, else None (a payload that does not decode is a
    RemoteCorruptionError)."""
    try:
        codecs.decode_block_into(e.spec, payload, out, reference=ref_raw)
        return raw_check(e.block, out) if block_id(out) == e.block else None
    except Exception as ex:  # a hostile payload may fail anywhere in a decoder
        raise RemoteCorruptionError(
            f"remote {remote}: block {e.block.hex()[:12]} in pack {pack[:16]} does not decode "
            f"({type(ex).__name__}: {str(ex)[:120]})"
        ) from None


def _mismatch(remote: str, pack: str, e: IdxEntry) -> RemoteCorruptionError:
    return RemoteCorruptionError(
        f"remote {remote}: block {e.block.hex()[:12]} in pack {pack[:16]} does not match "
        "its id (corrupt or tampered)"
    )


def check_block(repo: Repository, remote: str, pack: str, e: IdxEntry, payload: Any) -> int:
    """Decode one fetched payload and compare it with its id (RemoteCorruptionError if not);
    returns its raw_check."""
    try:
        ref_raw = _reference_raw(repo, e.ref) if e.ref is not None else None
    except Exception as ex:
        raise RemoteCorruptionError(
            f"remote {remote}: block {e.block.hex()[:12]} in pack {pack[:16]} does not decode "
            f"({type(ex).__name__}: {str(ex)[:120]})"
        ) from None
    check = _decode_into(remote, pack, e, payload, _buffers.get("out", e.raw_len), ref_raw)
    if check is None and e.ref is not None:
        # the reference as the store's verified read gives it: names a damaged local block
        raw = codecs.decode_block(e.spec, payload, reference=repo.read_block(e.ref))
        check = raw_check(e.block, raw) if block_id(raw) == e.block else None
    if check is None:
        raise _mismatch(remote, pack, e)
    return check


def check_blocks(
    repo: Repository, remote: str, pack: str, entries: Sequence[IdxEntry], payloads: Sequence[Any]
) -> dict[bytes, int]:
    """check_block over many payloads, on every core (the decoders release the GIL); the
    raw_check of each block."""
    return check_fetched(
        repo, remote, [(pack, e, p) for e, p in zip(entries, payloads, strict=True)]
    )


Fetched = tuple[str, IdxEntry, Any]  # (remote pack, its index entry, the payload as received)


class RawArena:
    """One reusable buffer for the raw bytes of the reference blocks of a fetched batch
    (grown on demand, so its pages are faulted in once per clone, not once per batch)."""

    def __init__(self) -> None:
        self.buf = np.empty(0, dtype=np.uint8)

    def take(self, n: int) -> Any:
        if len(self.buf) < n:
            self.buf = np.empty(n, dtype=np.uint8)
        return self.buf[:n]


def check_fetched(
    repo: Repository, remote: str, items: Sequence[Fetched], arena: RawArena | None = None
) -> dict[bytes, int]:
    """Check a batch of fetched blocks against their ids, on every core.

    A delta whose reference is in the same batch is checked against the reference's raw
    bytes as the batch's own check decoded them (into `arena`), so no block is decoded twice;
    other deltas read their reference from the store (it must be published already).
    Returns each block's raw_check, computed from the bytes that matched its id.
    """
    in_batch = {e.ref for _p, e, _b in items if e.ref is not None}
    refs = [it for it in items if it[1].ref is None and it[1].block in in_batch]
    rest = [it for it in items if not (it[1].ref is None and it[1].block in in_batch)]
    raw: dict[bytes, Any] = {}
    if refs:
        buf = (arena or RawArena()).take(sum(e.raw_len for _p, e, _b in refs))
        off = 0
        for _p, e, _b in refs:
            raw[e.block] = buf[off : off + e.raw_len]
            off += e.raw_len

    checks: dict[bytes, int] = {}

    def one_ref(i: int) -> None:
        pack, e, payload = refs[i]
        check = _decode_into(remote, pack, e, payload, raw[e.block], None)
        if check is None:
            raise _mismatch(remote, pack, e)
        checks[e.block] = check

    def one(i: int) -> None:
        pack, e, payload = rest[i]
        ref_raw = raw.get(e.ref) if e.ref is not None else None
        if ref_raw is None:
            checks[e.block] = check_block(repo, remote, pack, e, payload)
            return
        check = _decode_into(remote, pack, e, payload, _buffers.get("out", e.raw_len), ref_raw)
        if check is None:
            raise _mismatch(remote, pack, e)  # its reference was checked by its own id
        checks[e.block] = check

    workers = min(4, default_workers())
    for fn, n in ((one_ref, len(refs)), (one, len(rest))):
        for _ in ordered_map(fn, range(n), workers=workers):
            pass
    return checks
