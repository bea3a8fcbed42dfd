"""`fsck`: check refs, reflogs, objects, the block index and pack bounds (with full, every hash).

Every problem names the commits it affects: a damaged block is traced back through the file
objects that use it to every commit (reachable from a ref or a reflog entry) whose checkout
would fail. fsck only reads; it never repairs.
"""

from __future__ import annotations

from dataclasses import field

from mergestore.errors import CorruptionError, MergestoreError, RefError
from mergestore.fast_dataclass import dataclass
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.store import merges, packs
from mergestore.store.blocks import tensor_blocking
from mergestore.store.index import BlockLocation
from mergestore.store.objects import BlobFile, Commit, Plan, TensorFile, Tree
from mergestore.store.packs import (
    entry_bounds_problem,
    entry_header_problem,
    pack_size_and_magic,
)
from mergestore.store.refs import HEAD, HEADS, REMOTES, TAGS, check_ref_name
from mergestore.store.repo import Repository
from mergestore.threads import default_workers


@dataclass
class Problem:
    """One thing fsck found wrong, with the commits it touches."""

    kind: str
    message: str
    commits: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "message": self.message, "commits": self.commits}


@dataclass
class FsckReport:
    """What fsck checked, and the problems it found."""

    ok: bool
    problems: list[Problem]
    commits: int
    objects: int
    blocks: int
    blocks_verified: int
    refs: int
    affected_commits: list[str] = field(default_factory=list)
    # stored blocks whose entry has no read check (written by store format 1): reads compare
    # their blake3 until `repack` adds the checks (docs/format.md, "Checks on read")
    blocks_without_check: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
            "affected_commits": self.affected_commits,
            "commits": self.commits,
            "objects": self.objects,
            "blocks": self.blocks,
            "blocks_verified": self.blocks_verified,
            "refs": self.refs,
            "blocks_without_check": self.blocks_without_check,
        }


