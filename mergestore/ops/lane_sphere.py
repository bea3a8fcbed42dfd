"""slerp, nuslerp (flattened) and multislerp on the torch-free lane: the Python half of
csrc/merge_sphere.c (the torch twins are ops/slerp.py, ops/nuslerp.py and ops/multislerp.py;
tests/ops/test_lane_sphere.py checks that both give the same bits).

The C passes stream the inputs and give torch's whole-tensor reductions (norms, sums); the
scalar steps between them (clamps, acos, sin, cos, the weights) run here as the twins' torch
operations on one-element tensors would: one IEEE operation each in the compute dtype, and
acos/sin/cos with torch's own bits from ops/lane_math.py (MKL's VML for fp32, csrc/sleef_f32.c
for bf16). So these merges do not import torch; where lane_math cannot give torch's bits
(lane_math.Untraced: no MKL in torch's library, bf16 sin/cos beyond |x| < 125, an old CPU) the
tensor goes through its twin.

slerp computes in fp32 on the values in the compute dtype, so it takes any compute dtype.
Not on the lane (reason()): nuslerp per row or column (its trigonometry runs on vectors),
fp16 compute (torch's fp16 reductions take another order: measured), more than 4 inputs
(torch's dim-0 sums), tensors of fewer than 8 or not a multiple of 8 elements (the 2-norm's
tail order, as for model_stock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mergestore import native
from mergestore.ops import lane_math as lm
from mergestore.ops.context import TensorContext
from mergestore.ops.lane16 import _in_two_groups, _run_columns, _splits, live_inputs
from mergestore.ops.lane_formats import FMT, convert, format_of, out_array

if TYPE_CHECKING:
    import torch
else:
    from mergestore.lazy_torch import torch

METHODS = ("slerp", "nuslerp", "multislerp")
MAX_INPUTS = 4
_TORCH = {
    "BF16": lambda: torch.bfloat16,
    "F16": lambda: torch.float16,
    "F32": lambda: torch.float32,
}  # torch is imported lazily


def reason(
    method: str, compute: str, shared: Mapping[str, Any], n_inputs: int, numel: int | None
) -> str | None:
    """None if the lane computes this tensor with the torch path's bits, else why."""
    if method == "slerp":  # fp32 arithmetic on the compute dtype's values: any compute dtype
        if numel is None or numel < 8 or numel % 8:
            return "slerp: a tensor of fewer than 8, or not a multiple of 8, elements"
        why = lm.missing("F32")
        return f"slerp: {why}" if why else None
    if method == "nuslerp" and not shared["nuslerp_flatten"]:
        return "nuslerp per row or column: acos/sin/cos of vectors in torch (SLEEF)"
    if compute not in ("F32", "BF16"):
        return f"{method} in fp16 compute: torch's fp16 reductions (no C kernel)"
    if n_inputs > MAX_INPUTS:
        return f"{method}: fp32 sums of more than {MAX_INPUTS} inputs"
    if numel is None or numel < 8 or numel % 8:
        return f"{method}: a tensor of fewer than 8, or not a multiple of 8, elements"
    why = lm.missing(compute)
    return f"{method}: {why}" if why else None


f32 = np.float32


def _dtype(compute: str) -> torch.dtype:
    return {"BF16": torch.bfloat16, "F32": torch.float32}[compute]


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
    """One output tensor (reason() is None for it) in out_dtype, else the compute dtype."""
    like = base if base is not None else inputs[0]
    if method == "multislerp" and len(inputs) == 1:  # returned unchanged, as the twin does
        result = convert(inputs[0], compute)
        return convert(result, out_dtype) if out_dtype is not None else result
    vectors = [base] if base is not None else []
    arrays = [np.ascontiguousarray(x).reshape(-1) for x in (*vectors, *inputs)]
    fmts = [FMT[format_of(x)] for x in arrays]
    out_name = out_dtype or compute
    n = arrays[0].size
    out = out_array(n, out_name)
    args = (arrays, fmts, base is not None, FMT[compute])
    try:
        if method == "slerp":
            _slerp(out, FMT[out_name], args, shared)
        elif method == "nuslerp":
            _nuslerp(out, FMT[out_name], args, per_input, compute)
        elif not _multislerp(out, FMT[out_name], args, shared, per_input, compute):
            # The weighted mean direction is zero: the twin's fallback (or its refusal).
            return torch_twin(method, base, inputs, shared, per_input, compute, out_dtype, ctx)
    except lm.Untraced:  # a scalar step whose torch bits lane_math does not know: torch
        return torch_twin(method, base, inputs, shared, per_input, compute, out_dtype, ctx)
    return out.reshape(like.shape)


