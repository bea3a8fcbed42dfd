"""`commit`: take a checkpoint into the store as blocks, objects and one published commit."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import field, replace

from mergestore import blockstats, native
from mergestore.author import default_author
from mergestore.errors import RefError
from mergestore.fast_dataclass import dataclass
from mergestore.formats.checkpoint import Checkpoint, CheckpointFile, scan_checkpoint
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.store import codecs
from mergestore.store.blocks import blob_ranges, block_id, raw_check, tensor_blocking
from mergestore.store.index import BlockLocation
from mergestore.store.objects import BlobFile, Commit, TensorFile, TensorRecord, Tree, TreeEntry
from mergestore.store.parallel import BufferPool, read_exact, reuse_freed_memory
from mergestore.store.refs import check_new_ref_name
from mergestore.store.repo import HEADS, RefUpdate, Repository, WriteSession
from mergestore.store.statcache import FileStamp, path_key
from mergestore.threads import default_workers, one_torch_thread, ordered_map

Progress = Callable[[int], None]
_REF_RACE_RETRIES = 50  # commit retries when another writer moves the branch


@dataclass(frozen=True)
class BlockJob:
    """One block of a file to read, hash and store."""

    fd: int
    offset: int
    length: int
    dtype: str | None
    ref: bytes | None  # block at the same position in the base commit


@dataclass
class BlockResult:
    """One block read and named, encoded if it is new."""

    bid: bytes
    raw_len: int
    encoded: codecs.Encoded | None  # None when the block is already stored
    stats: blockstats.DeltaStats | None = None
    buf: bytearray | None = None  # pooled read buffer the payload still points into
    check: int | None = None  # blocks.raw_check of a new block's raw bytes


# Ask the kernel to read checkpoint files this far ahead of the blocks being worked on (cold
# page cache: the disk stays busy while both cores hash and encode).
PREFETCH_BYTES = 64 << 20


@dataclass
class CommitResult:
    """What committing a checkpoint stored."""

    commit: bytes
    tree: bytes
    logical_bytes: int
    written_bytes: int
    new_blocks: int  # of total_blocks, those that added a block to the store
    total_blocks: int  # tensor blocks by position (docs/format.md, "Blocks")
    files: int
    tensors: int
    seconds: float
    branch: str | None
    stats_computed: int = 0
    previous: bytes | None = None  # the branch's commit before this one (None: a new branch)
    files_read: int = 0  # files whose data was read (the others: stat cache)
    bytes_read: int = 0  # bytes of file data read and hashed


@dataclass
class _Ingest:
    """The state of one checkpoint being committed."""

    repo: Repository
    session: WriteSession
    base_blocks: dict[str, tuple[str, tuple[int, ...], tuple[bytes, ...]]]
    want_stats: bool
    progress: Progress | None
    new_blocks: int = 0  # tensor block positions whose block this commit stored first
    stats_computed: int = 0
    files_read: int = 0
    bytes_read: int = 0
    fds: list[int] = field(default_factory=list)
    # Where the base commit's blocks live, looked up once in one read transaction.
    ref_locations: dict[bytes, BlockLocation] = field(default_factory=dict)
    pool: BufferPool | None = None

    def work(self, job: BlockJob) -> BlockResult:
        """Runs on a worker thread: read, hash, and encode one block if it is new."""
        pool = self.pool
        buf = pool.get(job.length) if pool is not None else bytearray(job.length)
        raw = read_exact(job.fd, buf, job.length, job.offset)
        if len(raw) != job.length:
            from mergestore.errors import FormatError

            raise FormatError("a checkpoint file changed while it was being committed")
        bid = block_id(raw)
        res = self._encode(job, bid, raw)
        # A payload that is not a bytes object (nor a tuple of parts, none of them a view of
        # the block, Encoded.parts) may be a view of this very buffer (a block stored raw
        # is): keep the buffer until the payload has been appended.
        if res.encoded is not None and not isinstance(res.encoded.parts, (bytes, tuple)):
            res.buf = buf
        elif pool is not None:
            pool.put(buf)
        return res

    def _encode(self, job: BlockJob, bid: bytes, raw: memoryview) -> BlockResult:
        if bid == job.ref:
            return BlockResult(bid, len(raw), None)
        known = self.session.known(bid)
        stats = None
        ref_raw = None
        cfg = self.repo.config
        ref_loc = self.ref_locations.get(job.ref) if job.ref is not None else None
        if ref_loc is not None and job.dtype is not None:
            need_stats = (
                self.want_stats
                and blockstats.supports_stats(job.dtype)
                and self.repo.get_stats(bid, job.ref, job.dtype) is None
            )
            use_delta = cfg.delta_codecs and ref_loc.ref is None  # references are never deltas
            if need_stats or (use_delta and not known):
                ref_raw = self.repo.read_block(job.ref, location=ref_loc)
            if need_stats and ref_raw is not None:
                stats = blockstats.delta_stats(raw, ref_raw, job.dtype)
            if not use_delta:
                ref_raw = None
        if known:
            return BlockResult(bid, len(raw), None, stats)
        enc = codecs.encode_block(
            raw,
            dtype=job.dtype,
            level=cfg.zstd_level,
            reference=ref_raw,
            reference_id=job.ref if ref_raw is not None else None,
        )
        return BlockResult(bid, len(raw), enc, stats, check=raw_check(bid, raw))

    def store(self, job: BlockJob, res: BlockResult) -> bytes:
        """Runs on the main thread, in order: append new blocks to the pack."""
        self.bytes_read += res.raw_len
        added = res.encoded is not None and self.session.add_encoded(
            res.bid, res.raw_len, res.encoded, res.check
        )
        if added and job.dtype is not None:  # a tensor block (see tensor_block_count)
            self.new_blocks += 1
        if res.buf is not None and self.pool is not None:
            res.encoded = None
            self.pool.put(res.buf)
        if res.stats is not None and job.ref is not None and job.dtype is not None:
            self.session.put_stats(res.bid, job.ref, job.dtype, res.stats)
            self.stats_computed += 1
        if self.progress:
            self.progress(res.raw_len)
        return res.bid


def _file_jobs(
    ing: _Ingest, f: CheckpointFile, fd: int, block_size: int
) -> Iterator[tuple[str, int, BlockJob]]:
    """Jobs for one file, tagged with (tensor name or "", position)."""
    if f.header is None:
        for i, (b0, b1) in enumerate(blob_ranges(f.size, block_size)):
            yield "", i, BlockJob(fd, b0, b1 - b0, None, None)
        return
    base_start = f.header.data_start
    for t in f.header.tensors:
        blocking = tensor_blocking(t.shape, DTYPE_SIZES[t.dtype], block_size)
        base = ing.base_blocks.get(t.name)
        refs: tuple[bytes, ...] = ()
        if base is not None and base[0] == t.dtype and base[1] == t.shape:
            refs = base[2]
        for i, (b0, b1) in enumerate(blocking.ranges()):
            ref = refs[i] if i < len(refs) else None
            yield t.name, i, BlockJob(fd, base_start + t.begin + b0, b1 - b0, t.dtype, ref)


def base_tensor_blocks(
    repo: Repository, commit_id: bytes | None
) -> dict[str, tuple[str, tuple[int, ...], tuple[bytes, ...]]]:
    """name -> (dtype, shape, block ids) for every tensor of a commit."""
    out: dict[str, tuple[str, tuple[int, ...], tuple[bytes, ...]]] = {}
    if commit_id is None:
        return out
    from mergestore.store.merges import readable_tree

    tree = readable_tree(repo, commit_id, ())  # block ids only: an evicted base needs none
    for entry in tree.entries:
        if entry.kind != "tensorfile":
            continue
        tf = repo.get_file(entry.object)
        assert isinstance(tf, TensorFile)
        for t in tf.tensors:
            out[t.name] = (t.dtype, t.shape, t.blocks)
    return out


def ingest_tree(
    repo: Repository,
    session: WriteSession,
    ckpt: Checkpoint,
    *,
    base: bytes | None,
    want_stats: bool = True,
    progress: Progress | None = None,
    workers: int | None = None,
    verify: bool = False,
) -> tuple[bytes, _Ingest]:
    """Store every file of a checkpoint through the session; returns the tree id.

    A file whose stat matches its stat cache entry (store/statcache.py) is not read: its stored
    object is taken as it is. `verify` reads and hashes every file regardless.
    """
    reuse_freed_memory()
    base_blocks = base_tensor_blocks(repo, base)
    ing = _Ingest(repo, session, base_blocks, want_stats, progress)
    block_size = repo.config.block_size
    n_workers = workers or default_workers()
    window = 4 * n_workers
    fds = {f.relpath: os.open(f.abspath, os.O_RDONLY) for f in ckpt.files}
    try:
        stamps = {f.relpath: FileStamp.of(os.fstat(fds[f.relpath])) for f in ckpt.files}
        cached = {} if verify else _cached_objects(repo, ckpt, stamps)
        to_read = [f for f in ckpt.files if f.relpath not in cached]
        if progress:
            for f in ckpt.files:
                if f.relpath in cached:
                    progress(f.size)
        if to_read:
            ing.ref_locations = repo.block_locations(
                b for _d, _s, ids in base_blocks.values() for b in ids
            )
            # Enough buffers for every block in flight plus the one being appended: reads never
            # fault in fresh pages, and memory stays bounded by the window.
            ing.pool = BufferPool(block_size, window + n_workers + 2)
        results = _read_files(ing, to_read, fds, block_size, n_workers, window)
        entries = []
        for f in ckpt.files:
            if f.relpath in cached:
                kind, oid = cached[f.relpath]
                entries.append(TreeEntry(f.relpath, kind, oid, f.size))
                continue
            kind, oid = _put_file(session, f, results[f.relpath], block_size)
            entries.append(TreeEntry(f.relpath, kind, oid, f.size))
            # Remember the file only if it did not change while it was read.
            if FileStamp.of(os.fstat(fds[f.relpath])) == stamps[f.relpath]:
                session.put_stat_entry(path_key(f.abspath), stamps[f.relpath], kind, oid)
        ing.files_read = len(to_read)
        tree_id = session.put_object(Tree(entries=tuple(entries)))
        return tree_id, ing
    finally:
        for fd in fds.values():
            os.close(fd)


def _cached_objects(
    repo: Repository, ckpt: Checkpoint, stamps: dict[str, FileStamp]
) -> dict[str, tuple[str, bytes]]:
    """relpath -> (kind, object id) for files the stat cache vouches for, whose stored object
    and blocks are all still in the store."""
    keys = {f.relpath: path_key(f.abspath) for f in ckpt.files}
    found = repo.stat_entries(keys.values())
    block_size = repo.config.block_size
    out = {}
    for f in ckpt.files:
        entry = found.get(keys[f.relpath])
        kind = "blob" if f.header is None else "tensorfile"
        if entry is None or not entry.matches(stamps[f.relpath], block_size, kind):
            continue
        if repo.file_is_complete(entry.object):
            out[f.relpath] = (kind, entry.object)
    return out


def _read_files(
    ing: _Ingest,
    files: list[CheckpointFile],
    fds: dict[str, int],
    block_size: int,
    n_workers: int,
    window: int,
) -> dict[str, dict[str, list[bytes]]]:
    """Read, hash and store every block of `files`: relpath -> tensor name ("" for a blob)
    -> block ids in order."""
    for f in files:
        os.posix_fadvise(fds[f.relpath], 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def jobs() -> Iterator[tuple[str, str, int, BlockJob]]:
        for f in files:
            fd = fds[f.relpath]
            advised = 0
            for name, i, job in _file_jobs(ing, f, fd, block_size):
                if job.offset + PREFETCH_BYTES > advised and advised < f.size:
                    step = max(PREFETCH_BYTES // 4, job.offset + PREFETCH_BYTES - advised)
                    os.posix_fadvise(fd, advised, step, os.POSIX_FADV_WILLNEED)
                    advised += step
                yield f.relpath, name, i, job

    results: dict[str, dict[str, list[bytes]]] = {f.relpath: {} for f in files}
    tagged = ordered_map(
        lambda item: (item, ing.work(item[3])), jobs(), workers=n_workers, window=window
    )
    for (relpath, name, _i, job), res in tagged:
        results[relpath].setdefault(name, []).append(ing.store(job, res))
    return results


def _put_file(
    session: WriteSession, f: CheckpointFile, blocks: dict[str, list[bytes]], block_size: int
) -> tuple[str, bytes]:
    """The file's object (a BlobFile, or a TensorFile with its header): (kind, object id)."""
    if f.header is None:
        obj = BlobFile(size=f.size, blocks=tuple(blocks.get("", [])))
        return "blob", session.put_object(obj)
    header_blob = _put_bytes(session, f.header.header_bytes, block_size)
    records = []
    for t in f.header.tensors:
        blocking = tensor_blocking(t.shape, DTYPE_SIZES[t.dtype], block_size)
        records.append(
            TensorRecord(
                name=t.name,
                dtype=t.dtype,
                shape=tuple(t.shape),
                begin=t.begin,
                end=t.end,
                rows_per_block=blocking.rows_per_block,
                blocks=tuple(blocks.get(t.name, [])),
            )
        )
    tf = TensorFile(size=f.size, header=header_blob, tensors=tuple(records))
    return "tensorfile", session.put_object(tf)


