"""model_stock on the torch-free lane in fp32 and bf16 compute (mergekit's `dtype: float32` and
`dtype: bfloat16`): the Python half of csrc/merge_reduce.c, whose kernels reduce in torch's order
(its 2-norm and its cascade sum, and their bf16 forms); the torch twin is ops/model_stock.py, and
tests/ops/test_lanes.py checks that both give the same bits for every input and output dtype mix.

One pass gives the offsets' norms and pair dot products; the few scalar steps between them
are done here as torch does them on its small tensors (numpy float32 scalars: one IEEE
operation each, rounded to bf16 after each in bf16 compute); a second pass mixes the inputs'
mean with the base.
Not on the lane: filter_wise (per-row statistics), fp16 compute (torch's fp16 2-norm takes its
generic reduction order), more than MAX_INPUTS inputs, tensors whose size is not a multiple of 8
(16 in bf16 compute) (reason()).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mergestore import native
from mergestore.ops.lane16 import _run_columns
from mergestore.ops.lane_formats import FMT, format_of, out_array
from mergestore.ops.lane_math import rounded

MAX_INPUTS = 8
F = np.float32


def reason(compute: str, shared: Mapping[str, Any], n_inputs: int, numel: int | None) -> str | None:
    """None if the lane computes model_stock's tensor with the torch path's bits, else why.

    torch's fp32 2-norm adds the elements after the last whole 8-element vector in an order
    the kernel does not reproduce (neither in order, with or without fused multiply-adds:
    measured), so only tensors of a multiple of 8 elements take the lane: every weight matrix
    and norm of the models this is for."""
    if numel is None or numel < 8 or numel % 8:
        return "model_stock: a tensor of fewer than 8, or not a multiple of 8, elements"
    if shared["filter_wise"]:
        return "model_stock with filter_wise: per-row reductions in torch (no C kernel yet)"
    if compute == "F16":
        return "model_stock in fp16 compute: torch's fp16 2-norm order (no C kernel yet)"
    if compute == "BF16" and numel % 16:
        return "model_stock in bf16 compute: a tensor that is not a multiple of 16 elements"
    if compute not in ("F32", "BF16"):
        return f"model_stock in compute dtype {compute}"
    if n_inputs > MAX_INPUTS:
        return f"model_stock with more than {MAX_INPUTS} inputs"
    return None


def interpolation(
    norms: Sequence[float], dots: Sequence[float], bf16: bool = False
) -> tuple[float, float]:
    """(t, 1 - t) from the offsets' norms and pair dot products, as torch computes them on its
    small tensors: cos_ij = clamp(dot / max(|o_i| |o_j|, 1e-6), -1, 1); c = mean(cos) (torch's
    fp32 sum, then / pairs); t = N c / (1 + (N - 1) c), or 0 where that denominator is under
    1e-6. In fp32; with `bf16`, each result rounded to bf16 (the mean's sum stays fp32, as
    torch's bf16 mean sums in fp32 and rounds once, after the division)."""
    assert native.kernels is not None
    r = _bf16 if bf16 else F
    n = len(norms)
    with np.errstate(all="ignore"):
        lo = r(1e-6)
        cosines = []
        q = 0
        for i in range(n):
            for j in range(i + 1, n):
                denom = r(F(norms[i]) * F(norms[j]))
                denom = denom if denom >= lo else lo  # clamp(min=1e-6)
                c = r(F(dots[q]) / denom)
                cosines.append(min(max(c, F(-1)), F(1)))
                q += 1
        total = F(native.kernels.torch_sum32(np.asarray(cosines, dtype=F)))
        cos = r(total / F(len(cosines)))
        denominator = r(F(1) + r(F(n - 1) * cos))
        t = F(0) if abs(denominator) < F(1e-6) else r(r(F(n) * cos) / denominator)
        return float(t), float(r(F(1) - t))


def _bf16(x: float) -> np.float32:
    """x rounded to bf16 as torch rounds a value to it (via fp32), as a float32 scalar."""
    return F(rounded(x, "BF16"))


def model_stock(
    base: np.ndarray, inputs: Sequence[np.ndarray], compute: str, out_dtype: str | None
) -> np.ndarray:
    """One output tensor (reason() is None for it) in out_dtype (default: the compute dtype)."""
    kernels = native.kernels
    assert kernels is not None
    bf16 = compute == "BF16"
    arrays = [np.ascontiguousarray(x).reshape(-1) for x in (base, *inputs)]
    fmts = [FMT[format_of(x)] for x in arrays]
    norms, dots = kernels.model_stock_stats32(arrays, fmts, bf16)
    t, one_minus_t = interpolation(norms, dots, bf16)
    n = arrays[0].size
    out_dtype = out_dtype or compute
    out = out_array(n, out_dtype)
    out_fmt = FMT[out_dtype]

    def columns(r: range) -> None:
        parts = [x[r.start : r.stop] for x in arrays]
        kernels.model_stock_mix32(out[r.start : r.stop], out_fmt, parts, fmts, t, one_minus_t, bf16)

    _run_columns(columns, n)
    return out.reshape(base.shape)
