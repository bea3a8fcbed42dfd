"""Sparse byte planes (plane code ``s``): the non-zero bytes of a plane and the gaps between them.

The sign and exponent plane of an XOR delta between a fine-tune and its base is 97-99.9% zero
bytes. zstd-1 codes it as one sequence per non-zero byte: 0.75 GB/s in and 1.45 GB/s out on the
2-core Zen 1 VM, the largest share of decoding such a block. This code lists the non-zero bytes
and their positions instead (csrc/sparse_planes.c, whose twin this is; the same bytes):

    u32 LE count | count non-zero bytes, in order | count gaps, LEB128 varints of 1-5 bytes

where gap = position - previous position - 1 (the first from position -1). A plane of n bytes
takes 4 + about 2 bytes per non-zero byte; zstd-1 took 1.8-2.5 bytes per non-zero byte on the
same planes. Everything read is checked: a malformed segment raises a corruption error.
"""

from __future__ import annotations

import struct

from mergestore import native
from mergestore.lazy_numpy import np  # numpy is imported on first use

from .base import Buffer, corrupt

_COUNT = struct.Struct("<I")
MAX_VARINT = 5


def bound(n: int) -> int:
    """The largest segment of a plane of n bytes."""
    return 4 + (1 + MAX_VARINT) * n


def encode(plane: np.ndarray, cap: int) -> Buffer | None:
    """The segment of a contiguous uint8 plane, or None if it would take more than cap bytes."""
    kernels = native.kernels
    if kernels is not None:
        out = np.empty(cap, dtype=np.uint8)
        size = kernels.sparse_encode(out, plane)
        return None if size < 0 else memoryview(out)[:size]
    seg = encode_numpy(plane)
    return None if len(seg) > cap else seg


def encode_numpy(plane: np.ndarray) -> bytes:
    """encode without the C kernels."""
    where = np.flatnonzero(plane)
    gaps = np.diff(where, prepend=-1) - 1
    return _COUNT.pack(len(where)) + plane[where].tobytes() + _varints(gaps.astype(np.uint64))


def _varints(values: np.ndarray) -> bytes:
    """LEB128 varints of uint64 values below 2**35, concatenated."""
    lengths = np.ones(len(values), dtype=np.int64)
    for k in range(1, MAX_VARINT):
        lengths += values >= (1 << (7 * k))
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    for k in range(MAX_VARINT):
        has = lengths > k
        byte = (values[has] >> np.uint64(7 * k)) & np.uint64(127)
        more = (lengths[has] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + k] = (byte | more).astype(np.uint8)
    return out.tobytes()


def decode_into(segment: Buffer, out: np.ndarray) -> None:
    """A segment decoded into `out` (a writable uint8 plane of the right length)."""
    kernels = native.kernels
    if kernels is not None:
        if not kernels.sparse_decode(out, segment):
            raise corrupt("malformed sparse plane")
        return
    decode_numpy(segment, out)


def join_into(
    words: np.ndarray,
    dense: np.ndarray,
    dense_hi: bool,
    segment: Buffer,
    rot: int,
    reference: np.ndarray | None,
) -> None:
    """A 16-bit block into `words` (uint16) from a dense byte plane (the high one if
    `dense_hi`) and a sparse segment (the other plane), rotated right by `rot` and XORed with
    `reference` if given: decode_into then byteplane's join2 in one C pass, with no buffer for
    the sparse plane (csrc/sparse_planes.c join2_sparse). Needs the C kernels."""
    kernels = native.kernels
    assert kernels is not None
    if not kernels.join2_sparse(words, dense, dense_hi, segment, rot, reference):
        raise corrupt("malformed sparse plane")


def decode_numpy(segment: Buffer, out: np.ndarray) -> None:
    """decode_into without the C kernels."""
    data = np.frombuffer(segment, dtype=np.uint8)
    n = len(out)
    if len(data) < 4:
        raise corrupt("sparse plane shorter than its count")
    (count,) = _COUNT.unpack_from(data)
    if count > n or count > (len(data) - 4) // 2:
        raise corrupt("sparse plane lists more bytes than it can hold")
    values = data[4 : 4 + count]
    gap_bytes = data[4 + count :].astype(np.uint64)
    ends = np.flatnonzero(gap_bytes < 128)
    if len(ends) != count or (count and ends[-1] != len(gap_bytes) - 1):
        raise corrupt("malformed sparse plane")
    if count == 0:
        if len(gap_bytes):
            raise corrupt("malformed sparse plane")
        out[:] = 0
        return
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > MAX_VARINT:
        raise corrupt("malformed sparse plane")
    shifts = (np.arange(len(gap_bytes)) - np.repeat(starts, lengths)).astype(np.uint64) * 7
    gaps = np.add.reduceat((gap_bytes & np.uint64(127)) << shifts, starts)
    if int(gaps.max()) >= n:  # also keeps the running sum below far from overflow
        raise corrupt("malformed sparse plane")
    positions = np.cumsum(gaps + np.uint64(1)) - np.uint64(1)
    if int(positions[-1]) >= n or not values.all():
        raise corrupt("malformed sparse plane")
    out[:] = 0
    out[positions.astype(np.int64)] = values
