"""Value statistics of a tensor whose dtype changed but whose shape did not (bf16 -> fp16).

Block ids of two dtypes never match and their blocks cover different rows (a block holds a
fixed number of bytes), so diff's block-by-block statistics do not apply. Here both sides are
read row range by row range, in A's blocks, each widened to fp64, and the same statistics are
summed: ||B - A||, L1, max |B - A|, changed elements, ||A||, ||B||, <A, B>. One block of each
side is in memory at a time. Nothing is kept in the store's statistics cache (its key is one
dtype).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from mergestore.diff_side import TensorSide, side_blocking, stats_from_sums
from mergestore.errors import FormatError
from mergestore.formats.safetensors import torch_dtype
from mergestore.store.index import DeltaStats
from mergestore.store.packs import ReadMeter
from mergestore.store.parallel import read_exact

if TYPE_CHECKING:
    from mergestore.store.repo import Repository

RowReader = Callable[[int, int], bytes]


def _row_reader(repo: Repository, side: TensorSide, meter: ReadMeter) -> RowReader:
    """rows(r0, r1) -> the raw bytes of rows r0..r1 of one side (a commit's blocks, read in
    order with the last block kept, or a folder tensor's file)."""
    cut = side_blocking(side)
    if side.blocks is None:  # a folder tensor: read the file at its offset

        def from_file(r0: int, r1: int) -> bytes:
            n = (r1 - r0) * cut.row_bytes
            raw = read_exact(side.fd, bytearray(n), n, side.offset + r0 * cut.row_bytes)
            if len(raw) != n:
                raise FormatError("a checkpoint file changed while it was being compared")
            return bytes(raw)

        return from_file
    blocks = side.blocks
    last: dict[int, bytes] = {}

    def block(k: int) -> bytes:
        if k not in last:
            last.clear()
            last[k] = bytes(repo.read_block(blocks[k], meter))
        return last[k]

    def from_blocks(r0: int, r1: int) -> bytes:
        parts = []
        rpb = cut.rows_per_block
        for k in range(r0 // rpb, (r1 - 1) // rpb + 1):
            lo = max(r0, k * rpb) - k * rpb
            hi = min(r1, (k + 1) * rpb) - k * rpb
            parts.append(block(k)[lo * cut.row_bytes : hi * cut.row_bytes])
        return b"".join(parts)

    return from_blocks


def _fp64(raw: bytes, dtype: str):  # -> torch.Tensor
    import torch

    if not raw:
        return torch.empty(0, dtype=torch.float64)
    return torch.frombuffer(bytearray(raw), dtype=torch_dtype(dtype)).to(torch.float64)


def retyped_stats(repo: Repository, a: TensorSide, b: TensorSide, meter: ReadMeter) -> DeltaStats:
    """Statistics of B - A for two same-shaped tensors of different dtypes, in fp64."""
    if a.shape != b.shape:
        raise ValueError("retyped_stats needs tensors of the same shape")
    rows_a, rows_b = _row_reader(repo, a, meter), _row_reader(repo, b, meter)
    cut = side_blocking(a)
    dd = l1 = mx = aa = bb = ab = 0.0
    nnz = numel = 0
    for k in range(cut.num_blocks):
        r0, r1 = cut.row_range(k)
        x, y = _fp64(rows_a(r0, r1), a.dtype), _fp64(rows_b(r0, r1), b.dtype)
        aa += float(x.dot(x))
        bb += float(y.dot(y))
        ab += float(x.dot(y))
        d = y.sub_(x)
        dd += float(d.dot(d))
        nnz += int(np.count_nonzero(d.numpy()))  # values: -0.0 == 0.0, NaN counts
        d.abs_()
        l1 += float(d.sum()) if d.numel() else 0.0
        mx = max(mx, float(d.amax())) if d.numel() else mx
        numel += x.numel()
    return stats_from_sums(dd, l1, mx, bb, aa, nnz, numel, ab)
