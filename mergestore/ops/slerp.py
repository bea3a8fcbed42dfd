"""slerp: spherical interpolation from the base (t=0) to the other input (t=1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import BaseRule, MethodSpec, OptionalTensorRule, ParamSpec, Scope

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    from mergestore.lazy_torch import torch


def merge(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: TensorContext,
) -> Tensor:
    """Slerp from base (t=0) to the other input (t=1); returns the input dtype."""
    assert base is not None
    return slerp(shared["t"], base, inputs[0])


# mergekit 0.1.5 bounds fp32 scratch by working in chunks of 2**20 elements; the norms and
# dot product are accumulated per chunk, so the chunking is part of the arithmetic.
CHUNK = 1 << 20
DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8


def slerp(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """Whole-tensor slerp computed in fp32 (fp64 for fp64 inputs), chunked as mergekit does.

    norm(v) = norm of the per-chunk norms (<= 1e-8 -> 1); c = sum over chunks of the chunk
    dot products of v0/|v0| and v1/|v1|, clamped to [-1, 1]; |c| > 0.9995 -> lerp.
    """
    f = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(1, -1)
    b = v1.reshape(1, -1)
    tt = torch.tensor([t], dtype=f).reshape(-1, 1)  # t as a [1, 1] tensor, like mergekit's
    n = a.shape[1]
    if n == 0:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    chunks = [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]

    # Each chunk is widened into one of two reused buffers (the same conversion kernel, so
    # the same values) instead of a fresh tensor per use.
    wide_a = torch.empty((1, min(n, CHUNK)), dtype=f)
    wide_b = torch.empty((1, min(n, CHUNK)), dtype=f)

    def widen(s: int, e: int) -> tuple[Tensor, Tensor]:
        x, y = wide_a[:, : e - s], wide_b[:, : e - s]
        x.copy_(a[:, s:e])
        y.copy_(b[:, s:e])
        return x, y

    norms_a, norms_b = [], []
    for s, e in chunks:
        x, y = widen(s, e)
        norms_a.append(torch.linalg.vector_norm(x, dim=1, keepdim=True))
        norms_b.append(torch.linalg.vector_norm(y, dim=1, keepdim=True))
    norm_a = torch.linalg.vector_norm(torch.stack(norms_a), dim=0)
    norm_b = torch.linalg.vector_norm(torch.stack(norms_b), dim=0)
    norm_a = torch.where(norm_a > NORM_EPS, norm_a, 1)
    norm_b = torch.where(norm_b > NORM_EPS, norm_b, 1)

    dots = []
    for s, e in chunks:
        x, y = widen(s, e)
        x.div_(norm_a)
        y.div_(norm_b)
        dots.append(x.mul_(y).sum(dim=1, keepdim=True))
    dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)

    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)

    out = torch.empty_like(a)  # the input dtype: products are rounded once, on store
    for s, e in chunks:
        x, y = widen(s, e)
        out[:, s:e] = x.mul_(coef_a).add_(y.mul_(coef_b))
    return out.reshape(v0.shape)


SPEC = register(
    MethodSpec(
        name="slerp",
        params=(ParamSpec("t", Scope.SHARED, kind=float),),
        base=BaseRule.REQUIRED,
        min_inputs=1,
        max_inputs=1,
        optional_tensor=OptionalTensorRule.PASSTHROUGH_SINGLETON,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
