"""ramplus_tl: ram with each input's unique changes scaled by its shared/unique ratio."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops.context import TensorContext
from mergestore.ops.ram import task_vector_masks
from mergestore.ops.registry import register
from mergestore.ops.spec import NON_NEGATIVE, BaseRule, MethodSpec, ParamSpec, Scope

if TYPE_CHECKING:
    from torch import Tensor


def merge(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: TensorContext,
) -> Tensor:
    """RAM with unique changes scaled by lambda_i = 1 + r * clamp(rho_i, 0, alpha).

    rho_i = (# positions where input i is active and shared) / max(# active and unique, eps).
    lambda is fp32 (an int count ratio), so bf16/fp16 inputs give an fp32 result, as in
    mergekit.
    """
    assert base is not None
    if not inputs:
        return base
    eps = shared["epsilon"]
    tv, active, counts, overlap, unique = task_vector_masks(base, inputs, eps)
    shared_n = (active & overlap).sum(dim=1)
    unique_n = (active & unique).sum(dim=1)
    rho = shared_n / unique_n.clamp(min=eps)
    lam = 1 + shared["r"] * rho.clamp(min=0, max=shared["alpha"])
    tv = tv * active
    merged = ((tv * unique * lam.unsqueeze(-1)) + (tv * overlap / counts.clamp(min=1))).sum(
        dim=0, keepdim=True
    )
    return base + merged.reshape_as(base)


SPEC = register(
    MethodSpec(
        name="ramplus_tl",
        params=(
            ParamSpec("r", Scope.SHARED, 0.1, float, bounds=NON_NEGATIVE),
            ParamSpec("alpha", Scope.SHARED, 0.2, float, bounds=NON_NEGATIVE),
            ParamSpec("epsilon", Scope.SHARED, 1e-5, float, bounds=NON_NEGATIVE),
        ),
        base=BaseRule.REQUIRED,
        min_inputs=0,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
