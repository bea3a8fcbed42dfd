"""nuslerp: slerp of two inputs (or their task vectors) with t = w2 / (w1 + w2)."""

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
    """Slerp x1 -> x2 (or their task vectors, re-added to the base) at t = w2 / (w1 + w2).

    t = 0.5 when |w1 + w2| < 1e-6. Computed in the input dtype; returns the input dtype.
    """
    w1, w2 = per_input[0]["weight"], per_input[1]["weight"]
    total = w1 + w2
    t = 0.5 if abs(total) < 1e-6 else w2 / total
    dim = 0 if shared["nuslerp_row_wise"] else -1
    flatten = bool(shared["nuslerp_flatten"])
    if base is not None:
        return base + nuslerp(t, inputs[0] - base, inputs[1] - base, dim=dim, flatten=flatten)
    return nuslerp(t, inputs[0], inputs[1], dim=dim, flatten=flatten)


def _unit(x: Tensor, eps: float = 1e-7) -> Tensor:
    return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=eps)


def nuslerp(t: float, v0: Tensor, v1: Tensor, *, dim: int, flatten: bool) -> Tensor:
    """Slerp along the last axis (whole tensor if ``flatten``; axis ``dim`` moved last)."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    cos = torch.sum(_unit(v0) * _unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    # Only (numerically) exactly colinear vectors fall back to lerp: 1 - c^2 <= (1e-8)^2.
    colinear = (1 - cos.square()) <= 1e-8**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin_theta = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if dim != -1 and not flatten:
        out = out.transpose(dim, -1)
    return out.reshape(shape)


SPEC = register(
    MethodSpec(
        name="nuslerp",
        params=(
            ParamSpec("weight", Scope.NON_BASE, kind=float),
            ParamSpec("nuslerp_flatten", Scope.SHARED, True, bool),
            ParamSpec("nuslerp_row_wise", Scope.SHARED, False, bool),
        ),
        base=BaseRule.OPTIONAL,
        min_inputs=2,
        max_inputs=2,
        optional_tensor=OptionalTensorRule.PASSTHROUGH_SINGLETON,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
