"""`fsck`: check refs, objects, the block index and pack bounds (and, with full, every hash)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from mergestore.errors import CorruptionError, MergestoreError, RefError
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.store.blocks import tensor_blocking
from mergestore.store.index import BlockLocation
from mergestore.store.objects import BlobFile, Commit, Plan, TensorFile, Tree
from mergestore.store.packs import ENTRY_HEADER, ENTRY_MAGIC, pack_path
from mergestore.store.parallel import default_workers, ordered_map
from mergestore.store.refs import HEAD, HEADS, TAGS, check_ref_name
from mergestore.store.repo import Repository


@dataclass
class Problem:
    kind: str
    message: str
    commits: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "message": self.message, "commits": self.commits}


@dataclass
class FsckReport:
    ok: bool
    problems: list[Problem]
    commits: int
    objects: int
    blocks: int
    blocks_verified: int
    refs: int


def _walk_commits(
    repo: Repository, starts: list[bytes], problems: list[Problem]
) -> dict[bytes, Commit]:
    seen: dict[bytes, Commit] = {}
    stack = list(starts)
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        try:
            c = repo.get_commit(cid)
        except MergestoreError as e:
            problems.append(Problem("commit", f"commit {cid.hex()[:12]}: {e}", [cid.hex()]))
            continue
        seen[cid] = c
        stack.extend(c.parents)
        if c.base:
            stack.append(c.base)
    return seen


def _commit_blocks(
    repo: Repository, cid: bytes, c: Commit, problems: list[Problem], checked: set[bytes]
) -> Iterator[bytes]:
    """Validate a commit's tree and file objects; yield every block id it uses."""

    def bad(kind: str, msg: str) -> None:
        problems.append(Problem(kind, msg, [cid.hex()]))

    for what, oid in (("plan", c.plan), ("run", c.run)):
        if oid is None:
            continue
        try:
            if not isinstance(repo.get_object(oid), Plan):
                bad("object", f"commit {cid.hex()[:12]}: {what} is not a plan object")
        except MergestoreError as e:
            bad("object", f"commit {cid.hex()[:12]}: {what}: {e}")
    try:
        tree = repo.get_object(c.tree)
    except MergestoreError as e:
        bad("object", f"commit {cid.hex()[:12]}: tree: {e}")
        return
    if not isinstance(tree, Tree):
        bad("object", f"commit {cid.hex()[:12]}: tree is not a tree")
        return
    for entry in tree.entries:
        try:
            obj = repo.get_object(entry.object)
        except MergestoreError as e:
            bad("object", f"{entry.path}: {e}")
            continue
        if isinstance(obj, BlobFile):
            yield from obj.blocks
        elif isinstance(obj, TensorFile):
            if entry.object not in checked:
                checked.add(entry.object)
                for msg in _check_tensorfile(repo, obj):
                    bad("object", f"{entry.path}: {msg}")
            try:
                header = repo.get_object(obj.header)
                if isinstance(header, BlobFile):
                    yield from header.blocks
            except MergestoreError as e:
                bad("object", f"{entry.path}: header: {e}")
            for t in obj.tensors:
                yield from t.blocks
        else:
            bad("object", f"{entry.path}: not a file object")


def _check_tensorfile(repo: Repository, tf: TensorFile) -> Iterator[str]:
    pos = 0
    for t in tf.tensors:
        if t.dtype not in DTYPE_SIZES:
            yield f"tensor {t.name}: unknown dtype {t.dtype}"
            continue
        blocking = tensor_blocking(t.shape, DTYPE_SIZES[t.dtype], 1)
        blocking = type(blocking)(blocking.rows, blocking.row_bytes, t.rows_per_block)
        if t.begin != pos:
            yield f"tensor {t.name}: data is not contiguous"
        pos = t.end
        n = 1
        for s in t.shape:
            n *= s
        if n * DTYPE_SIZES[t.dtype] != t.nbytes:
            yield f"tensor {t.name}: shape and byte length disagree"
        if blocking.num_blocks != len(t.blocks):
            yield f"tensor {t.name}: expected {blocking.num_blocks} blocks, has {len(t.blocks)}"


