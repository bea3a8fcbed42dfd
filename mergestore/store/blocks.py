"""Cutting tensors and blobs into blocks, and naming blocks by their content."""

from __future__ import annotations

import math
from collections.abc import Iterator

import blake3
import xxhash

from mergestore.fast_dataclass import dataclass

ID_BYTES = 32
DEFAULT_BLOCK_SIZE = 1 << 20  # 1 MiB


def block_id(raw: bytes | memoryview) -> bytes:
    """A block's id: the blake3-256 digest of its raw bytes."""
    return blake3.blake3(raw).digest()


def raw_check(bid: bytes, raw: bytes | memoryview) -> int:
    """The check a local read compares a decoded block with: xxh3-64 of its raw bytes,
    seeded with the first 8 bytes of its id (so an index entry that points at another block's
    bytes fails it). Ten times cheaper than blake3; computed only from bytes whose id was just
    computed or verified (docs/format.md, "Checks on read")."""
    return xxhash.xxh3_64_intdigest(raw, int.from_bytes(bid[:8], "little"))


def raw_matches(
    bid: bytes, raw: bytes | memoryview, raw_len: int, check: int | None, *, full: bool = False
) -> bool:
    """Whether decoded bytes are block `bid`: by their length and `check` (raw_check), or
    by their blake3 when there is no check or `full` asks for it (fsck --full)."""
    if len(raw) != raw_len:
        return False
    if check is None or full:
        return block_id(raw) == bid
    return raw_check(bid, raw) == check


@dataclass(frozen=True)
class TensorBlocking:
    """How one tensor is cut: `rows_per_block` rows of `row_bytes` each, along dimension 0."""

    rows: int  # size of dimension 0 (1 for a 0-d tensor)
    row_bytes: int  # bytes per row (itemsize for 1-d and 0-d tensors)
    rows_per_block: int

    @property
    def num_blocks(self) -> int:
        if self.rows == 0 or self.row_bytes == 0:
            return 0
        return math.ceil(self.rows / self.rows_per_block)

    def byte_range(self, index: int) -> tuple[int, int]:
        """Byte range [begin, end) of block `index` inside the tensor's data."""
        r0 = index * self.rows_per_block
        r1 = min(self.rows, r0 + self.rows_per_block)
        return r0 * self.row_bytes, r1 * self.row_bytes

    def row_range(self, index: int) -> tuple[int, int]:
        r0 = index * self.rows_per_block
        return r0, min(self.rows, r0 + self.rows_per_block)

    def ranges(self) -> Iterator[tuple[int, int]]:
        for i in range(self.num_blocks):
            yield self.byte_range(i)


def tensor_blocking(shape: tuple[int, ...], itemsize: int, target: int) -> TensorBlocking:
    """Row-aligned blocking of a tensor near `target` bytes per block.

    Rows are slices along dimension 0, so a block is always a whole number of rows and a
    block of one checkpoint lines up with the block at the same index in another checkpoint
    of the same shape. A row larger than the target makes a block of its own.
    """
    if len(shape) == 0:
        rows, row_bytes = 1, itemsize
    else:
        rows = shape[0]
        row_bytes = itemsize * math.prod(shape[1:])
    rows_per_block = max(1, target // row_bytes) if row_bytes else 1
    return TensorBlocking(rows=rows, row_bytes=row_bytes, rows_per_block=rows_per_block)


def blob_ranges(size: int, target: int) -> Iterator[tuple[int, int]]:
    """Fixed-size byte ranges for a non-tensor file."""
    for begin in range(0, size, target):
        yield begin, min(size, begin + target)
