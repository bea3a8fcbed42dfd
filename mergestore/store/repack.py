"""Re-encode stored blocks with the best codec (`mergestore repack`), crash-safely.

For stores written before a codec existed (or with delta codecs off): every block used by a
commit is decoded and encoded again; the new encoding replaces the stored one only when it is
clearly smaller. Entries written by store format 1 get the check of their raw bytes
(blocks.raw_check), computed from the bytes just read and compared with the block's blake3 id,
so later reads of them compare the check (docs/format.md, "Checks on read").

Delta candidates are the block at the same tensor position in the commit's base (`--base`),
or else its first parent, like `commit --base` does.

Invariant (docs/format.md): a delta's reference is never itself a delta. The plan keeps it by
construction (a block chosen as a reference is pinned as a non-delta; a block planned as a
delta is never offered as a reference), and the final state is checked again, inside the index
transaction, against every block entry, including entries that stay as they are.

Crash safety, like gc's pack rewrite: (1) new payloads go to fresh packs, which are fsynced;
(2) one LMDB transaction repoints the blocks; the old entries become dead bytes that
`mergestore gc` reclaims. Killed before (2) commits, nothing names the new packs (gc removes
them); after it, only the old entries are unreferenced. Readers that looked a block up before
(2) still read its old entry, which stays in place until gc.

Locking: the encode phase holds the gc lock shared, like a writer (gc cannot remove the fresh
packs, concurrent commits go on). The publish step converts it to exclusive, so no writer is
between choosing a reference and publishing a delta against it while blocks become deltas;
the conversion is not atomic, so the fresh packs are checked to be still there first.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from typing import Any

from mergestore.errors import MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.store import codecs
from mergestore.store.blocks import raw_check
from mergestore.store.index import BlockLocation, codec_id
from mergestore.store.locks import flock_wait
from mergestore.store.objects import BlobFile, Commit, TensorFile, decode_object
from mergestore.store.packs import ENTRY_HEADER, ENTRY_MAGIC, PackAppender
from mergestore.store.repo import Repository, _fault_point, _unwrap_object

# A new encoding replaces the stored one only if it is smaller by both of these: re-writing a
# block for a few bytes is not worth the dead space, and the margin keeps repeated runs stable.
MIN_GAIN_FRACTION = 0.01
MIN_GAIN_BYTES = 64
NO_DELTA = frozenset({"raw", "zstd", "bplane"})

Progress = Callable[[int], None]


@dataclass
class RepackReport:
    """What a repack examined, re-encoded and freed."""

    dry_run: bool
    delta: bool
    blocks_examined: int = 0
    blocks_reencoded: int = 0
    deltas_before: int = 0  # among the examined blocks
    deltas_after: int = 0
    raw_bytes: int = 0  # raw bytes of the examined blocks
    stored_bytes_before: int = 0  # their stored bytes before
    stored_bytes_after: int = 0  # and after (or, for a dry run, what they would be)
    bytes_written: int = 0  # new payload bytes appended to fresh packs
    dead_bytes: int = 0  # old payloads now unreferenced: `mergestore gc` reclaims them
    skipped_concurrent: int = 0  # replacements dropped because the store changed meanwhile
    checks_added: int = 0  # entries of format 1 given the check of their raw bytes
    packs_created: list[int] = field(default_factory=list)
    by_codec_after: dict[str, int] = field(default_factory=dict)  # codec -> blocks re-encoded
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["bytes_saved"] = self.stored_bytes_before - self.stored_bytes_after
        return d


@dataclass(frozen=True)
class _New:
    """A replacement entry for one block."""

    spec: str
    pack: int
    offset: int
    length: int
    ref: bytes | None


@dataclass
class _Plan:
    """The blocks a repack examines and the delta references it picked."""

    locs: dict[bytes, BlockLocation]  # every block entry in the index
    dtypes: dict[bytes, str | None]  # examined blocks (used by some commit) -> dtype
    refs: dict[bytes, bytes] = field(default_factory=dict)  # block -> planned delta reference


# ----- planning ------------------------------------------------------------------------------


def _commits(repo: Repository) -> dict[bytes, Commit]:
    """Every decodable commit object in the store (reachable or not: its blocks are stored)."""
    out: dict[bytes, Commit] = {}
    idx = repo.index
    with idx.read() as txn:
        for k, v in txn.cursor(db=idx.db("objects")):
            data = _unwrap_object(bytes(v))
            if data.startswith(b"commit\n"):
                obj = decode_object(data, expected_id=bytes(k))
                if isinstance(obj, Commit):
                    out[bytes(k)] = obj
    return out


def _tensors(
    repo: Repository, commit: Commit
) -> Iterator[tuple[str, str, tuple[int, ...], tuple[bytes, ...]]]:
    """(name, dtype, shape, blocks) of every tensor; ("", None-ish) rows for other blocks."""
    tree = repo.get_tree(commit.tree)
    for e in tree.entries:
        f = repo.get_file(e.object)
        if isinstance(f, TensorFile):
            header = repo.get_file(f.header)
            assert isinstance(header, BlobFile)
            yield "", "", (), header.blocks
            for t in f.tensors:
                yield t.name, t.dtype, t.shape, t.blocks
        else:
            yield "", "", (), f.blocks


def _reference_commit(commits: dict[bytes, Commit], c: Commit) -> bytes | None:
    ref = c.base if c.base is not None else (c.parents[0] if c.parents else None)
    return ref if ref in commits else None


def make_plan(repo: Repository, *, delta: bool) -> _Plan:
    """Which blocks to examine, with their dtypes, and each block's delta reference."""
    locs = dict(repo.iter_blocks())
    commits = _commits(repo)
    plan = _Plan(locs=locs, dtypes={})
    tensors: dict[bytes, dict[str, tuple[str, tuple[int, ...], tuple[bytes, ...]]]] = {}
    for cid in sorted(commits):
        per_name: dict[str, tuple[str, tuple[int, ...], tuple[bytes, ...]]] = {}
        for name, dtype, shape, blocks in _tensors(repo, commits[cid]):
            for b in blocks:
                if b in locs and (b not in plan.dtypes or plan.dtypes[b] is None):
                    plan.dtypes[b] = dtype or None
            if name:
                per_name[name] = (dtype, shape, blocks)
        tensors[cid] = per_name
    if not delta:
        return plan

    depth: dict[bytes, int] = {}

    def depth_of(cid: bytes) -> int:
        chain = []
        cur: bytes | None = cid
        while cur is not None and cur not in depth and cur not in chain:
            chain.append(cur)
            cur = _reference_commit(commits, commits[cur])
        d = depth.get(cur, -1) if cur is not None else -1
        for c in reversed(chain):
            d += 1
            depth[c] = d
        return depth[cid]

    # Oldest layer first: a base's blocks are pinned as references before its fine-tunes'
    # blocks are considered as references for anything else.
    pinned: set[bytes] = set()
    for cid in sorted(commits, key=lambda c: (depth_of(c), c)):
        ref_cid = _reference_commit(commits, commits[cid])
        if ref_cid is None:
            continue
        ref_tensors = tensors[ref_cid]
        for name, (dtype, shape, blocks) in tensors[cid].items():
            rt = ref_tensors.get(name)
            if rt is None or rt[0] != dtype or rt[1] != shape or len(rt[2]) != len(blocks):
                continue
            for b, r in zip(blocks, rt[2], strict=True):
                if b == r or b in plan.refs or b in pinned or r in plan.refs:
                    continue
                if b not in plan.dtypes or r not in locs:
                    continue
                if locs[b].raw_len != locs[r].raw_len:
                    continue
                plan.refs[b] = r
                pinned.add(r)
    return plan


