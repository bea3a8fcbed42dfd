"""The torch-free lane for every dtype combination: inputs in bf16, fp16 or fp32 (mixed within
a merge, e.g. fp32 norms next to bf16 weights), compute in float32, bfloat16 or float16, any
out_dtype, per tensor.

Tensors on the lane are numpy arrays whose dtype names the float format: uint16 holds bf16
bits, float16 is fp16, float32 is fp32. For each tensor, as ops.apply.merge_tensor does with
torch (mergekit 0.1.5's dtype rules):
- the compute dtype is the config's `dtype:`, else the promoted dtype of the inputs;
- 16-bit compute: the inputs are rounded to it (C `convert`, as torch's .to() rounds), then
  the 16-bit kernels of ops.lane16 run (ties and breadcrumbs* in bf16: ops.cuts); fp32
  compute: the C kernels of csrc/merge_arith32.c and the rank cuts of csrc/cut_select.c
  (ops.cuts) read every input in its own format (widening is exact) and do torch's fp32
  operations in torch's order;
- the result (in the compute dtype) is rounded to `out_dtype` if one is set.

What the fp32 lane covers, with the torch path's bits (tests/ops/test_lanes.py):
- linear, task_arithmetic: any parameters, at most FP32_MAX_INPUTS inputs (torch's fp32 sum
  over stacked inputs, and its sum of the weights, add in order from 0 only up to 4 rows:
  measured; more use several accumulators);
- ties, breadcrumbs, breadcrumbs_ties: rank cuts with 0 < density < 1 and no rescale (what
  ops.sparsify.cut_streams says), at most FP32_MAX_INPUTS inputs.
- nearswap, and ram with at most 4 inputs: in any compute dtype (ops.lane_elementwise);
- model_stock in fp32 and bf16 compute, without filter_wise (ops.lane_reduce);
- dare_linear, dare_ties, della, della_linear with rng="per_tensor": in fp32 compute with at
  most 4 inputs, and in bf16 compute (ops.lane_random);
- sce with at most 4 inputs, in any compute dtype (ops.lane_sce);
- slerp in any compute dtype, nuslerp (flattened) and multislerp with at most 4 inputs in fp32
  or bf16 compute, on tensors of a multiple of 8 elements (ops.lane_sphere; their scalar
  acos/sin/cos with torch's bits from ops.lane_math, without torch);
- karcher in fp32 compute on tensors of a multiple of 8 elements (ops.lane_karcher: its dot
  products are torch.dot's MKL sdot, from ops.lane_math, without torch, or its sum in MKL's
  order where that is checked to give its bits: `notes()` says which), and in bf16 compute on
  CPUs where torch runs its AVX2 or AVX-512 kernels (ops.lane_karcher16: ATen's bf16 dot order,
  and above 4096 elements on AVX-512 CPUs oneDNN's, reproduced where it runs on AMX tiles).
Everything else goes through torch; `reason()` says why, for `merge --json`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from mergestore import native
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.ops import alloc, cuts, lane16, sparsify
from mergestore.ops.context import TensorContext
from mergestore.ops.lane16 import (
    LANES,
    MAGNITUDE,
    OUTLIERS,
    _run_columns,
    f32,
    sum_f32,
)
from mergestore.ops.lane_formats import (
    FMT,
    convert,
    flat,
    format_of,
    gta_divisor32,
    out_array,
    view,
)

FP32_MAX_INPUTS = 4
# Lanes whose Python half calls torch: the engine runs torch on one thread for them, as for the
# torch path. None now: the slerps' and karcher's scalar steps and karcher's dot products take
# torch's bits from ops.lane_math without torch.
TORCH_METHODS: tuple[str, ...] = ()

# The sparsifier and consensus of each method the fp32 lane computes.
_FP32_GTA: dict[str, tuple[str | None, bool]] = {
    "task_arithmetic": (None, False),
    "ties": (MAGNITUDE, True),
    "breadcrumbs": (OUTLIERS, False),
    "breadcrumbs_ties": (OUTLIERS, True),
}


def reason(
    method: str,
    compute: str,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    numel: int | None = None,
    rng: str = "per_tensor",
) -> str | None:
    """None if the lane computes this tensor (of `numel` elements, if known) with the torch
    path's bits, else why not. `rng`: the merge's RNG rule (TensorContext.rng)."""
    from mergestore.ops import (  # numpy at import
        lane_elementwise,
        lane_karcher,
        lane_karcher16,
        lane_random,
        lane_reduce,
        lane_sce,
        lane_sphere,
    )

    if native.kernels is None:
        return "the C kernels are not built"
    if method in lane_random.METHODS:
        return lane_random.reason(method, compute, per_input, rng)
    if method in lane_elementwise.METHODS:
        return lane_elementwise.reason(method, per_input)
    if method == "sce":
        return lane_sce.reason(len(per_input))
    if method in lane_sphere.METHODS:
        return lane_sphere.reason(method, compute, shared, len(per_input), numel)
    if method == "model_stock":
        return lane_reduce.reason(compute, shared, len(per_input), numel)
    if method == "karcher" and compute == "BF16":
        return lane_karcher16.reason(numel)
    if method == "karcher":
        return lane_karcher.reason(compute, numel)
    if compute in ("BF16", "F16"):
        lane = LANES.get(method)
        if lane is None:
            return f"{method} has no torch-free kernel"
        if not lane.accepts(shared, per_input, compute == "F16"):
            return _param_reason(method)
        return None
    if compute != "F32":
        return f"compute dtype {compute}"
    if method == "linear":
        if shared["normalize"] and len(per_input) > FP32_MAX_INPUTS:
            return f"fp32 sums of more than {FP32_MAX_INPUTS} inputs"
        return None
    if method not in _FP32_GTA:
        return f"{method} has no torch-free kernel"
    if len(per_input) > FP32_MAX_INPUTS:
        return f"fp32 sums of more than {FP32_MAX_INPUTS} inputs"
    sparsifier = _FP32_GTA[method][0]
    if sparsifier is not None and not all(
        sparsify.cut_streams(sparsifier, p["density"], bool(shared["rescale"])) for p in per_input
    ):
        return _param_reason(method)
    return None


def notes(method: str, computes: Collection[str] = ("F32",)) -> dict[str, str]:
    """How the lane computes `method` here where that depends on this machine (merge --json's
    "lanes" "notes"): karcher's dot products in fp32 compute (`computes`: the lane tensors'
    compute dtypes; in bf16 they are always torch's own bf16 dot order)."""
    if method != "karcher" or "F32" not in computes or native.kernels is None:
        return {}
    from mergestore.ops import lane_karcher

    return {"karcher_dots": lane_karcher.dot_note()}