def torch_twin(
    method: str,
    base: np.ndarray | None,
    inputs: Sequence[np.ndarray],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    compute: str,
    out_dtype: str | None,
    ctx: TensorContext | None,
) -> np.ndarray:
    """The torch twin on the lane's arrays (for a branch the lane does not take), on one torch
    thread as the engine runs the torch path (the engine does not set it for these methods:
    their lane needs no torch)."""
    from mergestore.ops.apply import merge_tensor

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)

    def tensor(a: np.ndarray) -> torch.Tensor:
        if a.dtype == np.uint16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    result = merge_tensor(
        method,
        tensor(base) if base is not None else None,
        [tensor(x) for x in inputs],
        shared,
        per_input,
        ctx or TensorContext("tensor"),
        dtype=_dtype(compute),
        out_dtype=_TORCH[out_dtype]() if out_dtype is not None else None,
    ).contiguous()
    if result.dtype == torch.bfloat16:
        return result.view(torch.int16).numpy().view(np.uint16)
    return result.numpy()


def _sum32(values: Sequence[float]) -> float:
    """torch's fp32 sum of a short vector (a stack of one-element results, or a 1-D tensor)."""
    kernels = native.kernels
    assert kernels is not None
    return float(kernels.torch_sum32(np.asarray(values, dtype=np.float32)))


def _sum(values: Sequence[float], compute: str) -> float:
    """torch's sum of a 1-D tensor of at most 4 values in the compute dtype (fp32
    accumulation: the same order for bf16, whose scalar path widens each value)."""
    assert len(values) <= MAX_INPUTS
    return lm.rounded(_sum32(values), compute)


def _op(a: float, b: float, how: str, compute: str) -> float:
    """One of torch's binary operations on two values of the compute dtype: fp32, then rounded
    to the compute dtype (bf16 arithmetic is done in fp32 and rounded once)."""
    x, y = f32(a), f32(b)
    with np.errstate(all="ignore"):  # inf and NaN as torch gives them, without warnings
        r = x + y if how == "+" else x - y if how == "-" else x * y if how == "*" else x / y
    return lm.rounded(float(r), compute)


def _slerp(
    out: np.ndarray,
    out_fmt: int,
    args: tuple[list[np.ndarray], list[int], bool, int],
    shared: Mapping[str, Any],
) -> None:
    """ops/slerp.py's scalar steps on the per-chunk norms and dot products, in fp32."""
    from mergestore.ops.slerp import CHUNK, DOT_THRESHOLD, NORM_EPS

    kernels = native.kernels
    assert kernels is not None
    arrays, fmts, _has_base, cfmt = args  # [base, x]: v0 = base, v1 = x
    tt = f32(shared["t"])
    stats = kernels.slerp_chunks(1, arrays, fmts, cfmt, CHUNK, 0.0, 0.0)
    # torch.where(norm > NORM_EPS, norm, 1): the comparison in fp32
    norm_a, norm_b = (lm.norm32(stats[i::2]) for i in (0, 1))
    norm_a = norm_a if f32(norm_a) > f32(NORM_EPS) else 1.0
    norm_b = norm_b if f32(norm_b) > f32(NORM_EPS) else 1.0
    dots = kernels.slerp_chunks(2, arrays, fmts, cfmt, CHUNK, norm_a, norm_b)
    dot = min(max(f32(_sum32(dots)), f32(-1.0)), f32(1.0))  # .clamp(-1, 1)
    if abs(dot) > f32(DOT_THRESHOLD):  # lerp: the coefficients 1 - t and t
        coef_a, coef_b = f32(1.0) - tt, tt
    else:
        theta = f32(lm.func(lm.ACOS, float(dot), "F32"))
        sin_theta = f32(lm.func(lm.SIN, float(theta), "F32"))
        with np.errstate(all="ignore"):
            coef_a = f32(lm.func(lm.SIN, float((f32(1.0) - tt) * theta), "F32")) / sin_theta
            coef_b = f32(lm.func(lm.SIN, float(tt * theta), "F32")) / sin_theta
    kernels.slerp_mix(out, out_fmt, arrays, fmts, cfmt, float(coef_a), float(coef_b))


