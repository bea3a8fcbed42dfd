"""Parallel block work: a bounded ordered map, reusable block buffers, and allocator tuning."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int = 2, window: int | None = None
) -> Iterator[R]:
    """Like map(), run on `workers` threads with at most `window` items in flight.

    The window bounds memory: only a few blocks per worker are ever held at once. Work that
    releases the GIL (blake3, zstd, numpy, torch) runs on both cores. The consumer's own work
    (appending to a pack, writing a file) overlaps with the workers' as long as the window
    holds more items than there are workers.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    window = window or workers * 4
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mergestore") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def default_workers() -> int:
    env = os.environ.get("MERGESTORE_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(8, os.cpu_count() or 1))


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
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum on 64-bit
        mallopt(_M_TRIM_THRESHOLD, 128 << 20)


@contextlib.contextmanager
def one_torch_thread() -> Generator[None, None, None]:
    """Run torch ops single-threaded inside block workers (restored afterwards).

    The block workers already keep every core busy; torch's own intra-op threads on top of them
    can only contend (measured on this 2-core machine under load: one block's delta statistics
    took ~50 ms of CPU with 2 torch threads, ~7 ms with one). A no-op when torch is not
    imported.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
