"""Uninitialised tensors on memory that is already paged in.

A merge allocates the same few tensor sizes over and over (inputs, stacked deltas, outputs).
Fresh memory is expensive here: the kernel zeroes every page on first touch, 0.62 s per GB
for torch.empty above glibc's mmap threshold (32 MiB at most), 0.20 s per GB with numpy's
transparent huge pages; a ties merge of bench-0.5g spent 11% of its CPU time in the kernel's
page clearing. So large buffers come from a small pool of freed ones: when the last tensor
viewing a buffer dies, the buffer goes back to the pool (up to POOL_BYTES in all) for the next
tensor of at most its size. Small buffers come from malloc's heap, which recycles them.

The pool is on only inside `pooling()` (the merge engine's run), so a program that calls the
kernels itself keeps no idle memory; it is emptied when the last `pooling()` ends.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mergestore.lazy_numpy import np  # numpy is imported on first use

if TYPE_CHECKING:
    import torch
else:
    from mergestore.lazy_torch import torch

POOLED_MIN = 1 << 20  # buffers from 1 MiB up are pooled
POOL_BYTES = 1 << 30  # at most this much idle memory is kept

_lock = threading.Lock()
_free: list[tuple[int, int, np.ndarray]] = []  # (nbytes, serial, buffer), sorted by size
_free_bytes = 0
_serial = 0
_active = 0  # pooling() contexts open


@contextlib.contextmanager
def pooling() -> Iterator[None]:
    """Recycle large buffers while the context is open (nested and threaded uses add up)."""
    global _active
    with _lock:
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            last = _active == 0
        if last:
            trim()


def _take(nbytes: int) -> np.ndarray:
    """The smallest idle buffer that holds `nbytes` (already paged in) and is at most twice
    that, or a new one. A much larger idle buffer stays for a request of its size: taken by a
    small one, it made the next large one page in fresh memory (a multislerp of bench-384m
    paged in its 393 MB cache twice that way, to spare one 65 MB buffer)."""
    global _free_bytes
    with _lock:
        i = bisect.bisect_left(_free, (nbytes, -1))
        if i < len(_free) and _free[i][0] <= 2 * nbytes:
            size, _, buf = _free.pop(i)
            _free_bytes -= size
            return buf
    return np.empty(nbytes, dtype=np.uint8)


def _give(buf: np.ndarray) -> None:
    global _free_bytes, _serial
    with _lock:
        if not _active or _free_bytes + buf.nbytes > POOL_BYTES:
            return  # dropped: freed by numpy
        _serial += 1
        bisect.insort(_free, (buf.nbytes, _serial, buf))
        _free_bytes += buf.nbytes


def trim() -> None:
    """Free every idle buffer."""
    global _free_bytes
    with _lock:
        _free.clear()
        _free_bytes = 0


def empty_bytes(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 array of `nbytes`, on a pooled buffer when it is large (the
    buffer goes back to the pool when the last view of the array dies)."""
    if nbytes < POOLED_MIN or not _active:
        return np.empty(nbytes, dtype=np.uint8)
    buf = _take(nbytes)
    # An array over a memoryview of the buffer: numpy points the base of every view of it (a
    # slice, a reshape, a dtype view) at this array, not at `buf`, so the buffer goes back to
    # the pool only once the last of them is gone.
    view = np.frombuffer(memoryview(buf)[:nbytes], dtype=np.uint8)
    weakref.finalize(view, _give, buf)
    return view


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """torch.empty(shape, dtype=dtype), on a pooled buffer when it is large."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(empty_bytes(nbytes)).view(dtype).reshape(shape)


def empty_like(t: torch.Tensor) -> torch.Tensor:
    return empty(t.shape, t.dtype)
