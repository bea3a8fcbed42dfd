"""The pieces diff and diff_retyped share: one tensor of one side of a diff, how its rows
are cut into blocks, and the statistics built from the sums both accumulate."""

from __future__ import annotations

import math

from mergestore.fast_dataclass import dataclass
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.store.blocks import TensorBlocking
from mergestore.store.index import DeltaStats


@dataclass(frozen=True)
class TensorSide:
    """One tensor of one side: its layout, and its block ids when they are known."""

    dtype: str
    shape: tuple[int, ...]
    rows_per_block: int
    blocks: tuple[bytes, ...] | None  # None for a folder tensor (hashed while diffing)
    fd: int = -1
    offset: int = 0  # absolute file offset of the tensor's data (folder tensors)
    nbytes: int = 0


def side_blocking(s: TensorSide) -> TensorBlocking:
    """How a side's rows fall into its blocks (a 0-d tensor is one row of one element)."""
    if len(s.shape) == 0:
        rows, row_bytes = 1, DTYPE_SIZES[s.dtype]
    else:
        rows, row_bytes = s.shape[0], DTYPE_SIZES[s.dtype] * math.prod(s.shape[1:])
    return TensorBlocking(rows=rows, row_bytes=row_bytes, rows_per_block=s.rows_per_block)


def stats_from_sums(
    dd: float,
    l1: float,
    mx: float,
    bb: float,
    aa: float,
    nnz: int,
    numel: int,
    ab: float | None = None,
) -> DeltaStats:
    """DeltaStats of B - A from ||B-A||^2, L1, max |B-A|, ||B||^2, ||A||^2, the changed count
    and <A, B> (by polarization when not summed: ||A||^2 + ||B||^2 - ||B-A||^2 has no
    cancellation where it matters, the error is eps * (||A||^2 + ||B||^2), tiny against
    ||A|| ||B||)."""
    return DeltaStats(
        l2=math.sqrt(dd),
        l1=l1,
        max_abs=mx,
        l2_b=math.sqrt(bb),
        nnz=nnz,
        numel=numel,
        dot=(aa + bb - dd) / 2 if ab is None else ab,
        l2_a=math.sqrt(aa),
    )
