"""multislerp: weighted barycentric slerp of N inputs (or task vectors) on a hypersphere."""

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
        name="multislerp",
        params=(
            ParamSpec("weight", Scope.NON_BASE, kind=float),
            ParamSpec("normalize_weights", Scope.SHARED, True, bool),
            ParamSpec("eps", Scope.SHARED, 1e-8, float),
        ),
        base=BaseRule.OPTIONAL,
        min_inputs=1,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
