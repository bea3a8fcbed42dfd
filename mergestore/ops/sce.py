"""sce: select high-variance positions, sign-consensus erase, weight by mean square."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops.context import TensorContext
from mergestore.ops.gta import sign_agreement
from mergestore.ops.registry import register
from mergestore.ops.sparsify import first_ranks
from mergestore.ops.spec import UNIT_OPEN_LOW, BaseRule, MethodSpec, ParamSpec, Scope

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
    """Select (top variance), erase (sign consensus), calculate (mean-square weights).

    Computed and returned in the input dtype. Variance selection ranks |var| descending with
    the lower flat index first among ties (mergekit uses torch.topk, whose tie order is
    unspecified).
    """
    assert base is not None
    if not inputs:
        return base
    mask_dtype = torch.int8 if shared["int8_mask"] else base.dtype
    tvs = torch.stack([x - base for x in inputs], dim=0)
    topk = shared["select_topk"]
    if topk < 1:
        tvs = tvs * _select_mask(tvs, topk, mask_dtype).unsqueeze(0)

    agree = sign_agreement(tvs)
    weights = _tv_weights(tvs)
    while weights.dim() < tvs.dim():
        weights = weights.unsqueeze(-1)
    kept = weights * agree
    merged = (tvs * kept).sum(dim=0)
    return base + merged / torch.sum(kept, dim=0).clamp(min=1e-6)


def _select_mask(tvs: Tensor, density: float, mask_dtype: torch.dtype) -> Tensor:
    """1 at the floor(density * nnz(var)) positions of largest variance across inputs."""
    if density <= 0:
        return torch.zeros_like(tvs[0], dtype=mask_dtype)
    var = torch.var(tvs, dim=0, unbiased=False)
    # The product is taken as mergekit does (an int tensor times a float: fp32 arithmetic).
    k = int(torch.count_nonzero(var) * density)
    mask = torch.zeros_like(var, dtype=mask_dtype)
    if k == 0:
        return mask
    keep = first_ranks(var.abs().reshape(-1), k, largest=True)
    mask.view(-1)[keep] = 1
    return mask


def _tv_weights(tvs: Tensor) -> Tensor:
    """omega_i = mean(tau_i^2) / sum_j mean(tau_j^2); 1/N if that sum is below 1e-6."""
    w = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    total = torch.sum(w).item()
    if abs(total) < 1e-6:
        return torch.ones_like(w) / w.shape[0]
    return w / total


SPEC = register(
    MethodSpec(
        name="sce",
        params=(
            ParamSpec("select_topk", Scope.SHARED, 1.0, float, bounds=UNIT_OPEN_LOW),
            ParamSpec("int8_mask", Scope.SHARED, False, bool),
        ),
        base=BaseRule.REQUIRED,
        min_inputs=0,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
