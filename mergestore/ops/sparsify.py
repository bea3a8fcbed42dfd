"""Task-vector sparsifiers of the GTA family, matching mergekit 0.1.5's ``sparsify.py``.

All take the unweighted task vector delta of one input and return the sparsified (and
optionally L1-rescaled) delta in delta's dtype.

Rank selection (magnitude, magnitude_outliers) never fully sorts: a k-th value selection
(``torch.kthvalue``, O(n)) finds the cut, then ties at the cut are resolved by flat index.
Tie rule, the same at every cut: among equal magnitudes, the LOWER flat index ranks as
"more kept" first -
  * magnitude (top-k): positions are ordered by |delta| descending, ties by ascending flat
    index; the first k are kept;
  * magnitude_outliers: positions are ordered by |delta| ascending, ties by ascending flat
    index; ranks [n_bot, n_bot + target) are kept.
mergekit uses torch's non-stable argsort/sort, whose order among equal values is unspecified,
so results equal mergekit's exactly whenever no tie straddles a cut (e.g. fp32 data).

Random sparsifiers draw one ``torch.bernoulli`` per call from ``generator`` (None = torch's
global generator, mergekit's behaviour).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mergestore.errors import MergeError

RESCALE_EPS = 1e-7


def _work_dtype(t: Tensor) -> torch.dtype:
    """The dtype mergekit draws Bernoulli masks in: fp32 on CPU except for bf16 inputs."""
    if t.device.type != "cpu" or t.dtype == torch.bfloat16:
        return t.dtype
    return torch.float32


def _magnitudes_fp32(delta: Tensor) -> Tensor:
    """Flat |delta|, in fp32 on CPU (as mergekit sorts it)."""
    w = delta.abs().reshape(-1)
    return w.float() if w.device.type == "cpu" else w


def first_ranks(w: Tensor, count: int, *, largest: bool) -> Tensor:
    """Bool mask of the first ``count`` positions of flat ``w`` in rank order.

    Rank order is by value (descending if ``largest``), ties by ascending flat index.
    """
    n = w.numel()
    if count <= 0:
        return torch.zeros(n, dtype=torch.bool, device=w.device)
    if count >= n:
        return torch.ones(n, dtype=torch.bool, device=w.device)
    # The count-th value in rank order is the cut value v.
    v = torch.kthvalue(w, n - count + 1 if largest else count).values
    mask = w > v if largest else w < v
    need = count - int(mask.sum())
    # Among the values equal to v, the lowest flat indices come first in rank order.
    tied = torch.nonzero(w == v).reshape(-1)
    mask[tied[:need]] = True
    return mask


def rescaled_masked(delta: Tensor, mask: Tensor, rescale: bool) -> Tensor:
    """delta * mask, then (if ``rescale``) scaled to keep delta's L1 norm.

    The rescale is skipped when either L1 norm is below 1e-7 (mergekit's eps).
    """
    masked = delta * mask
    if not rescale:
        return masked
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked * (before / after)


def magnitude(delta: Tensor, density: float, rescale: bool) -> Tensor:
    """Keep the k = max(1, floor(density * n)) largest |delta| (TIES trim)."""
    if density >= 1:
        return delta
    n = delta.numel()
    if density <= 0 or n == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * n))
    keep = first_ranks(_magnitudes_fp32(delta), k, largest=True)
    mask = keep.to(delta.dtype).reshape(delta.shape)
    return rescaled_masked(delta, mask, rescale)


def magnitude_outliers(delta: Tensor, density: float, gamma: float, rescale: bool) -> Tensor:
    """Drop the smallest |delta| and the gamma-fraction largest, keeping floor(density * n).

    Ascending ranks [n_bot, n_bot + target) are kept, with target = floor(density * n),
    n_top = floor(gamma * n), n_bot = max(0, n - target - n_top).
    """
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    w = _magnitudes_fp32(delta)
    # mergekit slices sorted indices [n_bot : n_bot + target]; a negative target keeps nothing.
    hi = min(n_bot + max(target, 0), n)
    keep = first_ranks(w, hi, largest=False) & ~first_ranks(w, n_bot, largest=False)
    mask = keep.to(delta.dtype).reshape(delta.shape)
    return rescaled_masked(delta, mask, rescale)


def bernoulli(
    delta: Tensor, density: float, rescale: bool, generator: torch.Generator | None
) -> Tensor:
    """DARE: keep each element with probability ``density`` (p rounded to the mask dtype)."""
    if density >= 1:
        return delta
    work = _work_dtype(delta)
    p = torch.full_like(delta, density, dtype=work)
    mask = torch.bernoulli(p, generator=generator)
    return rescaled_masked(delta.to(work), mask, rescale).to(delta.dtype)


def check_della(density: float, epsilon: float) -> None:
    """DELLA keep-probabilities range over [density - eps, density + eps], inside (0, 1)."""
    if 0 < density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
        raise MergeError(
            f"della: epsilon {epsilon} must keep density {density} +/- epsilon inside (0, 1)"
        )


def _ranks_along_dim1(magnitudes: Tensor) -> Tensor:
    """1-based ascending ranks along dim 1 (the row of a 2-D weight); ties rank by index.

    One stable sort plus a scatter, instead of mergekit's argsort of an argsort (whose tie
    order is unspecified).
    """
    order = torch.sort(magnitudes, dim=1, stable=True).indices
    shape = [1] * magnitudes.dim()
    shape[1] = magnitudes.shape[1]
    positions = torch.arange(1, shape[1] + 1, device=magnitudes.device).reshape(shape)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, positions.expand_as(order))
    return ranks


def della_magprune(
    delta: Tensor,
    density: float,
    epsilon: float,
    rescale: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """DELLA: per row, keep-probability linear in magnitude rank from d - eps to d + eps.

    "Row" is dim 1, as in mergekit: a 1-D tensor is one row; a 2-D [out, in] weight ranks
    within each output row; higher-rank tensors rank along dim 1.
    """
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    check_della(density, epsilon)
    shape = delta.shape
    work = _work_dtype(delta)
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    # Ranks come from magnitudes in delta's own dtype; they are then rounded to the work
    # dtype (bf16 rounds ranks above 256, as mergekit's does).
    ranks = _ranks_along_dim1(rows.abs()).to(work)
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    mask = torch.bernoulli(probs, generator=generator).to(work)
    return rescaled_masked(rows.to(work), mask, rescale).to(delta.dtype).reshape(shape)
