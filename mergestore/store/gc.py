"""Garbage collection: mark what is reachable, sweep the rest, rewrite packs to free space.

Why gc never loses live data:

- It holds locks/gc.lock exclusively from start to end. Every writer holds that lock shared for
  its whole session, so while gc runs nothing is being written: the lock is the in-progress
  marker. A command that publishes in several sessions (a merge that first stores its inputs)
  should hold it shared throughout, with `in_progress(repo)` (store/repo.py).
- Roots are every ref, both sides of every reflog entry younger than the grace period, and
  every commit object younger than the grace period (commits published without a ref). A moved
  or deleted branch therefore stays recoverable by id for the grace period.
- From the roots it marks commits (parents, base, plan, run, the plan's input commits, a lazy
  merge's computed tree), trees, files, headers, blocks, and the delta reference of every live
  block. Blocks of merge journals younger than the grace period are live (a killed merge may
  resume); older journals expire. A killed merge's unpublished work (store/pending.py) is
  published first, so its journal counts the same way. An evicted merge's dropped blocks are
  not missing: its plan rebuilds them. If anything reachable is missing or corrupt, its
  children are unknown, so gc stops before changing anything.
- Packs are rewritten in three steps, each safe to kill: (1) copy the live entries of mostly
  dead packs into new packs and fsync them; (2) in one LMDB transaction, repoint the moved
  blocks and delete dead objects, blocks, statistics and expired reflog entries; (3) unlink the
  old packs. Killed before (2) commits, the index still names only the old packs and the new
  ones are unreferenced; killed after it, the old packs are unreferenced. The next gc removes
  whichever packs nothing references.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import field, replace
from typing import Any

from mergestore.errors import CorruptionError, MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.store import merges
from mergestore.store.index import BlockLocation
from mergestore.store.objects import (
    BlobFile,
    Commit,
    Plan,
    StoreObject,
    TensorFile,
    Tree,
    decode_object,
)
from mergestore.store.packs import (
    ENTRY_HEADER,
    ENTRY_MAGIC,
    PACK_MAGIC,
    PackAppender,
    list_pack_ids,
    pack_path,
)
from mergestore.store.repo import Repository, _fault_point, _unwrap_object
from mergestore.store.repo import in_progress as in_progress  # API callers' name for it

DEFAULT_GRACE = 14 * 86400.0  # two weeks, like git's reflog expiry for unreachable entries
DEFAULT_REPACK_THRESHOLD = 0.25  # rewrite a pack once at least this fraction of it is dead

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in '0', '90s', '30m', '2h', '14d', '2w' (a bare number is seconds); 'never'=inf."""
    t = text.strip().lower()
    if t in ("never", "inf", "forever"):
        return math.inf
    m = _DURATION.match(t)
    if not m:
        raise MergestoreError(f"not a duration: {text!r} (examples: 0, 30m, 2h, 14d, never)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class GcReport:
    """What a garbage collection kept and removed."""

    dry_run: bool
    grace: float
    roots: int = 0
    commits_live: int = 0
    objects_live: int = 0
    blocks_live: int = 0
    commits_removed: int = 0
    objects_removed: int = 0
    blocks_removed: int = 0
    stats_removed: int = 0
    reflog_expired: int = 0
    packs_rewritten: list[int] = field(default_factory=list)
    packs_removed: list[int] = field(default_factory=list)
    packs_created: list[int] = field(default_factory=list)
    bytes_copied: int = 0
    pack_bytes_before: int = 0
    pack_bytes_after: int = 0
    dead_bytes_left: int = 0  # dead bytes in packs below the repack threshold
    missing_blocks: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_reclaimed(self) -> int:
        return self.pack_bytes_before - self.pack_bytes_after

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["grace"] = None if math.isinf(self.grace) else self.grace
        d["bytes_reclaimed"] = self.bytes_reclaimed
        return d


@dataclass
class _Plan:
    """What gc found: live sets and everything it would remove."""

    refs: dict[str, bytes]
    roots: set[bytes]
    commits: set[bytes] = field(default_factory=set)
    objects: set[bytes] = field(default_factory=set)
    live_locs: dict[bytes, BlockLocation] = field(default_factory=dict)
    dead_objects: list[bytes] = field(default_factory=list)
    dead_commits: int = 0
    dead_blocks: list[bytes] = field(default_factory=list)
    dead_stats: list[bytes] = field(default_factory=list)
    expired_reflog: list[bytes] = field(default_factory=list)
    expired_journals: list[bytes] = field(default_factory=list)  # keys in the merges table
    missing_blocks: int = 0
    pack_sizes: dict[int, int] = field(default_factory=dict)
    pack_live: dict[int, tuple[int, int]] = field(default_factory=dict)  # (entries, bytes)
    candidates: list[int] = field(default_factory=list)  # packs to rewrite or remove


def collect_garbage(
    repo: Repository,
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD,
    now: float | None = None,
) -> GcReport:
    """Run gc (or, with dry_run, report what it would do). Takes the gc lock exclusively."""
    if grace < 0:
        raise MergestoreError("the grace period cannot be negative")
    if not 0.0 < repack_threshold <= 1.0:
        raise MergestoreError("the repack threshold must be in (0, 1]")
    t0 = time.perf_counter()
    if not dry_run:  # killed merges' saved work: published, its journal then ages as any other
        from mergestore.store.pending import publish_orphans

        publish_orphans(repo)
    lock_fd = repo.gc_lock(exclusive=True)
    try:
        now = time.time() if now is None else now
        cutoff = now - grace if grace > 0 else math.inf  # reflog/commit times >= cutoff are roots
        plan = _make_plan(repo, cutoff, repack_threshold)
        _fault_point("gc-after-mark")
        rep = GcReport(dry_run=dry_run, grace=grace)
        rep.roots = len(plan.roots)
        rep.commits_live, rep.objects_live = len(plan.commits), len(plan.objects)
        rep.blocks_live = len(plan.live_locs)
        rep.commits_removed, rep.objects_removed = plan.dead_commits, len(plan.dead_objects)
        rep.blocks_removed, rep.stats_removed = len(plan.dead_blocks), len(plan.dead_stats)
        rep.reflog_expired, rep.missing_blocks = len(plan.expired_reflog), plan.missing_blocks
        rep.pack_bytes_before = _pack_bytes(repo)
        rep.dead_bytes_left = sum(
            size - _live_bytes(plan, p)
            for p, size in plan.pack_sizes.items()
            if p not in plan.candidates and size > _live_bytes(plan, p)
        )
        if dry_run:
            dead = sum(plan.pack_sizes[p] - _live_bytes(plan, p) for p in plan.candidates)
            rep.packs_rewritten = [p for p in plan.candidates if _live_count(plan, p)]
            rep.packs_removed = list(plan.candidates)
            rep.pack_bytes_after = rep.pack_bytes_before - dead
        else:
            _sweep(repo, plan, rep)
            rep.pack_bytes_after = _pack_bytes(repo)
        rep.seconds = time.perf_counter() - t0
        return rep
    finally:
        os.close(lock_fd)


# ----- mark ----------------------------------------------------------------------------------


def _make_plan(repo: Repository, cutoff: float, threshold: float) -> _Plan:
    idx = repo.index
    with idx.read() as txn:
        refs = _ref_values(txn, idx)
        reflog = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=idx.db("reflog"))]
    plan = _Plan(refs=refs, roots=set(refs.values()))
    recent_reflog: set[bytes] = set()
    for _key, value in reflog:
        entry = _reflog_entry(value)
        if entry is not None and entry[0] >= cutoff:
            recent_reflog.update(c for c in entry[1:] if c is not None)
    # Reflog commits gc already removed (with a shorter grace) are simply gone: not an error.
    recent_reflog = {c for c in recent_reflog if repo.get_object_bytes(c) is not None}
    plan.roots |= recent_reflog
    all_objects = list(repo.iter_object_ids())
    commit_ids = set()
    for oid, commit in _scan_commits(repo, all_objects):
        commit_ids.add(oid)
        if commit is not None and commit.time >= cutoff:
            plan.roots.add(oid)
    block_ids = _mark_objects(repo, plan)
    block_ids |= _journal_blocks(repo, cutoff, plan)
    plan.dead_objects = [o for o in all_objects if o not in plan.objects]
    plan.dead_commits = sum(1 for o in plan.dead_objects if o in commit_ids)
    _mark_blocks(repo, plan, block_ids)
    live = plan.live_locs
    with idx.read() as txn:
        for k in txn.cursor(db=idx.db("stats")).iternext(keys=True, values=False):
            k = bytes(k)
            if k[:32] not in live or k[32:64] not in live:
                plan.dead_stats.append(k)
    for key, value in reflog:
        entry = _reflog_entry(value)
        if entry is None or entry[0] >= cutoff:
            continue  # unreadable entries are left for fsck; recent ones are roots
        if any(c is not None and c not in plan.commits for c in entry[1:]):
            plan.expired_reflog.append(key)
    _plan_packs(repo, plan, threshold)
    return plan


