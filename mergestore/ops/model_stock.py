"""model_stock: interpolate the base toward the mean by a factor from pairwise cosines."""

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
        name="model_stock",
        params=(ParamSpec("filter_wise", Scope.SHARED, False, bool),),
        base=BaseRule.REQUIRED,
        min_inputs=2,
        optional_tensor=OptionalTensorRule.BASE_OR_SKIP,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
