"""Memory for parallel block work: reusable block buffers, exact reads, allocator tuning.

The thread helpers themselves (ordered_map, default_workers) live in mergestore/threads.py,
below every layer that uses them.
"""

from __future__ import annotations

import ctypes
import os
import threading


class BufferPool:
    """Reusable block-sized bytearrays, so reading a block does not fault in fresh pages.

    `get` never blocks: when the pool is empty (or a block is larger than `size`) it allocates.
    A caller returns a buffer with `put` once nothing refers to its bytes any more; the pool
    keeps at most `keep` of them, which bounds its memory.
    """

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def get(self, nbytes: int) -> bytearray:
        if nbytes <= self.size:
            with self._lock:
                if self._free:
                    return self._free.pop()
            return bytearray(self.size)
        return bytearray(nbytes)

    def put(self, buf: bytearray) -> None:
        if len(buf) == self.size:
            with self._lock:
                if len(self._free) < self.keep:
                    self._free.append(buf)


def read_exact(fd: int, buf: bytearray, length: int, offset: int) -> memoryview:
    """Read `length` bytes at `offset` into `buf`; a view of them (short if the file shrank)."""
    view = memoryview(buf)
    got = 0
    while got < length:
        n = os.preadv(fd, [view[got:length]], offset + got)
        if n <= 0:
            break
        got += n
    return view[:got]


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False
_malloc_lock = threading.Lock()


def reuse_freed_memory() -> None:
    """Let glibc malloc recycle freed block-sized buffers instead of unmapping them.

    By default glibc serves allocations of 128 KiB and more with a fresh mmap and unmaps them on
    free, so every 1 MiB block, zstd output and numpy temporary faults its pages in again (256
    page faults per MiB, zeroing included): that alone capped a read at ~1 GB/s. Raising the
    mmap and trim thresholds keeps freed blocks in the heap for the next one. Process-wide and
    idempotent; a no-op where the C library is not glibc. The trim threshold bounds how much
    freed memory the process keeps.
    """
    global _malloc_tuned
    with _malloc_lock:
        if _malloc_tuned:
            return
        _malloc_tuned = True
        # The process's own symbols hold libc's: ctypes.util.find_library would run ldconfig in
        # a subprocess (~14 ms of CPU and ~25 ms of wall on a merge's serial start).
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum on 64-bit
        mallopt(_M_TRIM_THRESHOLD, 128 << 20)