def _plan_inputs(p: StoreObject) -> list[bytes]:
    assert isinstance(p, Plan)
    return p.input_commits()


def _journal_blocks(repo: Repository, cutoff: float, plan: _Plan) -> set[bytes]:
    """Blocks of merge journals younger than the grace period (a merge that may resume);
    older journals expire with their blocks."""
    out: set[bytes] = set()
    for plan_id, body in merges.journals(repo).items():
        if float(body.get("time", 0)) >= cutoff:
            for v in (body.get("tensors") or {}).values():
                out.update(bytes.fromhex(b) for b in v[3])
        else:
            plan.expired_journals.append(merges.JOURNAL + plan_id)
    return out


def _ref_values(txn: Any, idx: Any) -> dict[str, bytes]:
    out = {}
    for k, v in txn.cursor(db=idx.db("refs")):
        name, value = bytes(k).decode(errors="replace"), bytes(v).decode(errors="replace")
        if value.startswith("ref: "):
            continue
        try:
            out[name] = bytes.fromhex(value)
        except ValueError:
            raise CorruptionError(
                f"gc: ref {name} holds a malformed value; nothing was removed "
                "(run `mergestore fsck`)"
            ) from None
    return out


def _reflog_entry(value: bytes) -> tuple[float, bytes | None, bytes | None] | None:
    try:
        d = json.loads(value)
        old = bytes.fromhex(d["old"]) if d.get("old") else None
        new = bytes.fromhex(d["new"]) if d.get("new") else None
        return float(d["time"]), old, new
    except (ValueError, KeyError, TypeError):
        return None