def _put_bytes(session: WriteSession, data: bytes, block_size: int) -> bytes:
    blocks = tuple(session.put_raw(data[b0:b1]) for b0, b1 in blob_ranges(len(data), block_size))
    return session.put_object(BlobFile(size=len(data), blocks=blocks))


def branch_ref(repo: Repository, branch: str | None) -> str:
    """The full ref a commit goes to: the named branch, or HEAD's branch."""
    if branch:
        return HEADS + check_new_ref_name(branch)
    target = repo.head_target()
    if target is None:
        from mergestore.errors import RefError

        raise RefError("HEAD is detached; name a branch with -b")
    return target


def commit_checkpoint(
    repo: Repository,
    path: str | os.PathLike[str],
    *,
    message: str,
    branch: str | None = None,
    base: bytes | None = None,
    meta: dict[str, str] | None = None,
    author: str | None = None,
    want_stats: bool = True,
    progress: Progress | None = None,
    detached: bool = False,
    verify: bool = False,
    session: WriteSession | None = None,
) -> CommitResult:
    """Validate the checkpoint, store it, and publish the commit and ref move atomically.

    `detached` publishes a commit without moving any ref (merge inputs given as paths: the
    merge commit that follows names it as a parent). Files the stat cache vouches for are not
    read again, unless `verify`. A detached commit into `session` is left for the session's
    owner to publish (a merge stores all its folders in one session: merge/inputs.py).
    """
    if session is not None:
        if not detached:
            raise ValueError("commit_checkpoint: a shared session takes detached commits only")
        return _commit_detached_into(
            repo, session, path, message, base, meta, author, want_stats, progress, verify
        )
    t0 = time.perf_counter()
    ckpt = scan_checkpoint(path)  # validates every header before anything is written
    ref = None if detached else branch_ref(repo, branch)
    if base is not None and want_stats and native.kernels is None:
        import torch  # noqa: F401  (the statistics' torch twin; one_torch_thread tunes a loaded torch)
    with repo.writer() as session:
        with one_torch_thread():
            tree_id, ing = ingest_tree(
                repo,
                session,
                ckpt,
                base=base,
                want_stats=want_stats,
                progress=progress,
                verify=verify,
            )
        folder = path_key(os.path.realpath(path))
        reused = (
            _same_input_commit(repo, folder, tree_id, base, message, dict(meta or {}))
            if ref is None
            else None
        )
        if reused is not None:  # a merge input unchanged since its last commit: the same one
            session.publish()  # refreshed stat cache entries, if any
            return _result(reused, tree_id, ckpt, session, ing, t0, None)
        when = round(time.time(), 3)
        summary = message.splitlines()[0] if message else ""
        for _attempt in range(_REF_RACE_RETRIES):
            old = repo.read_ref(ref) if ref is not None else None
            if old is not None:
                parents: tuple[bytes, ...] = (old,)
            elif base is not None:
                parents = (base,)
            else:
                parents = ()
            commit = Commit(
                tree=tree_id,
                parents=parents,
                message=message,
                author=author or default_author(),
                time=when,
                base=base,
                meta=dict(meta or {}),
            )
            cid = session.put_object(commit)
            updates = [RefUpdate(ref, cid, f"commit: {summary}", old=old)] if ref else []
            if ref is None:
                session.put_input_commit(folder, cid)
            try:
                session.publish(updates)
                break
            except RefError:
                # Another writer moved the branch since we read it. A commit is a snapshot, so
                # its parent is simply the tip at publish time: take the new tip and retry.
                if ref is None or repo.read_ref(ref) == old:
                    raise
                del session.objects[cid]
        else:
            raise RefError(f"{ref} keeps moving while this command runs; try again")
    return _result(cid, tree_id, ckpt, session, ing, t0, ref, old)


