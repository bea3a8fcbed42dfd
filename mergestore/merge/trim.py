"""TIES under a budget: keep the full merge's trim in the blocks that are read.

TIES trims each expert's delta to its k = floor(density·n) largest magnitudes over the whole
tensor. An omitted block is the base there (a zero delta), so with the plain k the top-k of a
budgeted tensor is taken from the read blocks alone: more of them survive than in the full
merge (at a 50% read about twice as many), and the read blocks are not the full merge's there.

The planner instead estimates, per (tensor, expert) with an omitted block, the full merge's
trim threshold t* and how many of its k survivors lie in the read blocks (k_read), from the
exact per-block statistics the store keeps (‖Δ‖₁, ‖Δ‖₂, max|Δ|, nonzeros): each block's nonzero
deltas are modelled by a generalized Gaussian whose shape is fitted to ‖Δ‖₁/‖Δ‖₂ (a Laplace
gives 0.71, a Gaussian 0.80, a uniform 0.87 per √nnz), and t* solves Σ_b count_b(|Δ| ≥ t) = k.
The kernel then trims that expert's tensor to k_read: the k_read largest of the read blocks
are, up to the estimate, the full merge's survivors there. No expert block is read to plan.

The plan records k_read per (tensor, expert) (`budget.trim`); replay and every executor use it.
A tensor whose expert blocks are all read keeps the plain k, so a 100% budget is unchanged.
The same model gives each block's share of ‖Δ‖² that survives the trim, which scores TIES's
candidates by the trimmed delta they bring (budget.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

# Methods whose sparsifier keeps the top-k magnitudes of the whole tensor (ops/gta.py).
TOP_K_METHODS = frozenset({"ties"})
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


@dataclasses.dataclass(frozen=True)
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
    live = [i for i, b in enumerate(blocks) if b.nnz and t <= b.max_abs]
    out = [0.0] * len(blocks)
    if not live:
        return out
    qs = _upper(
        [1 / blocks[i].beta for i in live], [(t / blocks[i].alpha) ** blocks[i].beta for i in live]
    )
    for i, q in zip(live, qs, strict=True):
        out[i] = blocks[i].nnz * q
    return out


def kept_square_share(blocks: Sequence[BlockModel], t: float) -> list[float]:
    """The share of each block's ‖Δ‖² in elements with |Δ| ≥ t."""
    live = [i for i, b in enumerate(blocks) if b.nnz and t <= b.max_abs]
    out = [0.0] * len(blocks)
    if not live:
        return out
    qs = _upper(
        [3 / blocks[i].beta for i in live], [(t / blocks[i].alpha) ** blocks[i].beta for i in live]
    )
    for i, q in zip(live, qs, strict=True):
        out[i] = q
    return out


def threshold(blocks: Sequence[BlockModel], k: int) -> float:
    """t with Σ_b count_b(|Δ| ≥ t) = k (0 when every nonzero survives), by bisection."""
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


def density_for(k: int, numel: int) -> float:
    """A density whose top_k over `numel` elements is exactly k (k >= 1)."""
    d = (k + 0.5) / numel
    assert top_k(numel, d) == k
    return min(d, 1.0)


@dataclasses.dataclass
class TensorTrim:
    """One (tensor, expert): its blocks' models, the full merge's k and threshold."""

    blocks: dict[int, BlockModel]  # block -> model (candidate blocks only)
    k: int
    t: float

    def kept_share(self) -> dict[int, float]:
        ids = sorted(self.blocks)
        share = kept_square_share([self.blocks[b] for b in ids], self.t)
        return dict(zip(ids, share, strict=True))

    def k_read(self, read: set[int]) -> int:
        ids = sorted(self.blocks)
        counts = counts_above([self.blocks[b] for b in ids], self.t)
        return max(
            1, min(self.k, round(sum(c for b, c in zip(ids, counts, strict=True) if b in read)))
        )


def apply(tasks: Sequence[Any], trims: dict[str, dict[int, int]]) -> None:
    """Give each task's trimmed inputs the density that keeps k_read elements (in place)."""
    for task in tasks:
        got = trims.get(task.plan.name)
        if not got or task.reference is None:
            continue
        numel = math.prod(task.reference.shape)
        per_input = list(task.plan.per_input)
        for i, model in enumerate(task.input_models):
            if model in got:
                per_input[i] = {**per_input[i], "density": density_for(got[model], numel)}
        task.plan = dataclasses.replace(task.plan, per_input=tuple(per_input))


def fit(
    method: str, cands: Sequence[Any], tasks: Sequence[Any]
) -> dict[tuple[str, int], TensorTrim]:
    """Each (tensor, expert)'s trim model, for a top-k method (else none)."""
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
        density = float(task.plan.per_input[task.input_models.index(model)].get("density", 1.0))
        if density >= 1:
            continue
        k = top_k(math.prod(task.reference.shape), density)
        out[(name, model)] = TensorTrim(blocks, k, threshold(list(blocks.values()), k))
    return out


def read_counts(
    trims: dict[tuple[str, int], TensorTrim], chosen: Sequence[Any]
) -> dict[str, dict[int, int]]:
    """k_read of every (tensor, expert) with an omitted block: what the plan records."""
    read: dict[tuple[str, int], set[int]] = {}
    for c in chosen:
        read.setdefault((c.tensor, c.model), set()).add(c.block)
    out: dict[str, dict[int, int]] = {}
    for key, tt in trims.items():
        got = read.get(key, set())
        if got >= set(tt.blocks):
            continue  # every block read: the plain k, as in the full merge
        out.setdefault(key[0], {})[key[1]] = tt.k_read(got)
    return out