class _Problems:
    """Problems keyed by (kind, message); the same damage met from many commits is one problem."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], list[str]] = {}

    def add(self, kind: str, message: str, *commits: bytes) -> None:
        users = self._by_key.setdefault((kind, message), [])
        for c in commits:
            h = c.hex()
            if h not in users:
                users.append(h)

    def mentions(self, text: str) -> bool:
        return any(text in msg for _kind, msg in self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def to_list(self) -> list[Problem]:
        return [Problem(k, m, sorted(c)) for (k, m), c in self._by_key.items()]


@dataclass
class _File:
    """What fsck learned about one file object: its blocks, or why it is unusable."""

    blocks: tuple[bytes, ...] = ()
    size: int = 0  # bytes the blocks must add up to (tensor bytes for a tensorfile)
    tensor_sizes: tuple[tuple[str, int, tuple[bytes, ...]], ...] = ()
    error: str | None = None
    file_size: int = -1  # the size the file object records


def fsck(repo: Repository, *, full: bool = False) -> FsckReport:
    probs = _Problems()
    refs = _check_refs(repo, probs)
    starts: list[tuple[bytes, bytes | None]] = []
    for name, cid in refs.items():
        if repo.get_object_bytes(cid) is None:
            probs.add("ref", f"{name} points at a missing commit {cid.hex()[:12]}", cid)
        else:
            starts.append((cid, None))
    for cid in _reflog_commits(repo, probs):
        if repo.get_object_bytes(cid) is not None:
            starts.append((cid, None))
    commits = _walk_commits(repo, starts, probs)
    files: dict[bytes, _File] = {}
    commit_files: dict[bytes, list[bytes]] = {}
    for cid, c in commits.items():
        commit_files[cid] = _check_commit(repo, cid, c, probs, files)
    used: set[bytes] = set()
    for f in files.values():
        used.update(f.blocks)

    locs, bad_blocks, n_blocks = _check_index(repo, probs, read_headers=not full)
    unchecked = sum(1 for loc in locs.values() if loc.check is None)  # the index's own entries
    dropped = _evicted_blocks(repo, commits)  # an evicted merge's plan rebuilds them
    absent = [b for b in used if b not in bad_blocks and b not in locs and b not in dropped]
    promised = repo.block_locations(absent)  # a lazy clone's blocks still on its remote
    for bid in absent:
        if bid not in promised:
            bad_blocks[bid] = f"block {bid.hex()[:12]}: missing from the index"
    locs = {**promised, **locs}
    _check_sizes(files, locs, commit_files, probs)
    verified = 0
    if full:
        # Every block in the index, reachable or not (gc would keep a live delta's reference,
        # and damage there is still damage), in pack order: the block reader coalesces them
        # into large reads and checks each pack entry header on the way.
        order = sorted((b for b in locs if b not in bad_blocks), key=lambda b: _pos(locs[b]))
        reader = repo.reader(full=True)  # blake3, not the entries' checks
        for bid, res in reader.read(
            order,
            locations=locs,
            view=True,
            workers=default_workers(),
            check_headers=True,
            errors=True,
        ):
            verified += 1
            if isinstance(res, CorruptionError):
                err = str(res)
                bad_blocks[bid] = err if bid.hex()[:12] in err else f"block {bid.hex()[:12]}: {err}"
    if bad_blocks:
        users = _block_users(set(bad_blocks), files, commit_files)
        for bid, msg in bad_blocks.items():
            probs.add("block", msg, *users.get(bid, ()))
    # Every object, reachable or not: its encoding and id.
    n_objects = 0
    for oid in repo.iter_object_ids():
        n_objects += 1
        try:
            repo.get_object(oid)
        except MergestoreError as e:
            if not probs.mentions(oid.hex()[:12]):
                probs.add("object", f"unreachable object {oid.hex()[:12]}: {e}")
    problems = probs.to_list()
    affected = sorted({c for p in problems for c in p.commits})
    return FsckReport(
        ok=not problems,
        problems=problems,
        commits=len(commits),
        objects=n_objects,
        blocks=n_blocks,
        blocks_verified=verified,
        refs=len(refs),
        affected_commits=affected,
        blocks_without_check=unchecked,
    )


# ----- refs and reflogs ----------------------------------------------------------------------


def _check_refs(repo: Repository, probs: _Problems) -> dict[str, bytes]:
    """Every ref's name and value; returns the well-formed branch and tag refs."""
    good: dict[str, bytes] = {}
    for name, raw in repo.raw_refs().items():
        value = raw.decode(errors="replace")
        if name == HEAD:
            if value.startswith("ref: "):
                target = value[5:]
                if not target.startswith(HEADS):
                    probs.add("ref", f"HEAD points at {target[:80]!r}, not a branch")
                continue
        elif not name.startswith((HEADS, TAGS, REMOTES)):
            probs.add("ref", f"unexpected ref name {name[:80]!r}")
            continue
        else:
            try:
                check_ref_name(name.split("/", 2)[2])
            except RefError:
                probs.add("ref", f"invalid ref name {name[:80]!r}")
        try:
            cid = bytes.fromhex(value)
            if len(cid) != 32:
                raise ValueError
        except ValueError:
            probs.add("ref", f"{name[:80]} holds a malformed value {value[:80]!r}")
            continue
        if name != HEAD:
            good[name] = cid
    return good


def _reflog_commits(repo: Repository, probs: _Problems) -> list[bytes]:
    """Commits named by reflog entries (they are recoverable, so they are checked too)."""
    out: list[bytes] = []
    try:
        names = repo.reflog_names()
    except (ValueError, CorruptionError):
        probs.add("reflog", "a reflog key is unreadable")
        return out
    for name in names:
        try:
            entries = repo.reflog(name)
        except (ValueError, KeyError, TypeError, CorruptionError):
            probs.add("reflog", f"the reflog of {name[:80]} has an unreadable entry")
            continue
        out.extend(e.new for e in entries if e.new is not None)
    return out


# ----- objects -------------------------------------------------------------------------------


def _walk_commits(
    repo: Repository, starts: list[tuple[bytes, bytes | None]], probs: _Problems
) -> dict[bytes, Commit]:
    """Commits reachable from the starts; a bad commit is reported with the commits above it."""
    seen: dict[bytes, Commit] = {}
    bad: set[bytes] = set()
    stack = list(starts)
    while stack:
        cid, child = stack.pop()
        if cid in seen or cid in bad:
            if cid in bad and child is not None:
                _bad_commit(cid, child, probs)
            continue
        try:
            c = repo.get_commit(cid)
        except MergestoreError as e:
            bad.add(cid)
            probs.add("commit", f"commit {cid.hex()[:12]}: {_one_line(e)}", cid)
            if child is not None:
                _bad_commit(cid, child, probs)
            continue
        seen[cid] = c
        stack.extend((p, cid) for p in c.parents)
        if c.base:
            stack.append((c.base, cid))
    return seen


def _bad_commit(cid: bytes, child: bytes, probs: _Problems) -> None:
    probs.add("commit", f"commit {child.hex()[:12]}: parent or base {cid.hex()[:12]} is bad", child)