def _param_reason(method: str) -> str:
    return f"{method} with density 0 or 1, or rescale, has no torch-free kernel"


def merge(
    method: str,
    base: np.ndarray | None,
    inputs: Sequence[np.ndarray],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    compute: str,
    out_dtype: str | None,
    ctx: TensorContext | None = None,
) -> np.ndarray:
    """One output tensor on the lane (reason() is None for it): the kernel's result in the
    compute dtype, rounded to out_dtype if given. `ctx`: the tensor's name and RNG rule, which
    the random drops of dare* and della* need."""
    from mergestore.ops import (
        lane_elementwise,
        lane_karcher,
        lane_karcher16,
        lane_random,
        lane_reduce,
        lane_sce,
        lane_sphere,
    )

    like = base if base is not None else inputs[0]
    if method in lane_sphere.METHODS:
        return lane_sphere.merge(method, base, inputs, shared, per_input, compute, out_dtype, ctx)
    if method == "karcher":
        if len(inputs) == 1:  # returned unchanged, as the twin does
            result = convert(inputs[0], compute)
            return convert(result, out_dtype) if out_dtype is not None else result
        lane = lane_karcher16 if compute == "BF16" else lane_karcher
        merged = lane.merge(inputs, shared, out_dtype)
        if merged is None:  # every norm under tol: the twin's zeros
            args = (base, inputs, shared, per_input, compute, out_dtype, ctx)
            return lane_sphere.torch_twin(method, *args)
        return merged
    if method in lane_elementwise.METHODS or method == "sce":
        assert base is not None
        if not inputs:  # ram or sce of the base alone: the base in the compute dtype
            result = convert(base, compute)
            return convert(result, out_dtype) if out_dtype is not None else result
        if method == "sce":
            return lane_sce.merge(base, inputs, shared, compute, out_dtype)
        return lane_elementwise.merge(method, base, inputs, shared, compute, out_dtype)
    if method == "model_stock":
        assert base is not None
        return lane_reduce.model_stock(base, inputs, compute, out_dtype)
    if method in lane_random.METHODS and inputs and compute == "BF16":
        assert base is not None and ctx is not None
        return lane_random.merge16(method, base, inputs, shared, per_input, out_dtype, ctx)
    if method in lane_random.METHODS and inputs:
        assert base is not None and ctx is not None
        result = lane_random.merge32(
            method, base, inputs, shared, per_input, out_dtype or "F32", ctx
        )
        return result.reshape(like.shape)
    if compute == "F32":
        result = _merge32(method, base, inputs, shared, per_input, out_dtype or "F32")
        return result.reshape(like.shape)
    # 16-bit compute: every input rounded to it (the base once, so an input that is the base
    # stays the same array), then the 16-bit kernels.
    done: dict[int, np.ndarray] = {}

    def to16(x: np.ndarray) -> np.ndarray:
        if id(x) not in done:
            done[id(x)] = convert(x, compute).view(np.uint16)
        return done[id(x)]

    base16 = to16(base) if base is not None else None
    inputs16 = [to16(x) for x in inputs]
    out = alloc.empty_bytes(2 * like.size).view(np.uint16).reshape(like.shape)
    sparsifier, consensus = _FP32_GTA.get(method, (None, False))
    if compute == "BF16" and sparsifier is not None and inputs16:
        assert base16 is not None
        cuts.gta16(
            base16, inputs16, per_input, sparsifier=sparsifier, consensus=consensus,
            normalize=bool(shared["normalize"]), lam=float(shared["lambda"]), out=out,
        )  # fmt: skip
    else:
        LANES[method].merge(base16, inputs16, shared, per_input, out, compute == "F16")
    result = view(out, compute)
    return convert(result, out_dtype) if out_dtype is not None else result


