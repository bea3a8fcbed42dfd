"""nearswap: per element, take the other input where it is within t of the base."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import (
    NON_NEGATIVE,
    BaseRule,
    MethodSpec,
    OptionalTensorRule,
    ParamSpec,
    Scope,
)

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
    """w = clamp(t / max(|a - b|, 1e-6), 0, 1); out = w * b + (1 - w) * a, in a's dtype."""
    assert base is not None
    other = inputs[0]
    weight = (shared["t"] / torch.abs(base - other).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


SPEC = register(
    MethodSpec(
        name="nearswap",
        params=(ParamSpec("t", Scope.SHARED, kind=float, bounds=NON_NEGATIVE),),
        base=BaseRule.REQUIRED,
        min_inputs=1,
        max_inputs=1,
        elementwise=True,
        optional_tensor=OptionalTensorRule.PASSTHROUGH_BASE_SINGLETON,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
