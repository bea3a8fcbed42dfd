"""slerp: spherical interpolation from the base (t=0) to the other input (t=1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import BaseRule, MethodSpec, OptionalTensorRule, ParamSpec, Scope


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
