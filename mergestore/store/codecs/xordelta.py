"""XOR delta against a reference block (the same tensor position in a base checkpoint).

A fine-tune changes most weights only in their low mantissa bits, so XOR with the base leaves
zero exponent bytes and mostly-zero high mantissa bits; the following stages (byte planes +
zstd) then shrink it several-fold. XOR is bytewise, so odd lengths need no special care and
the stage commutes with the byte-plane rotation.
"""

from __future__ import annotations

from typing import ClassVar

from mergestore.fast_dataclass import dataclass
from mergestore.lazy_numpy import np  # numpy is imported on first use

from .base import Buffer, ReferenceStage, corrupt


def xor_bytes(a: Buffer, b: Buffer) -> np.ndarray:
    """Bytewise XOR of two equally long buffers, as a uint8 array.

    Works in place when `a` is a writable uint8 array (a stage's own output while decoding):
    one pass instead of two. Callers that need `bytes` convert once at the end.
    """
    y = np.frombuffer(b, dtype=np.uint8)
    if isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.flags.writeable:
        return np.bitwise_xor(a, y, out=a)
    return np.bitwise_xor(np.frombuffer(a, dtype=np.uint8), y)


@dataclass(frozen=True)
class XorDelta(ReferenceStage):
    """data XOR reference; needs the reference's raw bytes on both sides."""

    name: ClassVar[str] = "xor"

    def encode(self, data: Buffer, reference: Buffer) -> Buffer:
        if memoryview(data).nbytes != memoryview(reference).nbytes:
            raise ValueError("xor delta needs a reference of the same length as the block")
        return xor_bytes(data, reference)

    def decode(self, data: Buffer, reference: Buffer) -> Buffer:
        if memoryview(data).nbytes != memoryview(reference).nbytes:
            raise corrupt(
                f"xor delta of {memoryview(data).nbytes} bytes vs reference of "
                f"{memoryview(reference).nbytes} bytes"
            )
        return xor_bytes(data, reference)

    def to_spec(self) -> str:
        return self.name

    @classmethod
    def from_spec(cls, params: str | None) -> XorDelta:
        if params is not None:
            raise ValueError("xor takes no parameters")
        return cls()
