"""Append-only pack files holding encoded block payloads.

A pack is a file `packs/pack-NNNNNN.pack`:

    magic "MSPACK01"
    entries: "BLK1" | block id (32 bytes) | payload length (u32 LE) | payload

The index points at payload offsets; the entry headers make a pack self-describing, so fsck
can walk it and a lost index could be rebuilt. Only the process holding a pack's flock
appends to it; a crash can leave an unpublished tail, which nothing references.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from mergestore import iotally
from mergestore.errors import CorruptionError, MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.store import faults

if TYPE_CHECKING:
    from mergestore.store.index import BlockLocation

Buffer = bytes | bytearray | memoryview

PACK_MAGIC = b"MSPACK01"
ENTRY_MAGIC = b"BLK1"
ENTRY_HEADER = struct.Struct("<4s32sI")
DEFAULT_PACK_LIMIT = 2 << 30  # start a new pack past 2 GiB
# Make the appended bytes durable in the background every this many bytes, so the fsync before
# publish finds little left to do: the disk (and its write cache) works while the cores encode.
SYNC_EVERY_BYTES = 8 << 20
_CREATE_ATTEMPTS = 64  # new packs taken by other writers before we could lock one, at most


def sync_in_background(fd: int) -> Future[None] | None:
    """fdatasync a pack on the process's flusher thread; None where that cannot be done.

    Starting writeback alone (sync_file_range) was not enough: on a disk with a volatile write
    cache (a VM's virtio disk) the fsync before publish still paid for the cache flush of every
    byte written since the last one, ~1.4 ms per MB here (a merge writing 124 MB waited 0.11 s
    at its journal save and 0.07-0.17 s before its publish). A background fdatasync flushes
    as the merge goes. The flusher gets its own descriptor of the file (not a dup: that would
    share, and hold, the appender's flock), so the appender may close its own meanwhile; the
    fsync before publish still makes every byte durable whatever happened here."""
    try:
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # not Linux: the fsync before publish does all the work
    try:
        return _flusher().submit(_datasync, own)
    except RuntimeError:  # the interpreter is shutting down
        os.close(own)
        return None


_FLUSHER: tuple[int, ThreadPoolExecutor] | None = None
_FLUSHER_LOCK = threading.Lock()


def _flusher() -> ThreadPoolExecutor:
    """The process's one flusher thread (a new one in a forked child)."""
    global _FLUSHER
    with _FLUSHER_LOCK:
        if _FLUSHER is None or _FLUSHER[0] != os.getpid():
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergestore-flush")
            _FLUSHER = (os.getpid(), pool)
        return _FLUSHER[1]


def _datasync(fd: int) -> None:
    try:
        with contextlib.suppress(OSError):  # a head start only: errors surface in sync()
            os.fdatasync(fd)
    finally:
        os.close(fd)


def pack_path(pack_dir: Path, pack_id: int) -> Path:
    return pack_dir / f"pack-{pack_id:06d}.pack"


def pack_files_size(pack_dir: Path) -> int:
    """Bytes of every pack file in the folder (one removed while listed is skipped)."""
    total = 0
    for p in pack_dir.glob("pack-*.pack"):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            continue  # removed since listed: by gc, or a writer's rollback of its new pack
    return total


def pack_size_and_magic(pack_dir: Path, pack_id: int) -> tuple[int, bool] | None:
    """A pack file's size and whether it starts with the pack magic; None if it is gone."""
    p = pack_path(pack_dir, pack_id)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            magic = f.read(len(PACK_MAGIC))
    except FileNotFoundError:
        return None
    return size, magic == PACK_MAGIC


def _inside_header(bid: bytes, loc: BlockLocation) -> str | None:
    """A payload offset with no room for its entry header before it is a problem."""
    if loc.offset < ENTRY_HEADER.size:
        return f"block {bid.hex()[:12]}: offset {loc.offset} in pack {loc.pack} is inside a header"
    return None


def entry_bounds_problem(bid: bytes, loc: BlockLocation, pack_size: int | None) -> str | None:
    """What is wrong with where the index puts a block's payload, given its pack's size (None:
    the pack is missing), or None."""
    if pack_size is None:
        return f"block {bid.hex()[:12]}: pack {loc.pack} is missing"
    if loc.offset + loc.length > pack_size:
        return f"block {bid.hex()[:12]}: beyond the end of pack {loc.pack}"
    return _inside_header(bid, loc)


def entry_header_problem(packs: PackReader, bid: bytes, loc: BlockLocation) -> str | None:
    """What is wrong with the pack entry header in front of a block's payload (it must name
    this block and its length), or None."""
    inside = _inside_header(bid, loc)  # guards the read below, which starts 40 bytes before
    if inside:
        return inside
    h = ENTRY_HEADER.size
    try:
        magic, hid, length = ENTRY_HEADER.unpack(packs.read(loc.pack, loc.offset - h, h))
    except (CorruptionError, OSError) as e:
        return f"block {bid.hex()[:12]}: {e}"
    if magic != ENTRY_MAGIC or hid != bid or length != loc.length:
        return f"block {bid.hex()[:12]}: the pack {loc.pack} entry at its offset is not this block"
    return None


def list_pack_ids(pack_dir: Path) -> list[int]:
    ids = []
    for p in pack_dir.glob("pack-*.pack"):
        try:
            ids.append(int(p.stem.split("-")[1]))
        except (IndexError, ValueError):
            continue
    return sorted(ids)


class PackAppender:
    """Appends entries to one pack file that this process holds an exclusive flock on.

    `fresh` only ever creates new packs (gc copies live entries into packs of its own).
    """

    def __init__(
        self, pack_dir: Path, limit: int = DEFAULT_PACK_LIMIT, *, fresh: bool = False
    ) -> None:
        self.pack_dir = pack_dir
        self.limit = limit
        self.fresh = fresh
        self.start_sizes: dict[int, int] = {}  # pack id -> its size when we took it
        self.bytes_written = 0
        self._fd: int | None = None
        self._pack_id = -1
        self._offset = 0
        self._synced_to = 0  # where the last background sync was asked from
        self._background: Future[None] | None = None
        self._dirty: set[int] = set()
        self._fds: dict[int, int] = {}
        self.created: set[int] = set()  # packs this appender created

    def _open_some_pack(self) -> None:
        """Take a pack with room that no other writer holds, or create a new one."""
        for pid in [] if self.fresh else reversed(list_pack_ids(self.pack_dir)):
            path = pack_path(self.pack_dir, pid)
            try:
                if path.stat().st_size >= self.limit:
                    continue
            except FileNotFoundError:
                continue  # an empty pack its creator rolled back (see rollback())
            if self._try_take(pid, create=False):
                return
        lock_fd = os.open(self.pack_dir / ".alloc.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            # A writer scanning for a pack with room (above, without this lock) can take the
            # pack we just created before we lock it: it is theirs then, and we make the next.
            for _attempt in range(_CREATE_ATTEMPTS):
                ids = list_pack_ids(self.pack_dir)
                pid = (ids[-1] + 1) if ids else 1
                if self._try_take(pid, create=True):
                    return
            raise MergestoreError(f"cannot create pack {pid}")
        finally:
            os.close(lock_fd)

    def _try_take(self, pid: int, *, create: bool) -> bool:
        path = pack_path(self.pack_dir, pid)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            fd = os.open(path, flags, 0o644)
        except (FileExistsError, FileNotFoundError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if not create and not _still_named(path, fd):
            os.close(fd)  # locked after its creator removed it (rollback()): not a pack now
            return False
        size = os.fstat(fd).st_size
        if size == 0:
            os.write(fd, PACK_MAGIC)
            size = len(PACK_MAGIC)
            if create:
                self.created.add(pid)
        self._release_current()
        self.start_sizes.setdefault(pid, size)
        self._fd, self._pack_id, self._offset = fd, pid, size
        self._synced_to = size
        self._fds[pid] = fd
        self._dirty.add(pid)
        return True

    def _release_current(self) -> None:
        # Keep previous fds open until sync(): their data still needs fsync.
        self._fd = None

    def append(self, block: bytes, payload: Buffer | tuple[Buffer, ...]) -> tuple[int, int]:
        """Append one entry; returns (pack id, payload offset). `payload`: its bytes, or a
        tuple of buffers that are its bytes in order (written with one pwritev, not joined)."""
        if self._fd is None or self._offset >= self.limit:
            self._open_some_pack()
        assert self._fd is not None
        parts = payload if isinstance(payload, tuple) else (payload,)
        size = sum(memoryview(p).nbytes for p in parts)
        header = ENTRY_HEADER.pack(ENTRY_MAGIC, block, size)
        try:
            if faults.ENV in os.environ:
                self._injected_faults(header, b"".join(parts))
            n = os.pwritev(self._fd, [header, *parts], self._offset)
            if n != len(header) + size:
                # A short write (the disk filled up mid-entry): finish it, or get the real error.
                self._write_all(b"".join([header, *parts])[n:], self._offset + n)
        except OSError as e:
            path = pack_path(self.pack_dir, self._pack_id)
            raise OSError(e.errno, e.strerror, str(path)) from None
        payload_offset = self._offset + ENTRY_HEADER.size
        self._offset = payload_offset + size
        self.bytes_written += ENTRY_HEADER.size + size
        iotally.add_written(ENTRY_HEADER.size + size)
        if self._offset - self._synced_to >= SYNC_EVERY_BYTES and (
            self._background is None or self._background.done()
        ):  # one at a time: a slow disk makes them further apart, never queued up
            self._background = sync_in_background(self._fd)
            self._synced_to = self._offset
        return self._pack_id, payload_offset

    def _write_all(self, data: bytes, pos: int) -> None:
        while data:
            n = os.pwrite(self._fd, data, pos)  # type: ignore[arg-type]
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data, pos = data[n:], pos + n

    def _injected_faults(self, header: bytes, payload: bytes | memoryview) -> None:
        """Test hooks (see faults.py): a torn entry then death, or a full disk mid-entry."""
        torn = faults.armed("torn-append")
        if torn or faults.armed("enospc"):
            part = (header + bytes(payload))[: (len(header) + len(payload)) // 2]
            os.pwrite(self._fd, part, self._offset)  # type: ignore[arg-type]
            if torn:
                os._exit(faults.KILL_EXIT_CODE)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def rollback(self) -> None:
        """Cut every pack we appended to back to its size when we took it.

        Only for a session that will not publish: nothing points at those bytes, and we still
        hold each pack's flock, so no one else has appended after them. Frees the space (say,
        after a full disk) and keeps packs walkable. A pack this appender created is removed
        (while still locked: a writer that opened it meanwhile sees it is gone once it gets
        the lock, _still_named), so an interrupted write leaves no new file behind.
        """
        for pid, size in self.start_sizes.items():
            fd = self._fds.get(pid)
            if fd is not None:
                os.ftruncate(fd, size)
                if pid in self.created and size == len(PACK_MAGIC):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(pack_path(self.pack_dir, pid))
        self._offset = self.start_sizes.get(self._pack_id, self._offset)
        self._synced_to = self._offset

    def sizes(self) -> dict[int, tuple[int, int, bool]]:
        """Per pack taken: (its size when taken, its size now, whether this appender made it)."""
        out = {}
        for pid, start in self.start_sizes.items():
            if pid == self._pack_id and self._fd is not None:
                end = self._offset
            else:
                fd = self._fds.get(pid)
                end = os.fstat(fd).st_size if fd is not None else start
            out[pid] = (start, end, pid in self.created)
        return out

    def sync(self) -> None:
        """Make every appended byte durable (before the index transaction that points at it)."""
        for pid in sorted(self._dirty):
            os.fsync(self._fds[pid])
        if self._dirty:
            dfd = os.open(self.pack_dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._dirty = {self._pack_id} if self._fd is not None else set()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)  # closing drops the flock
        self._fds.clear()
        self._fd = None


def _still_named(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open at `fd` (a pack may be removed under us)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


@dataclass
class ReadMeter:
    """Bytes really read from pack files, counted by the code that reads them."""

    bytes_read: int = 0
    blocks_read: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_read += nbytes
            self.blocks_read += 1


class PackReader:
    """Positional reads from pack files; thread-safe, keeps one fd per pack."""

    def __init__(self, pack_dir: Path) -> None:
        self.pack_dir = pack_dir
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def _fd(self, pack_id: int) -> int:
        fd = self._fds.get(pack_id)
        if fd is None:
            with self._lock:
                fd = self._fds.get(pack_id)
                if fd is None:
                    try:
                        fd = os.open(pack_path(self.pack_dir, pack_id), os.O_RDONLY)
                    except FileNotFoundError as e:
                        raise CorruptionError(f"pack {pack_id} is missing") from e
                    # No kernel read-ahead: a read gets exactly the bytes asked for, and the
                    # block reader (reader.py) asks ahead for exactly the ranges it will read.
                    # Read-ahead pulled in blocks a budgeted merge skips (2x the bytes counted).
                    with contextlib.suppress(OSError):
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                    self._fds[pack_id] = fd
        return fd

    def read(self, pack_id: int, offset: int, length: int) -> bytes:
        data = os.pread(self._fd(pack_id), length, offset)
        iotally.add_read(len(data))
        if len(data) != length:
            raise CorruptionError(
                f"pack {pack_id} is truncated: wanted {length} bytes at offset {offset}"
            )
        return data

    def prefetch(self, loc: BlockLocation) -> None:
        """Ask the kernel to start reading a block's payload (no-op when it is cached)."""
        self.advise(loc.pack, loc.offset, loc.length)

    def advise(self, pack_id: int, offset: int, length: int) -> None:
        """Ask the kernel to start reading a byte range of a pack (no-op when it is cached)."""
        with contextlib.suppress(OSError, CorruptionError):  # advice only: read() reports
            os.posix_fadvise(self._fd(pack_id), offset, length, os.POSIX_FADV_WILLNEED)

    def size(self, pack_id: int) -> int:
        return os.fstat(self._fd(pack_id)).st_size

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def walk_pack(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """Yield (payload offset, block id, payload length) for every entry; stops at a torn tail."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(PACK_MAGIC)) != PACK_MAGIC:
            raise CorruptionError(f"{path.name}: bad pack magic")
        pos = len(PACK_MAGIC)
        while pos + ENTRY_HEADER.size <= size:
            f.seek(pos)
            magic, bid, length = ENTRY_HEADER.unpack(f.read(ENTRY_HEADER.size))
            if magic != ENTRY_MAGIC or pos + ENTRY_HEADER.size + length > size:
                return
            yield pos + ENTRY_HEADER.size, bid, length
            pos += ENTRY_HEADER.size + length
