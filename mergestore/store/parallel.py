"""A bounded, ordered parallel map: a few items in flight per worker, results in input order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int = 2, window: int | None = None
) -> Iterator[R]:
    """Like map(), run on `workers` threads with at most `window` items in flight.

    The window bounds memory: only a few blocks per worker are ever held at once. Work that
    releases the GIL (blake3, zstd, numpy, torch) runs on both cores.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    window = window or workers * 3
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
    import os

    env = os.environ.get("MERGESTORE_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(8, os.cpu_count() or 1))
