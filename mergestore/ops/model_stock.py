"""model_stock: interpolate the base toward the mean by a factor from pairwise cosines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import BaseRule, MethodSpec, OptionalTensorRule, ParamSpec, Scope

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    from mergestore.lazy_torch import torch


def merge(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: TensorContext,
) -> Tensor:
    """t * mean(x_i) + (1 - t) * base, t = N c / (1 + (N - 1) c), c = mean pairwise cosine.

    Per whole tensor, or per row with filter_wise. Where 1 + (N - 1) c is within 1e-6 of 0,
    t = 0 (the base is kept). Computed and returned in the input dtype.
    """
    assert base is not None
    shape = base.shape
    w0, ws = base, list(inputs)
    if shared["filter_wise"]:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]

    offsets = [w - w0 for w in ws]
    cosines = []
    for i, oa in enumerate(offsets):
        for ob in offsets[i + 1 :]:
            denom = (torch.norm(oa, dim=-1) * torch.norm(ob, dim=-1)).clamp(min=1e-6)
            cosines.append(((oa * ob).sum(dim=-1) / denom).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


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
