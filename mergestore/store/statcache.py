"""The stat cache: what a file on disk was when it was last stored, as git's index keeps it.

Key: the file's real path. Value: its stat (size, mtime_ns, ctime_ns, inode, device) when it
was read, the store's block size, the stored object (a TensorFile or a BlobFile) and the time
the entry was written. A later `commit` (or a merge naming the folder) whose file still has the
same stat takes the object without reading the file: a stat instead of a re-hash.

Racy timestamps, as git treats them: a file changed within the same timestamp tick as the read
that recorded it keeps its mtime, so its stat cannot tell. An entry whose file mtime is not
older than the entry's write time (less a margin for coarse filesystem clocks) is racy, and the
file is read again (which rewrites the entry, clean from then on).
"""

from __future__ import annotations

import os
import struct

from mergestore.fast_dataclass import dataclass

# Filesystem timestamps come from a clock that ticks coarser than time.time_ns() (a few ms on
# Linux; whole seconds on some filesystems): a file written just after an entry may carry an
# mtime up to one tick before the entry's write time.
RACY_WINDOW_NS = 2_000_000_000

KINDS = ("blob", "tensorfile")
_VALUE = struct.Struct("<QqqQQqIB32s")


@dataclass(frozen=True)
class FileStamp:
    """The parts of a file's stat that change when its content does."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class StatEntry:
    """A file already stored: its stat stamp, the object it gave and how."""

    stamp: FileStamp
    written_ns: int
    block_size: int
    kind: str
    object: bytes

    def encode(self) -> bytes:
        s = self.stamp
        return _VALUE.pack(
            s.size,
            s.mtime_ns,
            s.ctime_ns,
            s.ino,
            s.dev,
            self.written_ns,
            self.block_size,
            KINDS.index(self.kind),
            self.object,
        )

    @classmethod
    def decode(cls, value: bytes) -> StatEntry | None:
        """None for a value this version cannot read (the cache is only a cache)."""
        if len(value) != _VALUE.size:
            return None
        size, mtime, ctime, ino, dev, written, block_size, kind, oid = _VALUE.unpack(value)
        if kind >= len(KINDS):
            return None
        return cls(FileStamp(size, mtime, ctime, ino, dev), written, block_size, KINDS[kind], oid)

    @property
    def racy(self) -> bool:
        return self.stamp.mtime_ns >= self.written_ns - RACY_WINDOW_NS

    def matches(self, stamp: FileStamp, block_size: int, kind: str) -> bool:
        """The file is what this entry recorded, and the entry may be trusted."""
        return (
            self.stamp == stamp
            and self.block_size == block_size
            and self.kind == kind
            and not self.racy
        )


def path_key(path: str | os.PathLike[str]) -> bytes:
    return os.fsencode(path)
