"""Running a codec chain: the `Encoded` result, decoding by spec, and spec queries."""

from __future__ import annotations

from functools import cached_property

from mergestore.fast_dataclass import dataclass
from mergestore.lazy_numpy import np  # numpy is imported on first use

from .base import AnyBuffer, ReferenceStage, corrupt
from .byteplane import BytePlane
from .registry import AnyStage, parse_spec
from .xordelta import XorDelta


@dataclass(frozen=True)
class Encoded:
    """One encoded block: the chain that made it, the bytes for the pack, and its reference."""

    spec: str  # canonical chain spec (see registry.py), decodable by `decode_block`
    # The bytes for the pack: one bytes-like (for "raw" the caller's buffer itself, no copy),
    # or a tuple of the buffers they are the concatenation of (byte planes: header, segments,
    # tail; none a view of the raw block), which a pack append writes without joining them.
    parts: AnyBuffer | tuple[AnyBuffer, ...]
    ref: bytes | None  # 32-byte id of the reference block when the chain uses one, else None

    @cached_property
    def payload(self) -> AnyBuffer:
        """The bytes for the pack as one bytes-like (a tuple of parts joined, once)."""
        return b"".join(self.parts) if isinstance(self.parts, tuple) else self.parts

    @property
    def buffers(self) -> tuple[AnyBuffer, ...]:
        """The bytes for the pack as a tuple of buffers, in order (no copy)."""
        return self.parts if isinstance(self.parts, tuple) else (self.parts,)

    @property
    def nbytes(self) -> int:
        return parts_nbytes(self.parts)


def parts_nbytes(parts: AnyBuffer | tuple[AnyBuffer, ...]) -> int:
    """Bytes of a payload: one buffer, or the buffers it is the concatenation of."""
    if isinstance(parts, tuple):
        return sum(memoryview(b).nbytes for b in parts)
    return memoryview(parts).nbytes


def run_encode(chain: tuple[AnyStage, ...], data: AnyBuffer, reference: AnyBuffer | None):
    """Apply `chain` left to right."""
    for stage in chain:
        if isinstance(stage, ReferenceStage):
            if reference is None:
                raise ValueError(f"codec {stage.name!r} needs a reference block")
            data = stage.encode(data, reference)
        else:
            data = stage.encode(data)
    return data


def decode_block(
    spec: str, payload: AnyBuffer, *, reference: AnyBuffer | None = None, view: bool = False
) -> AnyBuffer:
    """Give back the exact raw bytes of a block encoded as `spec`.

    Does not verify the result against the block id (the store does); raises CorruptionError
    on a malformed spec or payload, ValueError if the spec needs a reference and none is given.
    With `view`, the result may be a read-only memoryview of the last stage's own array (no
    final copy into `bytes`, which would hold the GIL); it never aliases `reference`.
    """
    # A memoryview, so that stages may only ever work in place on arrays they made themselves
    # (the XOR stage does), never on the caller's payload.
    data: AnyBuffer = memoryview(payload)
    for stage in reversed(parse_spec(spec)):
        if isinstance(stage, ReferenceStage):
            if reference is None:
                raise ValueError(f"codec spec {spec!r} needs the reference block's raw bytes")
            data = stage.decode(data, reference)
        else:
            data = stage.decode(data)
    if type(data) is bytes:
        return data
    if isinstance(data, memoryview) and data.obj is payload and type(payload) is bytes:
        return payload  # "raw": the payload is the block
    if view and isinstance(data, np.ndarray) and data.flags.c_contiguous:
        # The stages' arrays are their own or views of immutable bytes (a pack read), never
        # of the caller's reference.
        return memoryview(data.reshape(-1).view(np.uint8)).toreadonly()
    return bytes(data)


def decode_block_into(
    spec: str, payload: AnyBuffer, out: np.ndarray, *, reference: AnyBuffer | None = None
) -> None:
    """decode_block, writing the raw bytes into `out` (a writable uint8 array of the block's
    length). 16- and 32-bit byte planes, XORed or not, decode straight into `out` with the C
    kernels (no intermediate block, no copy); any other chain decodes, then is copied."""
    stages = parse_spec(spec)
    last = stages[-1] if stages else None
    if (
        isinstance(last, BytePlane)
        and last.decodes_into
        and (len(stages) == 1 or (len(stages) == 2 and isinstance(stages[0], XorDelta)))
    ):
        if len(stages) == 2 and reference is None:
            raise ValueError(f"codec spec {spec!r} needs the reference block's raw bytes")
        last.decode_into(memoryview(payload), out, reference if len(stages) == 2 else None)
        return
    raw = decode_block(spec, payload, reference=reference, view=True)
    if memoryview(raw).nbytes != len(out):
        raise corrupt(f"block decoded to {memoryview(raw).nbytes} bytes, expected {len(out)}")
    out[:] = np.frombuffer(raw, dtype=np.uint8)


def spec_uses_reference(spec: str) -> bool:
    """True if decoding `spec` needs the reference block's raw bytes."""
    return any(stage.uses_reference for stage in parse_spec(spec))


def spec_codec_names(spec: str) -> list[str]:
    """Codec names in encode order, e.g. ["xor", "bplane"] (for `du` by codec)."""
    return [stage.name for stage in parse_spec(spec)]