def _merge32(
    method: str,
    base: np.ndarray | None,
    inputs: Sequence[np.ndarray],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    out_dtype: str,
) -> np.ndarray:
    kernels = native.kernels
    assert kernels is not None
    n = (base if base is not None else inputs[0]).size
    out = out_array(n, out_dtype)
    flats = [flat(x) for x in inputs]
    fmts = [FMT[format_of(x)] for x in inputs]
    weights = f32([p["weight"] for p in per_input[: len(inputs)]])
    if method == "linear":
        normalize, total = bool(shared["normalize"]), sum_f32(weights)

        def linear_columns(r: range) -> None:
            a, b = r.start, r.stop
            rows = [x[a:b] for x in flats]
            kernels.linear32(out[a:b], FMT[out_dtype], rows, fmts, weights, normalize, total)

        _run_columns(linear_columns, n)
        return out
    assert base is not None
    if not inputs:
        return convert(base, out_dtype).reshape(-1)
    sparsifier, consensus = _FP32_GTA[method]
    flat_base, base_fmt = flat(base), FMT[format_of(base)]
    normalize, lam = bool(shared["normalize"]), float(shared["lambda"])
    out_fmt, has_lam = FMT[out_dtype], lam != 1
    if sparsifier is None:
        divisor = gta_divisor32(weights)

        def columns(r: range) -> None:
            a, b = r.start, r.stop
            kernels.gta_sum32(
                out[a:b], out_fmt, flat_base[a:b], base_fmt, [x[a:b] for x in flats], fmts,
                weights, False, divisor, normalize, lam, has_lam,
            )  # fmt: skip

        _run_columns(columns, n)
        return out

    live = lane16.live_inputs(flats, flat_base, base_fmt)
    specs = cuts.specs(flats, fmts, flat_base, base_fmt, FMT["F32"], sparsifier, per_input, live)
    divisor = gta_divisor32(weights)
    xs, xfmts, ws = [flats[i] for i in live], [fmts[i] for i in live], [weights[i] for i in live]

    def cut_columns(r: range) -> None:
        a, b = r.start, r.stop
        kernels.gta_cut32(
            out[a:b], out_fmt, flat_base[a:b], base_fmt, [x[a:b] for x in xs], xfmts, specs, a,
            ws, consensus, divisor, normalize, lam, has_lam,
        )  # fmt: skip

    _run_columns(cut_columns, n)
    return out


def combine32(
    flat_base: np.ndarray,
    deltas: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    consensus: bool,
    normalize: bool,
    lam: float,
    out: np.ndarray,
) -> None:
    """The GTA tail in fp32 over fp32 deltas (flat), with TIES' consensus if `consensus`, into
    the flat `out` (its format from its dtype); two column ranges at once for large tensors.
    Also the tail of ops.gta's fp32 path for torch-sparsified deltas (dare, della)."""
    kernels = native.kernels
    assert kernels is not None
    out_fmt, base_fmt, has_lam = FMT[format_of(out)], FMT[format_of(flat_base)], lam != 1
    divisor = gta_divisor32(weights)

    def columns(r: range) -> None:
        a, b = r.start, r.stop
        rows = [d[a:b] for d in deltas]
        if consensus:
            kernels.gta_consensus32(
                out[a:b], out_fmt, flat_base[a:b], base_fmt, rows, weights, normalize, lam, has_lam
            )
        else:
            kernels.gta_sum32(
                out[a:b], out_fmt, flat_base[a:b], base_fmt, rows, [2] * len(rows), weights,
                True, divisor, normalize, lam, has_lam,
            )  # fmt: skip

    _run_columns(columns, flat_base.size)
