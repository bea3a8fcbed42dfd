"""arcee_fusion: keep the other input'"s"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import BaseRule, MethodSpec, OptionalTensorRule

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
    """base + (p - base) * [I >= median(I) + 1.5 IQR(I)], I = |p - base| * KL(p || base).

    KL is per last-axis row of softmaxes (+1e-8). Quantiles are sorted[floor(q (n - 1))] of
    I, or of 10**6 samples drawn with replacement when n > 10**6 - the one random draw, from
    ctx.generator(0). The mask is fp32, so bf16/fp16 inputs give an fp32 result (mergekit).
    """
    assert base is not None
    other = inputs[0]
    importance = _importance(other, base)
    mask = (importance >= _threshold(importance, ctx)).float()
    return base + (other - base) * mask


SAMPLE_SIZE = 1_000_000


def _importance(p: Tensor, base: Tensor) -> Tensor:
    diff = (p - base).abs()
    pp = torch.nn.functional.softmax(p, dim=-1) + 1e-8
    qq = torch.nn.functional.softmax(base, dim=-1) + 1e-8
    return diff * torch.sum(pp * torch.log(pp / qq), dim=-1, keepdim=True)


def _threshold(importance: Tensor, ctx: TensorContext) -> Tensor:
    flat = importance.reshape(-1)
    if flat.numel() > SAMPLE_SIZE:
        picks = torch.randint(flat.numel(), (SAMPLE_SIZE,), generator=ctx.generator(0))
        flat = flat[picks]
    ordered = torch.sort(flat).values
    q = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long()
    q1, median, q3 = ordered[q]
    return median + 1.5 * (q3 - q1)


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