def fsck(repo: Repository, *, full: bool = False) -> FsckReport:
    problems: list[Problem] = []
    refs = _check_refs(repo, problems)
    starts = []
    for name, cid in refs.items():
        if repo.get_object_bytes(cid) is None:
            problems.append(Problem("ref", f"{name} points at a missing commit {cid.hex()[:12]}"))
        else:
            starts.append(cid)
    for name in repo.reflog_names():
        for e in repo.reflog(name):
            if e.new is not None and repo.get_object_bytes(e.new) is not None:
                starts.append(e.new)
    commits = _walk_commits(repo, starts, problems)
    block_users: dict[bytes, list[bytes]] = {}
    checked: set[bytes] = set()
    for cid, c in commits.items():
        for b in _commit_blocks(repo, cid, c, problems, checked):
            users = block_users.setdefault(b, [])
            if len(users) < 8 and (not users or users[-1] != cid):
                users.append(cid)
    # the block index: entries, pack bounds, delta references
    pack_sizes: dict[int, int] = {}
    n_blocks = 0
    bad_blocks: dict[bytes, str] = {}
    locs: dict[bytes, BlockLocation] = {}
    for bid, raw in repo.iter_raw_blocks():
        n_blocks += 1
        try:
            loc = locs[bid] = BlockLocation.decode(raw)
        except CorruptionError as e:
            bad_blocks[bid] = f"block {bid.hex()[:12]}: {e}"
            continue
        size = pack_sizes.get(loc.pack)
        if size is None:
            p = pack_path(repo.pack_dir, loc.pack)
            size = pack_sizes[loc.pack] = p.stat().st_size if p.exists() else -1
        if size < 0:
            bad_blocks[bid] = f"block {bid.hex()[:12]}: pack {loc.pack} is missing"
        elif loc.offset + loc.length > size:
            bad_blocks[bid] = f"block {bid.hex()[:12]}: beyond the end of pack {loc.pack}"
        else:
            msg = _check_entry_header(repo, bid, loc)
            if msg:
                bad_blocks[bid] = msg
        try:
            repo.codec_spec(loc.codec)
        except CorruptionError as e:
            bad_blocks[bid] = f"block {bid.hex()[:12]}: {e}"
    for bid, loc in locs.items():
        if loc.ref is None:
            continue
        ref_loc = locs.get(loc.ref)
        if ref_loc is None:
            what = "is damaged" if loc.ref in bad_blocks else "is missing"
            bad_blocks.setdefault(bid, f"block {bid.hex()[:12]}: delta reference {what}")
        elif ref_loc.ref is not None:
            bad_blocks[bid] = f"block {bid.hex()[:12]}: delta reference is itself a delta"
        elif loc.ref in bad_blocks:
            # a block decodes through its reference: a damaged reference damages it too
            bad_blocks.setdefault(bid, f"block {bid.hex()[:12]}: its delta reference is damaged")
    for bid in block_users:
        if bid not in bad_blocks and bid not in locs:
            bad_blocks[bid] = f"block {bid.hex()[:12]}: missing from the index"
    verified = 0
    if full:
        to_check = [b for b in block_users if b not in bad_blocks]

        def check(bid: bytes) -> tuple[bytes, str | None]:
            try:
                repo.read_block(bid)
                return bid, None
            except (CorruptionError, OSError) as e:
                return bid, str(e)

        for bid, err in ordered_map(check, to_check, workers=default_workers()):
            verified += 1
            if err:
                bad_blocks[bid] = err
    for bid, msg in bad_blocks.items():
        users = [c.hex() for c in block_users.get(bid, [])]
        problems.append(Problem("block", msg, users))
    # Every object, reachable or not: the walk above reported the reachable ones it met.
    for oid in repo.iter_object_ids():
        try:
            repo.get_object(oid)
        except MergestoreError as e:
            if not any(oid.hex()[:12] in p.message for p in problems):
                problems.append(Problem("object", f"unreachable object: {e}"))
    return FsckReport(
        ok=not problems,
        problems=problems,
        commits=len(commits),
        objects=sum(1 for _ in repo.iter_object_ids()),
        blocks=n_blocks,
        blocks_verified=verified,
        refs=len(refs),
    )


def _check_refs(repo: Repository, problems: list[Problem]) -> dict[str, bytes]:
    """Every ref's name and value; returns the well-formed branch and tag refs."""
    good: dict[str, bytes] = {}
    for name, raw in repo.raw_refs().items():
        value = raw.decode(errors="replace")
        if name == HEAD:
            if value.startswith("ref: "):
                continue
        elif not name.startswith((HEADS, TAGS)):
            problems.append(Problem("ref", f"unexpected ref name {name!r}"))
            continue
        else:
            try:
                check_ref_name(name.split("/", 2)[2])
            except RefError:
                problems.append(Problem("ref", f"invalid ref name {name!r}"))
        try:
            cid = bytes.fromhex(value)
            if len(cid) != 32:
                raise ValueError
        except ValueError:
            problems.append(Problem("ref", f"{name} holds a malformed value {value[:80]!r}"))
            continue
        if name != HEAD:
            good[name] = cid
    return good


def _check_entry_header(repo: Repository, bid: bytes, loc: BlockLocation) -> str | None:
    """The pack entry header in front of a payload must name this block and length."""
    h = ENTRY_HEADER.size
    if loc.offset < h:
        return f"block {bid.hex()[:12]}: offset {loc.offset} in pack {loc.pack} is inside a header"
    try:
        magic, hid, length = ENTRY_HEADER.unpack(repo.packs.read(loc.pack, loc.offset - h, h))
    except (CorruptionError, OSError) as e:
        return f"block {bid.hex()[:12]}: {e}"
    if magic != ENTRY_MAGIC or hid != bid or length != loc.length:
        return f"block {bid.hex()[:12]}: the pack {loc.pack} entry at its offset is not this block"
    return None


def pack_files_size(repo: Repository) -> int:
    return sum(p.stat().st_size for p in repo.pack_dir.glob("pack-*.pack"))


def index_size(repo: Repository) -> int:
    d = repo.path / "index"
    return sum(os.path.getsize(p) for p in d.iterdir() if p.is_file())