# ----- the final state and its invariant -----------------------------------------------------


def _enforce_invariant(
    locs: dict[bytes, BlockLocation], new: dict[bytes, _New], plain: dict[bytes, _New]
) -> int:
    """Drop replacements until no delta's reference is itself a delta; returns how many.

    `new` maps blocks to their replacement; `plain` holds non-delta replacements that may be
    used instead of a kept delta entry (a planned reference whose stored form is a delta).
    """
    dropped = 0
    while True:

        def ref_of(b: bytes) -> bytes | None:
            n = new.get(b)
            return n.ref if n is not None else locs[b].ref

        referenced = {r for b in locs if (r := ref_of(b)) is not None}
        bad = [b for b in referenced if b in locs and ref_of(b) is not None]
        if not bad:
            return dropped
        # First make planned references plain (the plan's intent), then look again: that
        # alone often resolves the rest (a block and its reference trading places).
        to_plain = [b for b in bad if b in plain and new.get(b) is not plain[b]]
        if to_plain:
            for b in to_plain:
                new[b] = plain[b]
            continue
        for b in bad:
            if b in new and locs[b].ref is None:
                del new[b]  # keep the stored non-delta entry
            else:  # cannot happen for a consistent plan; never publish a chain
                raise MergestoreError(
                    f"repack: block {b.hex()[:12]} would be both a delta and a reference"
                )
            dropped += 1


