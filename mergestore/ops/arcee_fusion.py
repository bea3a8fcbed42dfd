"""arcee_fusion: keep the other input'"s"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import BaseRule, MethodSpec, OptionalTensorRule


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
        name="arcee_fusion",
        params=(),
        base=BaseRule.REQUIRED,
        min_inputs=1,
        max_inputs=1,
        random=True,
        optional_tensor=OptionalTensorRule.PASSTHROUGH_SINGLETON,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
