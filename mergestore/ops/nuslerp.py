"""nuslerp: slerp of two inputs (or their task vectors) with t = w2 / (w1 + w2)."""

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