def _scan_commits(repo: Repository, oids: list[bytes]) -> Iterator[tuple[bytes, Commit | None]]:
    """Every commit object (None where it cannot be decoded: unreachable rot is just garbage)."""
    idx = repo.index
    with idx.read() as txn:
        for oid in oids:
            raw = txn.get(oid, db=idx.db("objects"))
            try:
                data = _unwrap_object(bytes(raw))
            except CorruptionError:
                continue
            if not data.startswith(b"commit\n"):
                continue
            try:
                obj = decode_object(data, expected_id=oid)
            except CorruptionError:
                yield oid, None
                continue
            yield oid, obj if isinstance(obj, Commit) else None


def _need(repo: Repository, oid: bytes, kind: type | tuple[type, ...], what: str) -> StoreObject:
    """A reachable object; gc stops (changing nothing) if it is missing or corrupt."""
    try:
        obj = repo.get_object(oid)
    except MergestoreError as e:
        raise CorruptionError(
            f"gc: {what} {oid.hex()[:12]}: {e}; nothing was removed (run `mergestore fsck`)"
        ) from e
    if not isinstance(obj, kind):
        raise CorruptionError(
            f"gc: {what} {oid.hex()[:12]} has the wrong type; nothing was removed "
            "(run `mergestore fsck`)"
        )
    return obj