def _commit_detached_into(
    repo: Repository,
    session: WriteSession,
    path: str | os.PathLike[str],
    message: str,
    base: bytes | None,
    meta: dict[str, str] | None,
    author: str | None,
    want_stats: bool,
    progress: Progress | None,
    verify: bool,
) -> CommitResult:
    """commit_checkpoint(detached=True) into a session someone else publishes."""
    t0 = time.perf_counter()
    ckpt = scan_checkpoint(path)
    written_before = session.bytes_written  # the session may hold other folders already
    with one_torch_thread():
        tree_id, ing = ingest_tree(
            repo, session, ckpt, base=base, want_stats=want_stats, progress=progress, verify=verify
        )
    folder = path_key(os.path.realpath(path))
    reused = _same_input_commit(repo, folder, tree_id, base, message, dict(meta or {}))
    if reused is not None:
        res = _result(reused, tree_id, ckpt, session, ing, t0, None)
        return replace(res, written_bytes=session.bytes_written - written_before)
    commit = Commit(
        tree=tree_id,
        parents=(base,) if base is not None else (),
        message=message,
        author=author or default_author(),
        time=round(time.time(), 3),
        base=base,
        meta=dict(meta or {}),
    )
    cid = session.put_object(commit)
    session.put_input_commit(folder, cid)
    res = _result(cid, tree_id, ckpt, session, ing, t0, None)
    return replace(res, written_bytes=session.bytes_written - written_before)


