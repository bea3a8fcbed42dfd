"""sce: select high-variance positions, sign-consensus erase, weight by mean square."""

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
        name="sce",
        params=(
            ParamSpec("select_topk", Scope.SHARED, 1.0, float),
            ParamSpec("int8_mask", Scope.SHARED, False, bool),
        ),
        base=BaseRule.REQUIRED,
        min_inputs=0,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