def _mark_objects(repo: Repository, plan: _Plan) -> set[bytes]:
    """Mark commits and objects from the roots; returns the block ids they use."""
    blocks: set[bytes] = set()
    objects = plan.objects
    stack = list(plan.roots)
    while stack:
        cid = stack.pop()
        if cid in plan.commits:
            continue
        c = _need(repo, cid, Commit, "commit")
        assert isinstance(c, Commit)
        plan.commits.add(cid)
        objects.add(cid)
        stack.extend(c.parents)
        if c.base is not None:
            stack.append(c.base)
        for oid in (c.plan, c.run):
            if oid is not None and oid not in objects:
                p = _need(repo, oid, Plan, "plan")
                objects.add(oid)
                if oid == c.plan:  # a lazy or evicted merge is rebuilt from the plan's inputs
                    stack.extend(_plan_inputs(p))
        # a lazy merge's computed tree is kept beside the commit (store/merges.py)
        for tid in (c.tree, merges.lazy_tree(repo, cid)):
            if tid is None or tid in objects:
                continue
            tree = _need(repo, tid, Tree, "tree")
            assert isinstance(tree, Tree)
            objects.add(tid)
            for entry in tree.entries:
                if entry.object in objects:
                    continue
                f = _need(repo, entry.object, (BlobFile, TensorFile), f"file {entry.path!r}")
                objects.add(entry.object)
                if isinstance(f, BlobFile):
                    blocks.update(f.blocks)
                    continue
                assert isinstance(f, TensorFile)
                if f.header not in objects:
                    header = _need(repo, f.header, BlobFile, f"header of {entry.path!r}")
                    assert isinstance(header, BlobFile)
                    objects.add(f.header)
                    blocks.update(header.blocks)
                for t in f.tensors:
                    blocks.update(t.blocks)
    return blocks


def _mark_blocks(repo: Repository, plan: _Plan, used: set[bytes]) -> None:
    """Live block locations: the used blocks and, transitively, their delta references."""
    idx = repo.index
    with idx.read() as txn:
        db = idx.db("blocks")
        frontier = list(used)
        while frontier:
            bid = frontier.pop()
            if bid in plan.live_locs:
                continue
            raw = txn.get(bid, db=db)
            if raw is None:
                plan.missing_blocks += 1  # already lost; fsck reports it, gc cannot make it worse
                continue
            try:
                loc = BlockLocation.decode(bytes(raw))
            except CorruptionError as e:
                raise CorruptionError(
                    f"gc: block {bid.hex()[:12]}: {e}; nothing was removed (run `mergestore fsck`)"
                ) from e
            plan.live_locs[bid] = loc
            if loc.ref is not None:
                frontier.append(loc.ref)
        plan.dead_blocks = [
            bytes(k)
            for k in txn.cursor(db=db).iternext(keys=True, values=False)
            if bytes(k) not in plan.live_locs
        ]


def _plan_packs(repo: Repository, plan: _Plan, threshold: float) -> None:
    for loc in plan.live_locs.values():
        n, b = plan.pack_live.get(loc.pack, (0, 0))
        plan.pack_live[loc.pack] = (n + 1, b + ENTRY_HEADER.size + loc.length)
    for pid in list_pack_ids(repo.pack_dir):
        with contextlib.suppress(FileNotFoundError):
            plan.pack_sizes[pid] = pack_path(repo.pack_dir, pid).stat().st_size
    for pid, size in sorted(plan.pack_sizes.items()):
        dead = size - _live_bytes(plan, pid)
        if dead <= 0:
            continue
        if _live_count(plan, pid) == 0 or dead >= threshold * size:
            plan.candidates.append(pid)


def _live_bytes(plan: _Plan, pid: int) -> int:
    return len(PACK_MAGIC) + plan.pack_live.get(pid, (0, 0))[1]


def _live_count(plan: _Plan, pid: int) -> int:
    return plan.pack_live.get(pid, (0, 0))[0]


# ----- sweep ---------------------------------------------------------------------------------


def _sweep(repo: Repository, plan: _Plan, rep: GcReport) -> None:
    moves = _copy_live_entries(repo, plan, rep)
    idx = repo.index
    committed = False
    try:
        with idx.write() as txn:
            if _ref_values(txn, idx) != plan.refs:  # cannot happen under the lock; be sure
                raise MergestoreError("gc: refs moved while gc ran; nothing was removed")
            for db_name, keys in (
                ("objects", plan.dead_objects),
                ("blocks", plan.dead_blocks),
                ("stats", plan.dead_stats),
                ("reflog", plan.expired_reflog),
                (merges.DB, plan.expired_journals),
            ):
                db = idx.db(db_name)
                for k in keys:
                    txn.delete(k, db=db)
            blocks_db = idx.db("blocks")
            for bid, loc in moves.items():
                txn.put(bid, loc.encode(), db=blocks_db)
            # Remove only packs the index no longer names, checked inside this transaction.
            named = {struct.unpack_from("<I", v)[0] for _k, v in txn.cursor(db=blocks_db)}
            removable = [p for p in plan.candidates if p not in named]
            _fault_point("gc-inside-index")
        committed = True
    finally:
        if not committed:
            _remove_packs(repo, rep.packs_created)  # unreferenced copies
            rep.packs_created = []
    _fault_point("gc-after-index")
    repo.packs.close()  # drop cached descriptors of packs about to go
    rep.packs_removed = _remove_packs(repo, removable, rep.warnings)


