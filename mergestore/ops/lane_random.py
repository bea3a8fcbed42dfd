"""dare_linear, dare_ties, della and della_linear on the torch-free lane (ops.lanes), with
`dtype: float32` or `dtype: bfloat16` compute: the random drops of ops.gta, bit for bit,
without torch.

fp32 compute, per tensor, two C passes and no fp32 delta per input in memory
(tests/ops/test_lane_random.py compares both computes with the torch path):
1. per input (two inputs at once for large tensors), `keep_sums32` (dare) or
   `della_keep_sums32` (della: each row's stable ranks of |x - base| and the keep-probability
   of each rank) draw the input's Philox stream (TensorContext.keep_mask's), write one keep
   byte per element, and sum the L1 norms of the delta and of the kept delta in torch's order
   (sparsify.rescaled_masked_'s) into the input's scale;
2. `gta_keep32` recomputes each delta from the inputs, applies its keep bytes and scale, and
   combines them (TIES' consensus or the plain sum) and finishes (ops.gta._combine, _finish),
   column ranges on two threads for large tensors.

bf16 compute, the same two passes: per input `keep_sums16` (dare) or `della_keep_sums16`
(della) write keep bytes and the L1 scale of the bf16 delta (torch's bf16 sums: fp32 pairs of
each 16 elements in its cascade); then `gta_keep16` recomputes the bf16 deltas, drops and
scales them and runs ops.lane16.gta_combine's arithmetic tile by tile (as ops.gta._native16
combines torch's rows).

The masks depend only on (seed, tensor name, input index), as on the torch path, so threads
change nothing. With rng="global" (torch's generator, mergekit's stream) or fp16 compute the
tensor stays on torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergestore import native
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.ops import alloc
from mergestore.ops.context import U64, TensorContext
from mergestore.ops.lane16 import BF16, PARALLEL_MIN, _run_columns, f32, live_inputs, same_memory
from mergestore.threads import ordered_map

RANDOM = "random"
DELLA = "della_magprune"
RESCALE_EPS = 1e-7  # ops.sparsify.RESCALE_EPS

# method -> (sparsifier, consensus), as ops.gta's declarations
METHODS: dict[str, tuple[str, bool]] = {
    "dare_linear": (RANDOM, False),
    "dare_ties": (RANDOM, True),
    "della": (DELLA, True),
    "della_linear": (DELLA, False),
}
MAX_INPUTS = 4  # ops.lanes.FP32_MAX_INPUTS: torch's fp32 sums over stacked inputs


def reason(
    method: str, compute: str, per_input: Sequence[Mapping[str, Any]], rng: str
) -> str | None:
    """None if the lane gives the torch path's bits for this tensor, else why not."""
    if rng != "per_tensor":
        return f"{method}: rng {rng!r} draws from torch's generator"
    if compute == "BF16":
        return None
    if compute != "F32":
        return f"{method}: random drops in {compute} compute run on torch"
    if len(per_input) > MAX_INPUTS:
        return f"fp32 sums of more than {MAX_INPUTS} inputs"
    return None


