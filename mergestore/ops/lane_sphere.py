"""slerp, nuslerp (flattened) and multislerp on the torch-free lane: the Python half of
csrc/merge_sphere.c (the torch twins are ops/slerp.py, ops/nuslerp.py and ops/multislerp.py;
tests/ops/test_lane_sphere.py checks that both give the same bits).

The C passes stream the inputs and give torch's whole-tensor reductions (norms, sums); the
scalar steps between them (clamps, acos, sin, cos, the weights) run here through torch itself
on one-element tensors of the compute dtype, exactly the operations of the twins: torch's
acos/sin/cos are its own (SLEEF, even for one element), which no C library reproduces, and
they cost microseconds on one element. So these methods need torch imported, but none of its
whole-tensor work.

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
from mergestore.ops.context import TensorContext
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
        return None
    if method == "nuslerp" and not shared["nuslerp_flatten"]:
        return "nuslerp per row or column: acos/sin/cos of vectors in torch (SLEEF)"
    if compute not in ("F32", "BF16"):
        return f"{method} in fp16 compute: torch's fp16 reductions (no C kernel)"
    if n_inputs > MAX_INPUTS:
        return f"{method}: fp32 sums of more than {MAX_INPUTS} inputs"
    if numel is None or numel < 8 or numel % 8:
        return f"{method}: a tensor of fewer than 8, or not a multiple of 8, elements"
    return None


def _dtype(compute: str) -> torch.dtype:
    return {"BF16": torch.bfloat16, "F32": torch.float32}[compute]


def _scalars(values: Sequence[float], compute: str) -> torch.Tensor:
    """fp32 results of the kernels' reductions as torch gives them: rounded to the dtype."""
    return torch.tensor(list(values), dtype=torch.float32).to(_dtype(compute))


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
    if method == "slerp":
        _slerp(out, FMT[out_name], args, shared)
    elif method == "nuslerp":
        _nuslerp(out, FMT[out_name], args, per_input, compute)
    elif not _multislerp(out, FMT[out_name], args, shared, per_input, compute):
        # The weighted mean direction is zero: the twin's fallback (or its refusal).
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
    """The torch twin on the lane's arrays (for a branch the lane does not take)."""
    from mergestore.ops.apply import merge_tensor

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


def _slerp(
    out: np.ndarray,
    out_fmt: int,
    args: tuple[list[np.ndarray], list[int], bool, int],
    shared: Mapping[str, Any],
) -> None:
    """ops/slerp.py's scalar steps on the per-chunk norms and dot products."""
    from mergestore.ops.slerp import CHUNK, DOT_THRESHOLD, NORM_EPS

    kernels = native.kernels
    assert kernels is not None
    arrays, fmts, _has_base, cfmt = args  # [base, x]: v0 = base, v1 = x
    f = torch.float32
    tt = torch.tensor([shared["t"]], dtype=f).reshape(-1, 1)
    stats = kernels.slerp_chunks(1, arrays, fmts, cfmt, CHUNK, 0.0, 0.0)
    chunks = len(stats) // 2

    def stacked(values: Sequence[float]) -> torch.Tensor:  # torch.stack of [1, 1] results
        return torch.tensor(list(values), dtype=f).reshape(chunks, 1, 1)

    norm_a = torch.linalg.vector_norm(stacked(stats[0::2]), dim=0)
    norm_b = torch.linalg.vector_norm(stacked(stats[1::2]), dim=0)
    norm_a = torch.where(norm_a > NORM_EPS, norm_a, 1)
    norm_b = torch.where(norm_b > NORM_EPS, norm_b, 1)
    dots = kernels.slerp_chunks(2, arrays, fmts, cfmt, CHUNK, float(norm_a), float(norm_b))
    dot = stacked(dots).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
    kernels.slerp_mix(out, out_fmt, arrays, fmts, cfmt, float(coef_a), float(coef_b))


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
    norms = _scalars(kernels.sphere_norms(*args), compute).clamp(min=1e-7)
    cos = _scalars([kernels.nuslerp_dot(*args, float(norms[0]), float(norms[1]))], compute)
    cos = cos.clamp(-1, 1)
    colinear = (1 - cos.square()) <= 1e-8**2
    if bool(colinear):  # (1 - t) * v0 + t * v1: Python factors, taken in fp32
        a, c = float(np.float32(1 - t)), float(np.float32(t))
        kernels.nuslerp_mix(out, out_fmt, *args, a, c, 1.0, False)
        return
    theta = torch.acos(cos)
    d = float(torch.sin(theta))
    a, c = float(torch.sin((1 - t) * theta)), float(torch.sin(t * theta))
    kernels.nuslerp_mix(out, out_fmt, *args, a, c, d, True)


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
    k = len(args[0]) - int(args[2])
    eps = shared["eps"]
    dtype = _dtype(compute)
    weights = torch.tensor([per_input[i]["weight"] for i in range(k)], dtype=dtype)
    if shared["normalize_weights"]:
        weights = weights / weights.sum()
    norms = _scalars(kernels.sphere_norms(*args), compute)
    ne = norms + eps
    w = [float(x) for x in weights]
    g = [[float(x) for x in ne], w]

    def run(stage: int, mn: float = 0.0, dots: Sequence[float] = (0.0,) * MAX_INPUTS,
            c: float = 0.0, q: float = 0.0, scale: float = 0.0) -> list[float]:  # fmt: skip
        target = out if stage == 4 else None
        return kernels.multislerp_pass(
            stage, target, out_fmt, *args, *g, mn, list(dots)[:k], c, q, scale
        )

    mean_norm = _scalars(run(1), compute)[0]
    if bool(mean_norm < eps):
        return False
    dots = [float(x) for x in _scalars(run(2, float(mean_norm)), compute)]
    step_norm = _scalars(run(3, float(mean_norm), dots), compute)[0] + eps
    c = float(torch.cos(step_norm))
    q = float(torch.sin(step_norm) / step_norm)
    scale = float((norms * weights).sum())
    run(4, float(mean_norm), dots, c, q, scale)
    return True