# ----- running -------------------------------------------------------------------------------


def repack(
    repo: Repository,
    *,
    dry_run: bool = False,
    delta: bool | None = None,
    progress: Progress | None = None,
    workers: int = 2,
) -> RepackReport:
    """Re-encode every block used by a commit; see the module docstring."""
    t0 = time.perf_counter()
    use_delta = repo.config.delta_codecs if delta is None else delta
    rep = RepackReport(dry_run=dry_run, delta=use_delta)
    lock_fd = repo.gc_lock(exclusive=False)
    try:
        plan = make_plan(repo, delta=use_delta)
        examined = sorted(plan.dtypes)
        rep.blocks_examined = len(examined)
        for b in examined:
            loc = plan.locs[b]
            rep.raw_bytes += loc.raw_len
            rep.stored_bytes_before += loc.length
            rep.deltas_before += loc.ref is not None
        new, plain, checks = _encode_all(repo, plan, examined, rep, dry_run, progress, workers)
        _enforce_invariant(plan.locs, new, plain)
        if dry_run:
            rep.checks_added = len(checks)
            _summarize(rep, plan, new)
        else:
            _publish(repo, plan, new, plain, checks, rep, lock_fd)
    finally:
        os.close(lock_fd)
    rep.seconds = time.perf_counter() - t0
    return rep


def _encode_all(
    repo: Repository,
    plan: _Plan,
    examined: list[bytes],
    rep: RepackReport,
    dry_run: bool,
    progress: Progress | None,
    workers: int,
) -> tuple[dict[bytes, _New], dict[bytes, _New], dict[bytes, int]]:
    """Encode each examined block; append the winners to fresh packs (unless dry_run).
    Also returns the raw check (blocks.raw_check) of each block whose entry has none: its
    bytes were just read and checked against its blake3 id."""
    level = repo.config.zstd_level
    pinned = set(plan.refs.values())
    checks: dict[bytes, int] = {}

    def work(b: bytes) -> tuple[bytes, codecs.Encoded, codecs.Encoded | None]:
        loc = plan.locs[b]
        raw = repo.read_block(b, location=loc)  # no check in the entry: blake3 was compared
        if loc.check is None:
            checks[b] = raw_check(b, raw)
        r = plan.refs.get(b)
        ref_raw = repo.read_block(r, location=plan.locs[r]) if r is not None else None
        dtype = plan.dtypes[b]
        enc = codecs.encode_block(
            raw, dtype=dtype, level=level, reference=ref_raw, reference_id=r, allowed=None
        )
        # A planned reference stored as a delta must become plain even if that is larger.
        forced = None
        if loc.ref is not None and b in pinned:
            forced = enc if enc.ref is None else codecs.encode_block(raw, dtype=dtype, level=level)
        return b, enc, forced

    new: dict[bytes, _New] = {}
    plain: dict[bytes, _New] = {}
    appender = None if dry_run else PackAppender(repo.pack_dir, fresh=True)
    fake_offset = 0

    def put(b: bytes, enc: codecs.Encoded) -> _New:
        nonlocal fake_offset
        payload = bytes(enc.payload) if isinstance(enc.payload, memoryview) else enc.payload
        n = len(payload)
        if appender is None:
            fake_offset += n
            return _New(enc.spec, 0, fake_offset, n, enc.ref)
        pid, off = appender.append(b, payload)
        _fault_point("repack-after-append")
        rep.bytes_written += n
        return _New(enc.spec, pid, off, n, enc.ref)

    done = False
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            # Bounded look-ahead keeps memory flat on big stores.
            window = 8 * max(1, workers)
            pending = []
            it = iter(examined)
            for b in it:
                pending.append(pool.submit(work, b))
                if len(pending) >= window:
                    _take(pending.pop(0).result(), plan, new, plain, put, progress)
            for fut in pending:
                _take(fut.result(), plan, new, plain, put, progress)
        if appender is not None:
            appender.sync()
            rep.packs_created = sorted(appender.start_sizes)
        done = True
    finally:
        if appender is not None:
            if not done:
                appender.rollback()
            appender.close()
    _fault_point("repack-after-sync")
    return new, plain, checks


