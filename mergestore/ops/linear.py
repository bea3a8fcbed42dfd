"""linear: sum_i w_i x_i (/ sum_i w_i if normalize), accumulated in fp32."""

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
        name="linear",
        params=(
            ParamSpec("weight", Scope.INPUT, kind=float),
            ParamSpec("normalize", Scope.SHARED, True, bool),
        ),
        base=BaseRule.IGNORED,
        min_inputs=1,
        elementwise=True,
        additive=True,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
