"""ram: sum unique changes as-is and average the changes several inputs share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

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
    """base + sum_i a_i tau_i (U + O / max(c, 1)); see task_vector_masks. Input dtype."""
    assert base is not None
    if not inputs:
        return base
    tv, active, counts, overlap, unique = task_vector_masks(base, inputs, shared["epsilon"])
    tv = tv * active
    merged = ((tv * unique) + (tv * overlap / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def task_vector_masks(
    base: Tensor, inputs: Sequence[Tensor], epsilon: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Flat task vectors [N, n] and RAM's masks.

    active[i, j] = |tau_ij| > epsilon; counts[0, j] = number of active inputs at j (int64);
    overlap = counts > 1; unique = counts == 1.
    """
    tv = torch.stack([x - base for x in inputs], dim=0).view(len(inputs), -1)
    active = tv.abs() > epsilon
    counts = active.sum(dim=0, keepdim=True)
    return tv, active, counts, counts > 1, counts == 1


SPEC = register(
    MethodSpec(
        name="ram",
        params=(ParamSpec("epsilon", Scope.SHARED, 1e-5, float, bounds=NON_NEGATIVE),),
        base=BaseRule.REQUIRED,
        min_inputs=0,
        elementwise=True,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