def _copy_live_entries(repo: Repository, plan: _Plan, rep: GcReport) -> dict[bytes, BlockLocation]:
    """Step 1: live entries of the candidate packs, copied into new packs and fsynced."""
    by_pack: dict[int, list[tuple[bytes, BlockLocation]]] = {}
    for bid, loc in plan.live_locs.items():
        if loc.pack in plan.candidates:
            by_pack.setdefault(loc.pack, []).append((bid, loc))
    moves: dict[bytes, BlockLocation] = {}
    appender = PackAppender(repo.pack_dir, fresh=True)
    done = False
    try:
        for pid in plan.candidates:
            entries = sorted(by_pack.get(pid, []), key=lambda e: e[1].offset)
            pack_moves: dict[bytes, BlockLocation] = {}
            try:
                for bid, loc in entries:
                    payload = _read_entry(repo, pid, bid, loc)
                    new_pid, new_off = appender.append(bid, payload)
                    pack_moves[bid] = replace(loc, pack=new_pid, offset=new_off)
                    rep.bytes_copied += len(payload)
                    _fault_point("gc-mid-copy")
            except CorruptionError as e:
                # Leave a damaged pack exactly as it is (fsck reports it); copies made so far
                # become dead bytes in the new pack.
                rep.warnings.append(f"pack {pid} left as is: {e}")
                continue
            moves.update(pack_moves)
            if entries:
                rep.packs_rewritten.append(pid)
        plan.candidates = [
            p for p in plan.candidates if p in rep.packs_rewritten or p not in by_pack
        ]
        appender.sync()
        rep.packs_created = sorted(appender.start_sizes)
        done = True
    finally:
        created = sorted(appender.start_sizes)
        appender.close()
        if not done:
            _remove_packs(repo, created)
    _fault_point("gc-after-copy")
    return moves


def _read_entry(repo: Repository, pid: int, bid: bytes, loc: BlockLocation) -> bytes:
    """A block's payload, checked against the entry header in front of it."""
    h = ENTRY_HEADER.size
    if loc.offset < h:
        raise CorruptionError(f"block {bid.hex()[:12]}: offset {loc.offset} is inside the header")
    data = repo.packs.read(pid, loc.offset - h, h + loc.length)
    magic, hid, length = ENTRY_HEADER.unpack_from(data)
    if magic != ENTRY_MAGIC or hid != bid or length != loc.length:
        raise CorruptionError(f"block {bid.hex()[:12]} does not match its entry in pack {pid}")
    return data[h:]


def _remove_packs(
    repo: Repository, pids: list[int], warnings: list[str] | None = None
) -> list[int]:
    """Unlink packs nothing references (the highest one is emptied instead: ids never repeat)."""
    removed = []
    ids = list_pack_ids(repo.pack_dir)
    highest = ids[-1] if ids else -1
    for pid in pids:
        path = pack_path(repo.pack_dir, pid)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:  # a writer appending holds the pack's flock: never pull it from under it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if warnings is not None:
                    warnings.append(f"pack {pid} is in use; left for the next gc")
                continue
            if pid == highest:
                os.ftruncate(fd, 0)
                os.write(fd, PACK_MAGIC)
                os.fsync(fd)
            else:
                os.unlink(path)
            removed.append(pid)
        finally:
            os.close(fd)
        if len(removed) == 1:
            _fault_point("gc-mid-unlink")
    if removed:
        dfd = os.open(repo.pack_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return removed


def _pack_bytes(repo: Repository) -> int:
    total = 0
    for pid in list_pack_ids(repo.pack_dir):
        with contextlib.suppress(FileNotFoundError):
            total += pack_path(repo.pack_dir, pid).stat().st_size
    return total