def tensor_block_count(ckpt: Checkpoint, block_size: int) -> int:
    """A checkpoint's blocks, as every command counts them (docs/format.md, "Blocks"): the
    blocks of its tensors, by position (a block used twice counts twice), whether or not
    their files were read (the stat cache) or their blocks were new."""
    return sum(
        tensor_blocking(t.shape, DTYPE_SIZES[t.dtype], block_size).num_blocks
        for f in ckpt.files
        if f.header
        for t in f.header.tensors
    )


def _same_input_commit(
    repo: Repository,
    folder: bytes,
    tree_id: bytes,
    base: bytes | None,
    message: str,
    meta: dict[str, str],
) -> bytes | None:
    """The commit last made of `folder` as a merge input, if it says exactly what a new one
    would (same tree, parents, base, message and metadata; only its time is older)."""
    cid = repo.input_commit(folder)
    if cid is None or repo.get_object_bytes(cid) is None:
        return None
    c = repo.get_commit(cid)
    parents = (base,) if base is not None else ()
    same = (c.tree, c.parents, c.base, c.message, c.meta) == (tree_id, parents, base, message, meta)
    return cid if same else None


def _result(
    cid: bytes,
    tree_id: bytes,
    ckpt: Checkpoint,
    session: WriteSession,
    ing: _Ingest,
    t0: float,
    ref: str | None,
    previous: bytes | None = None,
) -> CommitResult:
    return CommitResult(
        commit=cid,
        tree=tree_id,
        logical_bytes=sum(f.size for f in ckpt.files),
        written_bytes=session.bytes_written,
        new_blocks=ing.new_blocks,
        total_blocks=tensor_block_count(ckpt, session.repo.config.block_size),
        files=len(ckpt.files),
        tensors=sum(len(f.header.tensors) for f in ckpt.files if f.header),
        seconds=time.perf_counter() - t0,
        branch=ref,
        stats_computed=ing.stats_computed,
        previous=previous,
        files_read=ing.files_read,
        bytes_read=ing.bytes_read,
    )
