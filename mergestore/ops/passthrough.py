"""passthrough: the single input, times its scale if one is set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import BaseRule, MethodSpec, ParamSpec, Scope

if TYPE_CHECKING:
    from torch import Tensor


def merge(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: TensorContext,
) -> Tensor:
    """x, or x * scale (a Python float, so the result keeps x's dtype)."""
    scale = per_input[0].get("scale")
    return inputs[0] if scale is None else inputs[0] * scale


SPEC = register(
    MethodSpec(
        name="passthrough",
        params=(ParamSpec("scale", Scope.INPUT, None, float, nullable=True),),
        base=BaseRule.IGNORED,
        min_inputs=1,
        max_inputs=1,
        elementwise=True,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