def _norms(args: tuple[list[np.ndarray], list[int], bool, int]) -> list[float]:
    """|v_i| of each input (csrc sphere_norms); for a large tensor, the inputs in two groups
    on two threads (each norm is one input's own ordered sum: the same bits)."""
    kernels = native.kernels
    assert kernels is not None
    arrays, fmts, has_base, cfmt = args
    lead = 1 if has_base else 0  # the base comes first and is read by both groups
    k = len(arrays) - lead
    if k < 2 or not _splits(arrays[0].size):
        return list(kernels.sphere_norms(*args))

    def norms(group: Sequence[int]) -> list[float]:
        keep = [*range(lead), *group]
        return kernels.sphere_norms([arrays[i] for i in keep], [fmts[i] for i in keep],
                                    has_base, cfmt)  # fmt: skip

    return _in_two_groups(norms, range(lead, lead + k))


def _nuslerp(
    out: np.ndarray,
    out_fmt: int,
    args: tuple[list[np.ndarray], list[int], bool, int],
    per_input: Sequence[Mapping[str, Any]],
    compute: str,
) -> None:
    kernels = native.kernels
    assert kernels is not None
    w1, w2 = per_input[0]["weight"], per_input[1]["weight"]
    total = w1 + w2
    t = 0.5 if abs(total) < 1e-6 else w2 / total

    def clamp_min(v: float, lo: float) -> float:  # torch.clamp(min=lo): lo in the dtype
        bound = lm.rounded(lo, compute)
        return v if (v != v or v >= bound) else bound

    n0, n1 = (clamp_min(lm.rounded(v, compute), 1e-7) for v in _norms(args))
    cos = lm.rounded(kernels.nuslerp_dot(*args, n0, n1), compute)
    cos = min(max(cos, -1.0), 1.0)  # .clamp(-1, 1): the bounds are values of either dtype
    # (1 - cos.square()) <= 1e-8**2: each step rounded to the dtype, the bound too
    gap = _op(1.0, _op(cos, cos, "*", compute), "-", compute)
    if gap <= lm.rounded(1e-8**2, compute):  # (1 - t) * v0 + t * v1: factors in fp32
        a, c = float(np.float32(1 - t)), float(np.float32(t))
        kernels.nuslerp_mix(out, out_fmt, *args, a, c, 1.0, False)
        return
    theta = lm.func(lm.ACOS, cos, compute)
    d = lm.func(lm.SIN, theta, compute)
    # a Python float times a tensor: the factor in fp32 (not rounded to bf16), one rounding
    a = lm.func(lm.SIN, _op(float(f32(1 - t)), theta, "*", compute), compute)
    c = lm.func(lm.SIN, _op(float(f32(t)), theta, "*", compute), compute)
    kernels.nuslerp_mix(out, out_fmt, *args, a, c, d, True)