def _check_commit(
    repo: Repository, cid: bytes, c: Commit, probs: _Problems, files: dict[bytes, _File]
) -> list[bytes]:
    """Validate a commit's plan, tree and file objects; returns the file objects it uses."""
    for what, oid in (("plan", c.plan), ("run", c.run)):
        if oid is None:
            continue
        try:
            if not isinstance(repo.get_object(oid), Plan):
                probs.add("object", f"{what} {oid.hex()[:12]} is not a plan object", cid)
        except MergestoreError as e:
            probs.add("object", f"{what} {oid.hex()[:12]}: {_one_line(e)}", cid)
    tid = merges.tree_id(repo, c) or c.tree  # a lazy merge's computed tree, once computed
    try:
        tree = repo.get_object(tid)
    except MergestoreError as e:
        probs.add("object", f"tree {tid.hex()[:12]}: {_one_line(e)}", cid)
        return []
    if not isinstance(tree, Tree):
        probs.add("object", f"tree {c.tree.hex()[:12]} is not a tree", cid)
        return []
    used = []
    for entry in tree.entries:
        f = files.get(entry.object)
        if f is None:
            f = files[entry.object] = _load_file(repo, entry.object, entry.kind)
        if f.error is not None:
            probs.add("object", f"file {entry.object.hex()[:12]} ({entry.path}): {f.error}", cid)
        elif f.file_size != entry.size:
            probs.add("object", f"tree {c.tree.hex()[:12]}: {entry.path}: wrong size", cid)
        used.append(entry.object)
    return used


def _load_file(repo: Repository, oid: bytes, kind: str) -> _File:
    try:
        obj = repo.get_object(oid)
    except MergestoreError as e:
        return _File(error=_one_line(e))
    if isinstance(obj, BlobFile):
        if kind != "blob":
            return _File(error="the tree says tensorfile, the object is a blob")
        return _File(blocks=obj.blocks, size=obj.size, file_size=obj.size)
    if not isinstance(obj, TensorFile):
        return _File(error="not a file object")
    if kind != "tensorfile":
        return _File(error="the tree says blob, the object is a tensorfile")
    problems = list(_check_tensorfile(obj))
    try:
        header = repo.get_object(obj.header)
    except MergestoreError as e:
        problems.append(f"header {obj.header.hex()[:12]}: {_one_line(e)}")
        header = None
    if header is not None and not isinstance(header, BlobFile):
        problems.append(f"header {obj.header.hex()[:12]} is not a blob")
        header = None
    blocks = list(header.blocks) if isinstance(header, BlobFile) else []
    sizes = [("header", header.size, header.blocks)] if isinstance(header, BlobFile) else []
    for t in obj.tensors:
        blocks.extend(t.blocks)
        sizes.append((f"tensor {t.name}", t.nbytes, t.blocks))
    return _File(
        blocks=tuple(blocks),
        tensor_sizes=tuple(sizes),
        error="; ".join(problems[:3]) if problems else None,
        file_size=obj.size,
    )


def _check_tensorfile(tf: TensorFile) -> list[str]:
    out = []
    pos = 0
    for t in tf.tensors:
        if t.dtype not in DTYPE_SIZES:
            out.append(f"tensor {t.name}: unknown dtype {t.dtype}")
            continue
        blocking = tensor_blocking(t.shape, DTYPE_SIZES[t.dtype], 1)
        blocking = type(blocking)(blocking.rows, blocking.row_bytes, t.rows_per_block)
        if t.begin != pos:
            out.append(f"tensor {t.name}: data is not contiguous")
        pos = t.end
        n = 1
        for s in t.shape:
            n *= s
        if n * DTYPE_SIZES[t.dtype] != t.nbytes:
            out.append(f"tensor {t.name}: shape and byte length disagree")
        if blocking.num_blocks != len(t.blocks):
            want, have = blocking.num_blocks, len(t.blocks)
            out.append(f"tensor {t.name}: expected {want} blocks, has {have}")
    return out


def _evicted_blocks(repo: Repository, commits: dict[bytes, Commit]) -> set[bytes]:
    """Tensor blocks of evicted merge commits (dropped on purpose; reads recompute them)."""
    out: set[bytes] = set()
    for cid in merges.evictions(repo):
        c = commits.get(cid)
        tid = merges.tree_id(repo, c) if c is not None else None
        if tid is None:
            continue
        for e in repo.get_tree(tid).entries:
            f = repo.get_file(e.object)
            if isinstance(f, TensorFile):
                for t in f.tensors:
                    out.update(t.blocks)
    return out


