"""Picking a codec chain per block (`encode_block`).

Heuristic (measured in bench/bench_codecs.py, documented in docs/codecs.md):
- Float dtypes (BF16, F16, F32, F64): byte planes, each plane zstd or raw (decided per plane).
  Plain zstd is tried only when the planes did poorly (ratio above `TRY_ZSTD_ABOVE`), and then
  first on a 16 KiB sample, so ordinary weights pay for one encoder, not two.
- Everything else (integers, bool, fp8, blobs with dtype None): zstd.
- With a reference: XOR first. If that already halves the block it is taken; otherwise the
  non-delta chain is also encoded and the delta kept only if clearly smaller (a delta costs an
  extra reference read on checkout).
- Whatever wins must save at least `MIN_SAVING` of the raw size, else the block is stored raw.
"""

from __future__ import annotations

from .base import AnyBuffer
from .byteplane import BytePlane, estimate_ratio
from .chain import Encoded, parts_nbytes
from .registry import CODECS, AnyStage, chain_to_spec
from .xordelta import XorDelta
from .zstd import Zstd

MIN_SAVING = 0.02  # below this, "raw" (no decode cost) wins
TRY_ZSTD_ABOVE = 0.80  # planes ratio above which plain zstd might do better
SAMPLE_BYTES = 16 * 1024
DELTA_GOOD_ENOUGH = 0.50  # a delta at or below this ratio is taken without a second try
DELTA_MUST_BEAT = 0.95  # otherwise the delta must be this much smaller than the non-delta

# safetensors dtype -> (word width, left rotation) for the byte-plane codec.
# 2-byte floats are split without rotation: high byte = sign + top exponent bits, low byte =
# lowest exponent bit + mantissa. ZipNN's rotation by 1 (exponent alone in the high byte) was
# 0.9% smaller on bf16 weights (0.667 vs 0.673 of raw) but its split and join cost ~2x the
# passes (decode 10-14% slower end to end); on XOR deltas no rotation was smaller too (0.124
# vs 0.126 for a light fine-tune, 0.416 vs 0.434 for a heavy one). Blocks written with rot=1
# stay readable.
FLOAT_LAYOUT: dict[str, tuple[int, int]] = {
    "BF16": (2, 0),
    "F16": (2, 0),
    "F32": (4, 1),
    "F64": (8, 1),
}


# A chain and its payload: one buffer, or the buffers it is the concatenation of (Encoded.parts)
Candidate = tuple[tuple[AnyStage, ...], AnyBuffer | tuple[AnyBuffer, ...]]


def _size(c: Candidate) -> int:
    return parts_nbytes(c[1])


def _plain(
    data: AnyBuffer,
    dtype: str | None,
    level: int,
    allowed: frozenset[str],
    reference: AnyBuffer | None = None,
) -> Candidate | None:
    """Best non-delta chain for `data`, or for data XOR `reference` when one is given (the
    XOR stage's output: the byte planes split it without making it first); None if the
    allowed codecs offer none but raw."""
    n = memoryview(data).nbytes
    layout = FLOAT_LAYOUT.get(dtype or "")
    use_zstd = "zstd" in allowed

    def xored() -> AnyBuffer:
        return data if reference is None else XorDelta().encode(data, reference)

    if layout is not None and "bplane" in allowed:
        stage, payload = BytePlane.encode_parts(data, *layout, level, reference=reference)
        best: Candidate = ((stage,), payload)
        poor = n and _size(best) > TRY_ZSTD_ABOVE * n
        if use_zstd and poor:
            x = xored()
            if _zstd_may_win(x, _size(best) / n, level):
                other = _zstd(x, level)
                if _size(other) < _size(best):
                    best = other
        return best
    if use_zstd:
        return _zstd(xored(), level)
    return None


def _zstd(data: AnyBuffer, level: int) -> Candidate:
    stage = Zstd(level)
    return (stage,), stage.encode(data)


def _zstd_may_win(data: AnyBuffer, planes_ratio: float, level: int) -> bool:
    """Does zstd beat the byte planes' ratio on a sample from the middle of the block?

    Catches float data with long repeats (constant rows, masks) where LZ matches win.
    """
    view = memoryview(data).cast("B")
    if len(view) <= 4 * SAMPLE_BYTES:
        return True  # small block: just try the full thing
    start = (len(view) - SAMPLE_BYTES) // 2
    sample = view[start : start + SAMPLE_BYTES]
    return len(Zstd(level).encode(sample)) < planes_ratio * SAMPLE_BYTES


def encode_block(
    raw: AnyBuffer,
    *,
    dtype: str | None,
    level: int = 3,
    reference: AnyBuffer | None = None,
    reference_id: bytes | None = None,
    allowed: frozenset[str] | None = None,
) -> Encoded:
    """Encode one block with the smallest applicable chain (see the module docstring).

    `allowed` restricts codec names; "raw" is the fallback whenever it is allowed. Without
    "raw", the smallest allowed candidate is returned even if it does not pay.
    """
    view = memoryview(raw).cast("B")
    n = len(view)
    allow = frozenset(CODECS) if allowed is None else frozenset(allowed)
    unknown = allow - CODECS.keys()
    if unknown:
        raise ValueError(f"unknown codec names: {', '.join(sorted(unknown))}")

    candidates: list[tuple[Candidate, bytes | None]] = []
    if reference is not None and "xor" in allow and n:
        if reference_id is None or len(reference_id) != 32:
            raise ValueError("a reference block needs its 32-byte id")
        xor = XorDelta()
        if memoryview(reference).nbytes != n:
            raise ValueError("xor delta needs a reference of the same length as the block")
        inner = _plain(view, dtype, level, allow, reference)
        if inner is not None:
            candidates.append((((xor, *inner[0]), inner[1]), reference_id))
    delta_ok = bool(candidates) and _size(candidates[0][0]) <= DELTA_GOOD_ENOUGH * n
    if candidates and not delta_ok:
        # Skip the second full encode when a sampled estimate of the plain chain already
        # says the delta wins clearly (the estimate runs low, so this errs towards trying).
        layout = FLOAT_LAYOUT.get(dtype or "")
        if layout is not None and "bplane" in allow:
            guess = estimate_ratio(view, *layout) * n
            delta_ok = _size(candidates[0][0]) <= DELTA_MUST_BEAT * guess
    if not delta_ok:
        plain = _plain(view, dtype, level, allow)
        if plain is not None:
            if candidates and _size(candidates[0][0]) >= DELTA_MUST_BEAT * _size(plain):
                candidates.clear()
            candidates.append((plain, None))

    if candidates:
        (chain, payload), ref = min(candidates, key=lambda c: _size(c[0]))
        if "raw" not in allow or _size((chain, payload)) <= (1 - MIN_SAVING) * n:
            return Encoded(chain_to_spec(chain), payload, ref)
    if "raw" not in allow and n:
        raise ValueError("no allowed codec applies to this block")
    return Encoded("raw", view, None)
