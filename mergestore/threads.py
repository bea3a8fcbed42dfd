"""Thread helpers shared by every layer: a bounded ordered map and the thread-count knobs.

It knows nothing of storage or of merge arithmetic, so store/, ops/ and merge/ can all use it.
One environment variable sets how many threads mergestore uses: MERGESTORE_THREADS (default: one
per core, at most 8). Results never depend on it (docs/methods.md, "Threads").
"""

from __future__ import annotations

import contextlib
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
    own: set[int] = set()  # the pool's thread ids
    pool = ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix="mergestore",
        initializer=lambda: own.add(threading.get_ident()),
    )
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
        # A map dropped half-way is closed by whichever thread frees it, possibly one of the
        # pool's own workers, which cannot join itself: it leaves the pool to wind down.
        pool.shutdown(wait=threading.get_ident() not in own)


def thread_limit() -> int | None:
    """MERGESTORE_THREADS, when set to a positive integer: the threads mergestore may use."""
    env = os.environ.get("MERGESTORE_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else None


def default_workers() -> int:
    """Threads for block work (reading, decoding, hashing): MERGESTORE_THREADS, else one per
    core, at most 8."""
    return thread_limit() or max(1, min(8, os.cpu_count() or 1))


def kernel_threads(wanted: int) -> int:
    """Threads one merge kernel may split a large tensor over: `wanted`, capped by
    MERGESTORE_THREADS (so MERGESTORE_THREADS=1 runs every kernel on one thread)."""
    limit = thread_limit()
    return max(1, min(wanted, limit)) if limit else wanted


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