def _check_sizes(
    files: dict[bytes, _File],
    locs: dict[bytes, BlockLocation],
    commit_files: dict[bytes, list[bytes]],
    probs: _Problems,
) -> None:
    """The raw lengths the index records must add up to each file's (or tensor's) size."""
    wrong: dict[bytes, str] = {}
    for oid, f in files.items():
        if f.error is not None:
            continue
        parts = f.tensor_sizes or (("file", f.size, f.blocks),)
        for what, size, blocks in parts:
            if all(b in locs for b in blocks) and sum(locs[b].raw_len for b in blocks) != size:
                wrong[oid] = f"{what}: its blocks hold a different number of bytes than {size}"
                break
    for cid, used in commit_files.items():
        for oid in used:
            if oid in wrong:
                probs.add("object", f"file {oid.hex()[:12]}: {wrong[oid]}", cid)


def _block_users(
    bad: set[bytes], files: dict[bytes, _File], commit_files: dict[bytes, list[bytes]]
) -> dict[bytes, list[bytes]]:
    """Every commit whose checkout reads one of the `bad` blocks."""
    bad_files: dict[bytes, set[bytes]] = {}
    for oid, f in files.items():
        hit = bad.intersection(f.blocks)
        if hit:
            bad_files[oid] = hit
    users: dict[bytes, list[bytes]] = {}
    for cid, used in commit_files.items():
        for oid in used:
            for bid in bad_files.get(oid, ()):
                lst = users.setdefault(bid, [])
                if not lst or lst[-1] != cid:
                    lst.append(cid)
    return users


# ----- the block index and packs -------------------------------------------------------------


def _check_index(
    repo: Repository, probs: _Problems, *, read_headers: bool = True
) -> tuple[dict[bytes, BlockLocation], dict[bytes, str], int]:
    """Decode every index entry and check it against its pack: bounds and (with
    `read_headers`, in pack order) the entry header; fsck --full checks headers as it reads."""
    pack_sizes: dict[int, int | None] = {}  # None: the pack is missing
    n_blocks = 0
    bad: dict[bytes, str] = {}
    locs: dict[bytes, BlockLocation] = {}
    for bid, raw in repo.iter_raw_blocks():
        n_blocks += 1
        try:
            loc = locs[bid] = BlockLocation.decode(raw)
        except CorruptionError as e:
            bad[bid] = f"block {bid.hex()[:12]}: {e}"
            continue
        if loc.pack not in pack_sizes:
            pack_sizes[loc.pack] = _pack_size(repo, loc.pack, probs)
        problem = entry_bounds_problem(bid, loc, pack_sizes[loc.pack])
        if problem:
            bad[bid] = problem
        try:
            repo.codec_spec(loc.codec)
        except (CorruptionError, UnicodeDecodeError) as e:
            bad[bid] = f"block {bid.hex()[:12]}: {e}"
    if read_headers:
        for bid in sorted((b for b in locs if b not in bad), key=lambda b: _pos(locs[b])):
            msg = entry_header_problem(repo.packs, bid, locs[bid])
            if msg:
                bad[bid] = msg
    for bid, loc in locs.items():
        if loc.ref is None:
            continue
        ref_loc = locs.get(loc.ref) or repo.block_location(loc.ref)  # or still on a remote
        if ref_loc is None:
            what = "is damaged" if loc.ref in bad else "is missing"
            bad.setdefault(bid, f"block {bid.hex()[:12]}: delta reference {what}")
        elif ref_loc.ref is not None:
            bad[bid] = f"block {bid.hex()[:12]}: delta reference is itself a delta"
        elif loc.ref in bad:
            # a block decodes through its reference: a damaged reference damages it too
            bad.setdefault(bid, f"block {bid.hex()[:12]}: its delta reference is damaged")
    for bid in bad:
        locs.pop(bid, None)
    return locs, bad, n_blocks


def _pack_size(repo: Repository, pid: int, probs: _Problems) -> int | None:
    """A pack's size (None if it is missing); a pack without the magic is a problem."""
    found = pack_size_and_magic(repo.pack_dir, pid)
    if found is None:
        return None
    size, magic_ok = found
    if not magic_ok:
        probs.add("pack", f"pack {pid} does not start with the pack magic")
    return size


def _pos(loc: BlockLocation) -> tuple[int, int]:
    return loc.pack, loc.offset


def _one_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def pack_files_size(repo: Repository) -> int:
    return packs.pack_files_size(repo.pack_dir)


def index_size(repo: Repository) -> int:
    return repo.index.files_size()