def merge32(
    method: str,
    base: np.ndarray,
    inputs: Sequence[np.ndarray],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    out_dtype: str,
    ctx: TensorContext,
) -> np.ndarray:
    """One dare*/della* tensor in fp32 compute (reason() is None for it), flat, in out_dtype;
    lane arrays in, as ops.lanes.merge takes them."""
    from mergestore.ops.lane_formats import FMT, all_finite, format_of, gta_divisor32, out_array

    shape = tuple(base.shape)
    flat_base, base_fmt = np.ascontiguousarray(base).reshape(-1), FMT[format_of(base)]
    flats = [np.ascontiguousarray(x).reshape(-1) for x in inputs]
    fmts = [FMT[format_of(x)] for x in inputs]
    out, out_fmt = out_array(flat_base.size, out_dtype), FMT[out_dtype]
    if flat_base.size == 0:
        return out
    kernels = native.kernels
    assert kernels is not None and flats
    sparsifier, consensus = METHODS[method]
    n = flat_base.size
    weights = f32([p["weight"] for p in per_input[: len(flats)]])
    rescale = bool(shared["rescale"])
    live = list(range(len(flats)))
    if all_finite(flat_base):
        # An input that is the base array itself (a tensor the expert did not change) has a +0
        # delta everywhere, dropped or not, never rescaled (its L1 norm is 0): it adds +0 to
        # every sum, which changes no sum from +0, and never agrees with a vote. Its weight
        # still counts in the no-consensus divisor; the others keep their own streams.
        live = [i for i in live if not same_memory(flats[i], flat_base)]

    def first_pass(i: int) -> tuple[np.ndarray, float]:
        p = per_input[i]
        keep = alloc.empty_bytes(n)
        density = float(p["density"])
        key = ctx.philox_key(i)
        if density >= 1:  # nothing dropped, nothing rescaled (sparsify's early return)
            keep[:] = 1
            return keep, 1.0
        x, x_fmt = flats[i], fmts[i]
        if sparsifier == RANDOM:
            probs = np.array([density], dtype=np.float32)  # rounded to fp32, as torch.full
            scale = kernels.keep_sums32(
                keep, x, x_fmt, flat_base, base_fmt, probs, key & U64, key >> 64, rescale,
                RESCALE_EPS,
            )  # fmt: skip
            return keep, scale
        cols = shape[1] if len(shape) >= 2 else n
        table = della_table(cols, density, float(p["epsilon"]))
        if len(shape) <= 2:
            scale = kernels.della_keep_sums32(
                keep, x, x_fmt, flat_base, base_fmt, n // cols, table, key & U64, key >> 64,
                rescale, RESCALE_EPS,
            )  # fmt: skip
        else:  # ranks along dim 1 of a 3-D+ tensor: numpy's stable sort, then the same pass
            probs = _della_probs_nd(x, flat_base, shape, table)
            scale = kernels.keep_sums32(
                keep, x, x_fmt, flat_base, base_fmt, probs, key & U64, key >> 64, rescale,
                RESCALE_EPS,
            )  # fmt: skip
        return keep, scale

    workers = 2 if n >= PARALLEL_MIN else 1
    firsts = list(ordered_map(first_pass, live, workers=workers, window=workers))
    keeps = [k for k, _ in firsts]
    scales = f32([s for _, s in firsts])
    xs, xfmts = [flats[i] for i in live], [fmts[i] for i in live]
    ws = [weights[i] for i in live]
    divisor = gta_divisor32(weights)
    normalize, lam = bool(shared["normalize"]), float(shared["lambda"])

    def columns(r: range) -> None:
        a, b = r.start, r.stop
        kernels.gta_keep32(
            out[a:b], out_fmt, flat_base[a:b], base_fmt, [x[a:b] for x in xs], xfmts,
            [k[a:b] for k in keeps], scales, ws, consensus, divisor, normalize, lam, lam != 1,
        )  # fmt: skip

    _run_columns(columns, n)
    return out


def della_table(cols: int, density: float, epsilon: float) -> np.ndarray:
    """della's keep-probability of each rank 1..cols in a row of `cols` (fp32), as
    ops.sparsify._della_probs computes it in fp32: the ranks as fp32, (r - lo) / (hi - lo)
    (lo = 1, hi = cols: each row holds every rank), clamped to [0, 1], times 2, times epsilon,
    plus (density - epsilon), each an fp32 operation with the Python floats rounded to fp32
    (a row of one gives 0 / 0: NaN, which keeps nothing)."""
    ranks = np.arange(1, cols + 1, dtype=np.int64).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = (ranks - ranks[0]) / (ranks[-1] - ranks[0])
    norm = np.clip(norm, np.float32(0), np.float32(1))
    scaled = norm * np.float32(2) * np.float32(epsilon)
    return (np.float32(density - epsilon) + scaled).astype(np.float32)


def _della_probs_nd(
    x: np.ndarray, flat_base: np.ndarray, shape: tuple[int, ...], table: np.ndarray
) -> np.ndarray:
    """Per-element keep-probabilities of a tensor of 3+ dims (ranks along dim 1), flat."""
    from mergestore.ops.lane_formats import convert

    delta = convert(x, "F32").reshape(shape) - convert(flat_base, "F32").reshape(shape)
    mags = np.abs(delta)
    order = np.argsort(mags, axis=1, kind="stable")  # NaNs last, as torch's stable sort
    probs = np.empty(shape, dtype=np.float32)
    np.put_along_axis(probs, order, table.reshape([1, -1] + [1] * (len(shape) - 2)), axis=1)
    return probs.reshape(-1)


