"""karcher: Riemannian (Karcher) mean of the inputs on the unit sphere, rescaled."""

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
        name="karcher",
        params=(
            ParamSpec("max_iter", Scope.SHARED, 10, int),
            ParamSpec("tol", Scope.SHARED, 1e-5, float),
        ),
        base=BaseRule.IGNORED,
        min_inputs=1,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