def _frozen_left_out(
    args: tuple[list[np.ndarray], list[int], bool, int],
) -> tuple[list[int], tuple[list[np.ndarray], list[int], bool, int]]:
    """The inputs multislerp's passes must visit, and the passes' arguments with only those.

    An input that is the base array itself (a frozen tensor) has v_i = RC(x_i - b) = +0
    everywhere when the base is finite (inf - inf would be NaN), so u_i = +0: every term it
    adds to the mean and to the step is a zero, and those sums start from +0 (merge_sphere.c),
    which a zero of either sign leaves as it is. Its norm is 0. So the passes leave it out
    (a quarter of their work in a merge of four experts, one frozen); its weight still counts
    in the normalisation and its zero norm in the scale. With no other input left, or no
    base, nothing is left out."""
    arrays, fmts, has_base, cfmt = args
    k = len(arrays) - int(has_base)
    # The GTA lanes' rule for the same inputs (a +0 delta where the base is finite).
    live = live_inputs(arrays[1:], arrays[0], fmts[0]) if has_base else []
    if len(live) in (0, k):
        return list(range(k)), args
    keep = [0, *(1 + i for i in live)]
    return live, ([arrays[j] for j in keep], [fmts[j] for j in keep], has_base, cfmt)


def _multislerp(
    out: np.ndarray,
    out_fmt: int,
    args: tuple[list[np.ndarray], list[int], bool, int],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    compute: str,
) -> bool:
    """False where the weighted mean direction is below eps (the twin's fallback)."""
    kernels = native.kernels
    assert kernels is not None
    k_all = len(args[0]) - int(args[2])
    eps = shared["eps"]
    weights = [lm.rounded(per_input[i]["weight"], compute) for i in range(k_all)]
    if shared["normalize_weights"]:
        total = _sum(weights, compute)
        weights = [_op(w, total, "/", compute) for w in weights]
    live, args = _frozen_left_out(args)
    k = len(live)
    norms = [0.0] * k_all  # a frozen input's norm: torch.norm of zeros
    for i, v in zip(live, _norms(args), strict=True):
        norms[i] = lm.rounded(v, compute)
    eps_c = lm.rounded(eps, compute)  # a Python scalar added to a tensor: in its dtype
    ne = [_op(norms[i], eps_c, "+", compute) for i in live]
    g = [ne, [weights[i] for i in live]]

    # What each pass makes for the next (the u_i, mean then m, step: k + 2 rows in the compute
    # format, exact), so that no pass recomputes another's work (merge_sphere.c).
    n = args[0][0].size
    cache = out_array((k + 2) * n, compute)

    def run(stage: int, mn: float = 0.0, dots: Sequence[float] = (0.0,) * MAX_INPUTS,
            c: float = 0.0, q: float = 0.0, scale: float = 0.0) -> list[float]:  # fmt: skip
        """A pass; a large tensor's elementwise passes (1, 3, 4) in column ranges on two
        threads, their norms then taken from the cached row."""
        target = out if stage == 4 else None
        common = (target, out_fmt, *args, *g, mn, list(dots)[:k], c, q, scale, cache)
        if stage == 2 or not _splits(n):
            return kernels.multislerp_pass(stage, *common, 0, n)
        _run_columns(lambda r: kernels.multislerp_pass(stage, *common, r.start, r.stop), n)
        if stage == 4:
            return []
        row = k if stage == 1 else k + 1
        return kernels.sphere_norms([cache[row * n : (row + 1) * n]], [args[3]], False, args[3])

    mean_norm = lm.rounded(run(1)[0], compute)
    if mean_norm < eps_c:  # compared in the compute dtype
        return False
    dots = [lm.rounded(v, compute) for v in run(2, mean_norm)]
    step_norm = _op(lm.rounded(run(3, mean_norm, dots)[0], compute), eps_c, "+", compute)
    c = lm.func(lm.COS, step_norm, compute)
    q = _op(lm.func(lm.SIN, step_norm, compute), step_norm, "/", compute)
    scale = _sum([_op(v, w, "*", compute) for v, w in zip(norms, weights, strict=True)], compute)
    run(4, mean_norm, dots, c, q, scale)
    return True