def _take(
    result: tuple[bytes, codecs.Encoded, codecs.Encoded | None],
    plan: _Plan,
    new: dict[bytes, _New],
    plain: dict[bytes, _New],
    put: Callable[[bytes, codecs.Encoded], _New],
    progress: Progress | None,
) -> None:
    b, enc, forced = result
    loc = plan.locs[b]
    n = memoryview(enc.payload).nbytes
    gain = loc.length - n
    if gain >= MIN_GAIN_BYTES and gain >= MIN_GAIN_FRACTION * loc.length:
        entry = put(b, enc)
        new[b] = entry
        if entry.ref is None:
            plain[b] = entry
    if forced is not None and b not in plain:
        plain[b] = put(b, forced)
    if progress is not None:
        progress(loc.raw_len)


def _summarize(rep: RepackReport, plan: _Plan, new: dict[bytes, _New]) -> None:
    rep.blocks_reencoded = len(new)
    after = deltas = 0
    for b in plan.dtypes:
        n = new.get(b)
        loc = plan.locs.get(b)
        if loc is None:  # removed meanwhile (cannot happen under the lock)
            continue
        after += n.length if n is not None else loc.length
        deltas += (n.ref if n is not None else loc.ref) is not None
        if n is not None:
            rep.dead_bytes += loc.length
            name = "+".join(codecs.spec_codec_names(n.spec))
            rep.by_codec_after[name] = rep.by_codec_after.get(name, 0) + 1
    rep.stored_bytes_after = after
    rep.deltas_after = deltas


def _publish(
    repo: Repository,
    plan: _Plan,
    new: dict[bytes, _New],
    plain: dict[bytes, _New],
    checks: dict[bytes, int],
    rep: RepackReport,
    lock_fd: int,
) -> None:
    """Exclusive lock, check the fresh packs and entries, repoint (and add the checks of
    entries that had none) in one transaction."""
    if not new and not checks:
        _summarize(rep, plan, new)
        return
    flock_wait(
        lock_fd,
        repo.gc_lock_path,
        fcntl.LOCK_EX,  # our shared lock becomes exclusive: waits for running writers
        repo.lock_timeout,
        "running writers to finish",
        repo.on_lock_wait,
    )
    # Converting the lock drops the shared one first: a gc may have run in between and removed
    # or emptied our packs (and a writer may have appended to an emptied one). Check that every
    # entry we are about to publish is still where we wrote it.
    repo.packs.close()  # no stale descriptors of packs gc may have replaced
    for b, n in list(new.items()) + list(plain.items()):
        if not _entry_intact(repo, b, n):
            raise MergestoreError(
                "repack: the new packs changed while repack waited for writers (a gc ran?); "
                "nothing was changed, run repack again"
            )
    repo.upgrade_format()  # entries with checks, sparse planes (formats 2, 3)
    idx = repo.index
    with idx.write() as txn:
        db = idx.db("blocks")
        current: dict[bytes, BlockLocation] = {}
        for k, v in txn.cursor(db=db):
            current[bytes(k)] = BlockLocation.decode(bytes(v))
        # Entries that moved or vanished meanwhile keep what they have now.
        for b in list(new):
            r = new[b].ref
            if current.get(b) != plan.locs.get(b) or (r is not None and r not in current):
                del new[b]
                rep.skipped_concurrent += 1
        plain = {b: p for b, p in plain.items() if current.get(b) == plan.locs.get(b)}
        rep.skipped_concurrent += _enforce_invariant(current, new, plain)
        codec_ids: dict[str, int] = {}
        for b, n in new.items():
            cid = codec_ids.get(n.spec)
            if cid is None:
                cid = codec_ids[n.spec] = codec_id(txn, idx, n.spec)
            old = current[b]
            check = old.check if old.check is not None else checks.get(b)
            txn.put(
                b,
                BlockLocation(n.pack, n.offset, n.length, old.raw_len, cid, n.ref, check).encode(),
                db=db,
            )  # the same raw bytes: the same check
        for b, check in checks.items():
            loc = current.get(b)
            if loc is not None and loc.check is None and (b in new or loc == plan.locs.get(b)):
                rep.checks_added += 1
                if b not in new:
                    txn.put(b, dataclasses.replace(loc, check=check).encode(), db=db)
        _fault_point("repack-inside-index")
    plan.locs = current
    _summarize(rep, plan, new)


def _entry_intact(repo: Repository, bid: bytes, n: _New) -> bool:
    h = ENTRY_HEADER.size
    try:
        head = repo.packs.read(n.pack, n.offset - h, h)
    except (OSError, MergestoreError):
        return False
    magic, hid, length = ENTRY_HEADER.unpack_from(head)
    return magic == ENTRY_MAGIC and hid == bid and length == n.length
