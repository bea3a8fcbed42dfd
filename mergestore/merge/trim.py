"""TIES and breadcrumbs under a budget: keep the full merge's cuts in the blocks that are read.

TIES trims each expert's delta to its k = floor(density·n) largest magnitudes over the whole
tensor. An omitted block is the base there (a zero delta), so with the plain k the top-k of a
budgeted tensor is taken from the read blocks alone: more of them survive than in the full
merge (at a 50% read about twice as many), and the read blocks are not the full merge's there.
breadcrumbs (and breadcrumbs_ties) cut twice by rank over the whole tensor, dropping the gamma
share of largest magnitudes and keeping the next density share: the same happens to both cuts.

The planner instead estimates, per (tensor, expert) with an omitted block, the full merge's
cut thresholds and how many elements of the read blocks lie above them, from the exact
per-block statistics the store keeps (‖Δ‖₁, ‖Δ‖₂, max|Δ|, nonzeros): each block's nonzero
deltas are modelled by a generalized Gaussian whose shape is fitted to ‖Δ‖₁/‖Δ‖₂ (a Laplace
gives 0.71, a Gaussian 0.80, a uniform 0.87 per √nnz), and a threshold t solves
Σ_b count_b(|Δ| ≥ t) = the full merge's count. The kernel then cuts that expert's tensor at
the read blocks' counts (ties: the k_read largest; breadcrumbs: drop the top_read largest, keep
the next mid_read), which are, up to the estimate, the full merge's survivors there. No expert
block is read to plan.

The plan records the counts per (tensor, expert) (`budget.trim`: k_read, or [top_read,
mid_read]); replay and every executor use them. A tensor whose expert blocks are all read keeps
the plain cuts, so a 100% budget is unchanged. The same model gives each block's share of ‖Δ‖²
that survives the cuts, which scores the candidates by the delta they bring (budget.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from mergestore.fast_dataclass import dataclass

# Methods whose sparsifier cuts the whole tensor by magnitude rank (ops/gta.py): ties keeps the
# top k; breadcrumbs drops the top gamma share and keeps the next density share.
TOP_K_METHODS = frozenset({"ties", "breadcrumbs", "breadcrumbs_ties"})
_BETA_RANGE = (0.05, 50.0)


@lru_cache(maxsize=1)
def _shape_table() -> tuple[Any, Any]:
    """(ratio, beta) of the generalized Gaussian: E|X| / sqrt(E X²) rises with the shape beta."""
    import numpy as np

    betas = np.exp(np.linspace(math.log(_BETA_RANGE[0]), math.log(_BETA_RANGE[1]), 4000))
    ratio = np.array(
        [
            math.exp(math.lgamma(2 / b) - 0.5 * (math.lgamma(1 / b) + math.lgamma(3 / b)))
            for b in betas
        ]
    )
    return ratio, betas


@dataclass(frozen=True)
class BlockModel:
    """The nonzero deltas of one block as a generalized Gaussian (scale alpha, shape beta)."""

    nnz: int
    alpha: float
    beta: float
    max_abs: float

    @classmethod
    def of(cls, l1: float, l2: float, nnz: int, max_abs: float) -> BlockModel:
        import numpy as np

        if nnz <= 0 or l2 <= 0:
            return cls(0, 1.0, 2.0, 0.0)
        ratio, betas = _shape_table()
        r = min(max((l1 / nnz) / (l2 / math.sqrt(nnz)), float(ratio[0])), float(ratio[-1]))
        beta = float(np.interp(r, ratio, betas))
        m2 = l2 * l2 / nnz
        alpha = math.sqrt(m2 * math.exp(math.lgamma(1 / beta) - math.lgamma(3 / beta)))
        return cls(nnz, alpha, beta, max_abs)


def _upper(a: list[float], x: list[float]) -> list[float]:
    """The regularized upper incomplete gamma Q(a, x), elementwise."""
    import torch

    q = torch.special.gammaincc(
        torch.tensor(a, dtype=torch.float64), torch.tensor(x, dtype=torch.float64)
    )
    return q.tolist()


def counts_above(blocks: Sequence[BlockModel], t: float) -> list[float]:
    """Expected number of |Δ| ≥ t in each block (0 above the block's max |Δ|)."""
    shares = _tail_shares(blocks, t, 1)
    return [b.nnz * q for b, q in zip(blocks, shares, strict=True)]


def kept_square_share(blocks: Sequence[BlockModel], t: float) -> list[float]:
    """The share of each block's ‖Δ‖² in elements with |Δ| ≥ t."""
    return _tail_shares(blocks, t, 3)


def _tail_shares(blocks: Sequence[BlockModel], t: float, moment: int) -> list[float]:
    """Q(moment / beta, (t / alpha)^beta) per block: the share of the block's count (moment 1)
    or of its ‖Δ‖² (moment 3) in elements with |Δ| ≥ t; 0 for an empty block or t above its
    max |Δ|."""
    live = [i for i, b in enumerate(blocks) if b.nnz and t <= b.max_abs]
    out = [0.0] * len(blocks)
    if not live:
        return out
    qs = _upper(
        [moment / blocks[i].beta for i in live],
        [(t / blocks[i].alpha) ** blocks[i].beta for i in live],
    )
    for i, q in zip(live, qs, strict=True):
        out[i] = q
    return out


def threshold(blocks: Sequence[BlockModel], k: int) -> float:
    """t with Σ_b count_b(|Δ| ≥ t) = k, by bisection: 0 when every nonzero is counted, infinite
    when none is."""
    if k <= 0:
        return math.inf
    if sum(b.nnz for b in blocks) <= k:
        return 0.0
    lo, hi = 0.0, max(b.max_abs for b in blocks)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if sum(counts_above(blocks, mid)) > k:
            lo = mid
        else:
            hi = mid
    return hi


def top_k(numel: int, density: float) -> int:
    """The kernel's k for a tensor of `numel` elements (sparsify.magnitude)."""
    return max(1, int(density * numel))


def share_for(count: int, numel: int) -> float:
    """A density (or gamma) whose int(share·numel) is exactly `count`."""
    d = (count + 0.5) / numel
    assert int(d * numel) == count
    return min(d, 1.0)


def density_for(k: int, numel: int) -> float:
    """A density whose top_k over `numel` elements is exactly k (k >= 1)."""
    d = share_for(k, numel)
    assert top_k(numel, d) == k
    return d


@dataclass
class TensorTrim:
    """One (tensor, expert): its blocks' models and the full merge's cut thresholds.

    `cuts` are counts from the top: ties keeps the k largest ([k]); breadcrumbs drops the n_top
    largest and keeps the next `target` ([n_top, n_top + target]). `thresholds` are the
    magnitudes where those counts fall."""

    blocks: dict[int, BlockModel]  # block -> model (candidate blocks only)
    cuts: list[int]
    thresholds: list[float]

    @property
    def outliers(self) -> bool:
        return len(self.cuts) == 2

    def kept_share(self) -> dict[int, float]:
        ids = sorted(self.blocks)
        models = [self.blocks[b] for b in ids]
        share = kept_square_share(models, self.thresholds[-1])
        if self.outliers:  # less what lies above the upper cut
            above = kept_square_share(models, self.thresholds[0])
            share = [max(0.0, a - b) for a, b in zip(share, above, strict=True)]
        return dict(zip(ids, share, strict=True))

    def read_counts(self, read: set[int]) -> int | list[int]:
        """What the kernel keeps of the read blocks: k_read (ties), or [top_read, mid_read]."""
        ids = sorted(self.blocks)
        models = [self.blocks[b] for b in ids]

        def within(t: float) -> int:
            counts = counts_above(models, t)
            return round(sum(c for b, c in zip(ids, counts, strict=True) if b in read))

        if not self.outliers:
            return max(1, min(self.cuts[0], within(self.thresholds[0])))
        top = min(self.cuts[0], within(self.thresholds[0]))
        upto = min(self.cuts[1], max(top, within(self.thresholds[1])))
        return [top, upto - top]


def apply(tasks: Sequence[Any], trims: dict[str, dict[int, Any]]) -> None:
    """Give each task's trimmed inputs the density (and gamma) that keep the recorded counts."""
    for task in tasks:
        got = trims.get(task.plan.name)
        if not got or task.reference is None:
            continue
        numel = math.prod(task.reference.shape)
        per_input = list(task.plan.per_input)
        for i, model in enumerate(task.input_models):
            if model not in got:
                continue
            v = got[model]
            if isinstance(v, list):  # breadcrumbs: [top, mid]
                over = {"gamma": share_for(v[0], numel), "density": share_for(v[1], numel)}
            else:
                over = {"density": density_for(v, numel)}
            per_input[i] = {**per_input[i], **over}
        task.plan = dataclasses.replace(task.plan, per_input=tuple(per_input))


def _cuts(method: str, numel: int, params: dict[str, Any]) -> list[int] | None:
    """The full merge's counts from the top (see TensorTrim), or None when nothing is cut."""
    density = float(params.get("density", 1.0))
    if density >= 1:
        return None
    if method == "ties":
        return [top_k(numel, density)]
    target = int(density * numel)
    n_top = int(float(params.get("gamma", 0.0)) * numel)
    n_bot = max(0, numel - target - n_top)
    hi = min(n_bot + max(target, 0), numel)  # ascending ranks [n_bot, hi) are kept
    return [numel - hi, numel - n_bot]


def fit(
    method: str, cands: Sequence[Any], tasks: Sequence[Any]
) -> dict[tuple[str, int], TensorTrim]:
    """Each (tensor, expert)'s trim model, for a method that cuts by rank (else none)."""
    if method not in TOP_K_METHODS:
        return {}
    by_pair: dict[tuple[str, int], dict[int, BlockModel]] = {}
    for c in cands:
        by_pair.setdefault((c.tensor, c.model), {})[c.block] = BlockModel.of(
            c.l1, c.l2, c.nnz, c.max_abs
        )
    by_name = {t.plan.name: t for t in tasks}
    out = {}
    for (name, model), blocks in sorted(by_pair.items()):
        task = by_name[name]
        params = task.plan.per_input[task.input_models.index(model)]
        cuts = _cuts(method, math.prod(task.reference.shape), params)
        if cuts is None:
            continue
        models = list(blocks.values())
        out[(name, model)] = TensorTrim(blocks, cuts, [threshold(models, k) for k in cuts])
    return out


def read_counts(
    trims: dict[tuple[str, int], TensorTrim], chosen: Sequence[Any]
) -> dict[str, dict[int, Any]]:
    """The counts of every (tensor, expert) with an omitted block: what the plan records."""
    read: dict[tuple[str, int], set[int]] = {}
    for c in chosen:
        read.setdefault((c.tensor, c.model), set()).add(c.block)
    out: dict[str, dict[int, int]] = {}
    for key, tt in trims.items():
        got = read.get(key, set())
        if got >= set(tt.blocks):
            continue  # every block read: the plain k, as in the full merge
        out.setdefault(key[0], {})[key[1]] = tt.read_counts(got)
    return out
