"""multislerp: weighted barycentric slerp of N inputs (or task vectors) on a hypersphere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.errors import MergeError
from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import NON_NEGATIVE, BaseRule, MethodSpec, ParamSpec, Scope

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
    """Barycentric slerp of the non-base inputs (or their task vectors), in the input dtype.

    A single input is returned unchanged (even with a base, as mergekit does).
    """
    if len(inputs) == 1:
        return inputs[0]
    eps = shared["eps"]
    vs = torch.stack(list(inputs), dim=0)
    if base is not None:
        vs -= base
    flat = vs.view(vs.shape[0], -1)
    weights = torch.tensor([per_input[i]["weight"] for i in range(len(inputs))], dtype=vs.dtype)
    if shared["normalize_weights"]:
        weights = weights / weights.sum()

    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if vs.shape[0] != 2:
            raise MergeError(
                f"multislerp: the weighted mean direction of {ctx.name!r} is zero "
                "(antipodal inputs with balancing weights); choose other weights"
            )
        # Two balanced antipodal inputs: fall back to the weighted sum.
        out = (vs[0] * weights[0] + vs[1] * weights[1]).view(vs.shape[1:])
        return out + base if base is not None else out
    mean = mean / mean_norm

    # Log map to the tangent space at the mean, average, exp map back.
    dots = (units * mean).sum(-1, keepdim=True)
    tangents = units - dots * mean
    step = (tangents * weights.view(-1, 1)).sum(0)
    step_norm = torch.norm(step) + eps
    out = mean * torch.cos(step_norm) + step * (torch.sin(step_norm) / step_norm)
    out = out * (norms.squeeze(-1) * weights).sum()
    out = out.view(vs.shape[1:])
    return out + base if base is not None else out


SPEC = register(
    MethodSpec(
        name="multislerp",
        params=(
            ParamSpec("weight", Scope.NON_BASE, kind=float),
            ParamSpec("normalize_weights", Scope.SHARED, True, bool),
            ParamSpec("eps", Scope.SHARED, 1e-8, float, bounds=NON_NEGATIVE),
        ),
        base=BaseRule.OPTIONAL,
        min_inputs=1,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
