"""model_stock: interpolate the base toward the mean by a factor from pairwise cosines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops import alloc
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
    # Each offset's norm once (mergekit computes it again for every pair: the same values),
    # and the pair products in one reused buffer: the same kernels, so the same bits.
    norms = [torch.norm(o, dim=-1) for o in offsets]
    product = alloc.empty_like(offsets[0])
    cosines = []
    for i, oa in enumerate(offsets):
        for j in range(i + 1, len(offsets)):
            denom = (norms[i] * norms[j]).clamp(min=1e-6)
            dot = torch.mul(oa, offsets[j], out=product).sum(dim=-1)
            cosines.append((dot / denom).clamp(-1, 1))
    del offsets, product
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)
    # sum(ws) / n, then t * average + (1 - t) * w0, accumulated in place (the same roundings:
    # `0 + ws[0]` makes -0 +0, as Python's sum does).
    out = torch.add(ws[0], 0)
    for w in ws[1:]:
        out.add_(w)
    out.div_(n).mul_(t)
    out.add_((1 - t) * w0)
    return out.reshape(shape)


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
