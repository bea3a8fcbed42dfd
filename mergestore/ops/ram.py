"""ram: sum unique changes as-is and average the changes several inputs share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import BaseRule, MethodSpec, ParamSpec, Scope


def merge(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: TensorContext,
) -> Tensor:
    raise NotImplementedError


SPEC = register(
    MethodSpec(
        name="ram",
        params=(ParamSpec("epsilon", Scope.SHARED, 1e-5, float),),
        base=BaseRule.REQUIRED,
        min_inputs=0,
        elementwise=True,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