def merge16(
    method: str,
    base: np.ndarray,
    inputs: Sequence[np.ndarray],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    out_dtype: str | None,
    ctx: TensorContext,
) -> np.ndarray:
    """One dare*/della* tensor in bf16 compute (reason() is None for it), in out_dtype (or
    bf16): every input rounded to bf16, then per input the keep bytes and L1 scale of its bf16
    delta (`keep_sums16`; della: `della_keep_sums16`, each row's stable ranks of |x - base|
    and the keep-probability of each rank), then `gta_keep16` recomputes each delta, drops and
    scales it and combines them (TIES' consensus or the sum), tile by tile: the bits of
    ops.lane16.gta_combine over the sparsified bf16 rows (ops.gta._native16), with no bf16
    delta row per input in memory."""
    from mergestore.ops.lane16 import bf16, gta_divisor
    from mergestore.ops.lane_formats import convert, view

    kernels = native.kernels
    assert kernels is not None and inputs
    sparsifier, consensus = METHODS[method]
    shape = tuple(base.shape)
    done: dict[int, np.ndarray] = {}

    def to16(x: np.ndarray) -> np.ndarray:  # the base once: an input that is it stays it
        if id(x) not in done:
            done[id(x)] = np.ascontiguousarray(convert(x, "BF16")).reshape(-1).view(np.uint16)
        return done[id(x)]

    flat_base = to16(base)
    flats = [to16(x) for x in inputs]
    n = flat_base.size
    out = alloc.empty_bytes(2 * n).view(np.uint16)
    if n == 0:
        result = view(out.reshape(shape), "BF16")
        return convert(result, out_dtype) if out_dtype is not None else result
    weights = bf16([p["weight"] for p in per_input[: len(flats)]])
    rescale = bool(shared["rescale"])
    # An input that is the base array itself is skipped where the base is finite.
    live = live_inputs(flats, flat_base, BF16)

    def first_pass(i: int) -> tuple[np.ndarray | None, float]:
        p, x = per_input[i], flats[i]
        density = float(p["density"])
        if density >= 1:  # the plain delta (kept with p = 1, nothing rescaled)
            return None, 1.0
        keep = alloc.empty_bytes(n)
        key = ctx.philox_key(i)
        lo, hi = key & U64, key >> 64
        if sparsifier == RANDOM:
            probs = _bf16_bits([density])  # as torch.full((), density, dtype=bfloat16)
            scale = kernels.keep_sums16(keep, x, flat_base, probs, lo, hi, rescale, RESCALE_EPS)
            return keep, scale
        epsilon = float(p["epsilon"])
        if len(shape) <= 2:
            cols = shape[1] if len(shape) == 2 else n
            scale = kernels.della_keep_sums16(
                keep, x, flat_base, n // cols, density - epsilon, epsilon, lo, hi, rescale,
                RESCALE_EPS,
            )  # fmt: skip
            return keep, scale
        # ranks along dim 1 of a 3-D+ tensor: the probabilities of the delta with dim 1 last
        delta = alloc.empty_bytes(2 * n).view(np.uint16)
        hist = np.zeros(1 << 15, dtype=np.int64)
        kernels.sub_hist_bf16(delta, x.view(np.int16), flat_base.view(np.int16), hist, False)
        probs = _della_probs16(delta, shape, density, epsilon)
        scale = kernels.keep_sums16(keep, x, flat_base, probs, lo, hi, rescale, RESCALE_EPS)
        return keep, scale

    workers = 2 if n >= PARALLEL_MIN else 1
    firsts = list(ordered_map(first_pass, live, workers=workers, window=workers))
    keeps = [k for k, _ in firsts]
    scales = [s for _, s in firsts]
    xs = [flats[i] for i in live]
    wl = [weights[i] for i in live]
    divisor = gta_divisor(weights)
    normalize, lam = bool(shared["normalize"]), float(shared["lambda"])

    def columns(r: range) -> None:
        a, b = r.start, r.stop
        kernels.gta_keep16(
            out[a:b], flat_base[a:b], [x[a:b] for x in xs],
            [k[a:b] if k is not None else None for k in keeps], scales, wl, consensus, divisor,
            normalize, lam, lam != 1,
        )  # fmt: skip

    _run_columns(columns, n)
    result = view(out.reshape(shape), "BF16")
    return convert(result, out_dtype) if out_dtype is not None else result


def _bf16_bits(values: Sequence[float]) -> np.ndarray:
    """Python floats as bf16 bits, rounded as torch rounds them (to fp32, then to bf16)."""
    from mergestore.ops.lane16 import bf16

    return (np.asarray(bf16(values), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _della_probs16(
    delta: np.ndarray, shape: tuple[int, ...], density: float, epsilon: float
) -> np.ndarray:
    """della's bf16 keep-probabilities of a flat bf16 delta of `shape` (ranks along dim 1; a
    tensor of 0 or 1 dims is one row), flat: ops.sparsify._della_probs's C kernel, on the
    delta with dim 1 moved last for 3+ dims (each row's probabilities depend on its own ranks
    alone, so the order of the rows changes nothing)."""
    kernels = native.kernels
    assert kernels is not None
    if len(shape) <= 2:
        cols = shape[1] if len(shape) == 2 else delta.size
        probs = alloc.empty_bytes(2 * delta.size).view(np.uint16)
        kernels.della_probs_bf16(
            delta.view(np.int16), probs.view(np.int16), delta.size // cols, cols,
            density - epsilon, epsilon,
        )  # fmt: skip
        return probs
    moved = np.ascontiguousarray(np.moveaxis(delta.reshape(shape), 1, -1))
    probs = _della_probs16(moved.reshape(-1), (moved.size // shape[1], shape[1]), density, epsilon)
    return np.ascontiguousarray(np.moveaxis(probs.reshape(moved.shape), -1, 1)).reshape(-1)
