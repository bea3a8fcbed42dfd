"""The budget planner: which expert blocks to read, chosen by contribution per stored byte.

Every (input, block) pair whose block differs from the base block at the same position is a
candidate. Its cost is the stored bytes the store will really read for it; its score is
|w_eff| * ||Δ_k,b||₂, taken from the delta statistics the store keeps (computed by an analyze
pass when missing; those reads are reported apart from the budget). The planner fills the
budget greedily by score per byte, with deterministic tie-breaks, and never exceeds it. An
omitted pair contributes no delta: the input is taken equal to the base there, whatever the
method, so every block is merged by the same rule at any budget.

For additive methods (linear, task_arithmetic without sparsification) the omitted deltas bound
the error exactly: ||M_full − M_budget||_F ≤ sqrt(Σ_b (Σ_{k omitted in b} |w_k|·||Δ_k,b||)²),
plus a rounding allowance for blocks with omissions (see docs/budget.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any

from mergestore.blockstats import supports_stats
from mergestore.errors import BudgetError
from mergestore.fast_dataclass import dataclass
from mergestore.merge import trim as trim_mod
from mergestore.ops.spec import MethodSpec
from mergestore.store.index import DeltaStats
from mergestore.store.packs import ReadMeter
from mergestore.store.repo import Repository
from mergestore.threads import default_workers

if TYPE_CHECKING:  # a merge without --saliency does not load it
    from mergestore.merge.saliency import Saliency

GTA_METHODS = frozenset(
    {
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
    }
)
MANTISSA_BITS = {
    "BF16": 7,
    "F16": 10,
    "F32": 23,
    "F64": 52,
    "bfloat16": 7,
    "float16": 10,
    "float32": 23,
    "float64": 52,
    "F8_E5M2": 2,
    "F8_E4M3": 3,
}
# Half the spacing of the subnormals (the absolute rounding error below the normal range).
SUBNORMAL_HALF_ULP = {
    2: 2.0**-17,
    3: 2.0**-10,
    7: 2.0**-134,
    10: 2.0**-25,
    23: 2.0**-150,
    52: 2.0**-1075,
}
# Methods whose kernel averages the agreeing experts at each element (a disjoint mean): a
# second expert's block at a position already read brings less than the first (ties' sign
# election and normalization), so the score order spreads over positions (_order).
CONSENSUS_METHODS = frozenset({"ties", "breadcrumbs_ties", "dare_ties", "della"})
# Hidden, benchmark-only block choice (bench/bench_budget.py): score (default), uniform, random.
STRATEGY_ENV = "MERGESTORE_BUDGET_STRATEGY"

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
}


def parse_budget(text: str | int, full: int) -> int:
    """'25%' of `full`, '2GiB', '500MB', or plain bytes."""
    if isinstance(text, int):
        return text
    s = text.strip().lower().replace(" ", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(%|[a-z]*)", s)
    if not m:
        raise BudgetError(f"cannot read budget {text!r} (use e.g. 25%, 2GiB, 500MB)")
    num, unit = float(m.group(1)), m.group(2)
    if unit == "%":
        if num > 100:
            raise BudgetError(f"budget {text} is over 100%")
        return int(math.floor(full * num / 100.0))
    if unit not in _UNITS:
        raise BudgetError(f"unknown budget unit {m.group(2)!r} in {text!r} (use %, B, MB, GiB...)")
    return int(num * _UNITS[unit])


@dataclass(frozen=True)
class Candidate:
    """One input block a budget may read, with its cost and score."""

    tensor: str
    block: int
    model: int
    cost: int
    contrib: float  # |w_eff| * ||Δ||₂ (the score)
    numel: int
    max_abs: float
    base_l2: float
    l1: float = 0.0  # ||Δ||₁, ||Δ||₂ and nonzeros: the trim model of TIES (merge/trim.py)
    l2: float = 0.0
    nnz: int = 0


@dataclass
class Selection:
    """The blocks to read, the budget and the estimates; recorded in the plan."""

    active: bool = False
    budget_bytes: int | None = None
    max_error: float | None = None
    expert_bytes_full: int = 0
    expert_bytes_planned: int = 0
    error_bound: float | None = None
    error_bound_rel: float | None = None
    full_delta_bound: float | None = None
    analyze_bytes_read: int = 0
    stats_computed: int = 0
    bound_exact: bool = False
    surrogate: str | None = None
    strategy: str = "score"
    saliency: dict[str, Any] | None = None  # kind, id, source, scores, totals (with --saliency)
    planning_bytes_read: int = 0  # the saliency's bytes (planning, apart from merge reads)
    # ties, breadcrumbs: tensor -> input model -> what the kernel keeps of the read blocks,
    # k_read (ties) or [top, mid] (breadcrumbs): the full merge's cuts there (merge/trim.py)
    trim: dict[str, dict[int, Any]] = field(default_factory=dict)
    read: dict[str, dict[int, list[int]]] = field(default_factory=dict)  # tensor -> model -> blocks
    per_model_planned: dict[int, int] = field(default_factory=dict)
    per_model_blocks: dict[int, int] = field(default_factory=dict)
    # What the user should know about the budget or the bound (not in the plan: no effect on it)
    notes: list[str] = field(default_factory=list)

    def for_input(self, tensor: str, model: int) -> frozenset[int] | None:
        if not self.active:
            return None
        blocks = self.read.get(tensor, {}).get(model)
        return None if blocks is None else frozenset(blocks)

    def to_plan(self) -> dict[str, Any]:
        return {
            "budget": {
                "active": self.active,
                "budget_bytes": self.budget_bytes,
                "max_error": self.max_error,
                "expert_bytes_full": self.expert_bytes_full,
                "expert_bytes_planned": self.expert_bytes_planned,
                "error_bound": self.error_bound,
                "error_bound_rel": self.error_bound_rel,
                "full_delta_bound": self.full_delta_bound,
                "bound_exact": self.bound_exact,
                "surrogate": self.surrogate,
                **({} if self.strategy == "score" else {"strategy": self.strategy}),
                **({"saliency": self.saliency} if self.saliency is not None else {}),
                **(
                    {
                        "trim": {
                            t: {str(m): k for m, k in sorted(ms.items())}
                            for t, ms in sorted(self.trim.items())
                        }
                    }
                    if self.trim
                    else {}
                ),
                "per_model_planned_bytes": {
                    str(k): v for k, v in sorted(self.per_model_planned.items())
                },
                "per_model_blocks": {str(k): v for k, v in sorted(self.per_model_blocks.items())},
            },
            "selection": {
                t: {str(m): _ranges(b) for m, b in sorted(ms.items())}
                for t, ms in sorted(self.read.items())
            }
            if self.active
            else "all",
        }

    @classmethod
    def from_plan(cls, body: dict[str, Any]) -> Selection:
        b = body.get("budget") or {}
        sel = cls(
            active=bool(b.get("active")),
            budget_bytes=b.get("budget_bytes"),
            expert_bytes_full=b.get("expert_bytes_full", 0),
            error_bound=b.get("error_bound"),
            saliency=b.get("saliency"),
            trim={
                t: {
                    int(m): [int(x) for x in k] if isinstance(k, list) else int(k)
                    for m, k in ms.items()
                }
                for t, ms in (b.get("trim") or {}).items()
            },
        )
        raw = body.get("selection")
        if sel.active and isinstance(raw, dict):
            sel.read = {t: {int(m): _unranges(r) for m, r in ms.items()} for t, ms in raw.items()}
        return sel


def _ranges(blocks: Sequence[int]) -> str:
    out, i, bl = [], 0, sorted(blocks)
    while i < len(bl):
        j = i
        while j + 1 < len(bl) and bl[j + 1] == bl[j] + 1:
            j += 1
        out.append(str(bl[i]) if i == j else f"{bl[i]}-{bl[j]}")
        i = j + 1
    return ",".join(out)


def _unranges(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def effective_weights(spec: MethodSpec, task: Any) -> list[float]:
    """|weight| each input's delta carries in the output (exact for additive methods)."""
    p = task.plan
    n = len(task.inputs)
    ws = [float(pi.get("weight", 1.0)) if isinstance(pi, dict) else 1.0 for pi in p.per_input[:n]]
    if spec.name in GTA_METHODS:
        lam = float(p.shared.get("lambda", 1.0))
        total = sum(ws)
        div = total if p.shared.get("normalize") and abs(total) > 1e-8 else 1.0
        return [abs(lam * w / div) for w in ws]
    if spec.name in ("linear", "nuslerp", "multislerp"):
        total = sum(ws)
        return [abs(w / total) if abs(total) > 1e-8 else 1.0 for w in ws]
    if spec.name == "slerp":
        return [abs(float(p.shared.get("t", 0.5)))] * n
    return [1.0 / max(1, n)] * n


def is_additive(spec: MethodSpec, tasks: Sequence[Any]) -> bool:
    if spec.name == "linear":
        return True
    if spec.name != "task_arithmetic":
        return False
    return all(
        float(pi.get("density", 1.0)) >= 1.0
        for t in tasks
        for pi in t.plan.per_input
        if isinstance(pi, dict)
    )


def select(
    repo: Repository,
    spec: MethodSpec,
    tasks: Sequence[Any],
    models: Sequence[Any],
    base_index: int | None,
    *,
    budget: str | int | None,
    max_error: float | None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    progress: Callable[[int], None] | None = None,
    saliency: Saliency | None = None,
) -> Selection:
    """Choose the blocks to read. Without a budget or max_error everything is read.

    `dtype`/`out_dtype` are the merge's compute and output dtypes (None: the inputs'); they
    size the rounding allowance of the bound. With a `saliency` the blocks are ranked by its
    score per byte instead of |w|·||Δ|| per byte (merge/saliency.py).
    """
    if budget is None and max_error is None:
        if saliency is not None:
            raise BudgetError("a saliency ranks blocks for a budget: give --budget or --max-error")
        return Selection(expert_bytes_full=full_expert_bytes(repo, tasks, base_index))
    if spec.name == "passthrough":
        raise BudgetError("passthrough copies each tensor from one input; a budget does not apply")
    if base_index is None:
        raise BudgetError("a budget needs a base model: omitted blocks are taken from it")
    if max_error is not None and not 0 <= max_error <= 1:
        raise BudgetError("--max-error is a share of the merge delta, between 0 and 1")
    additive = is_additive(spec, tasks)
    cands, pairs = _candidates(repo, spec, tasks, models, base_index, progress)
    sel = Selection(
        active=True,
        max_error=max_error,
        bound_exact=additive,
        surrogate=None if additive else "|w_eff| * ||delta||_2 per block",
    )
    sel.analyze_bytes_read, sel.stats_computed = pairs
    sel.expert_bytes_full = sum(c.cost for c in cands)
    sel.strategy = os.environ.get(STRATEGY_ENV, "").strip() or "score"
    # ties, breadcrumbs: the full merge's cuts per (tensor, expert), estimated from the kept
    # statistics; a candidate brings only its delta that survives them (merge/trim.py)
    trims = trim_mod.fit(spec.name, cands, tasks)
    if trims:
        cands = trimmed_contributions(cands, trims)
        sel.surrogate = "|w_eff| * ||trimmed delta||_2 per block (trim estimated, merge/trim.py)"
    scores = None
    if saliency is not None:
        scores = saliency_scores(saliency, cands, tasks)
        sel.planning_bytes_read = saliency.bytes_read
    order = _order(cands, sel.strategy, scores, spread=spec.name in CONSENSUS_METHODS)
    chosen: list[Candidate] = []
    if budget is not None:
        limit = check_budget(budget, cands, sel)
        used = 0
        for c in order:
            if used + c.cost <= limit:
                chosen.append(c)
                used += c.cost
    rounding = _Rounding.of(spec, tasks, dtype, out_dtype)
    omitted_sum = _omitted_sums(cands, chosen)
    full = math.sqrt(sum(v * v for v in _block_sums(cands).values()))
    sel.full_delta_bound = full
    if max_error is not None:
        chosen = _smallest_prefix(
            chosen if budget is not None else order, cands, rounding, max_error * full
        )
        if chosen is None:
            within = _bound(omitted_sum, cands, rounding)
            raise BudgetError(
                f"--max-error {max_error:g} cannot be met within the budget: its bound is "
                f"{within / full if full else 0:.3g}x the merge delta"
            )
        omitted_sum = _omitted_sums(cands, chosen)
    bound = _bound(omitted_sum, cands, rounding)
    sel.error_bound = bound if additive else None
    sel.error_bound_rel = (bound / full if full > 0 else 0.0) if additive else None
    if sel.error_bound_rel is not None and sel.error_bound_rel > 1:
        sel.notes.append(uninformative_bound_note(sel.error_bound_rel, rounding.u_out))
    for c in chosen:
        sel.read.setdefault(c.tensor, {}).setdefault(c.model, []).append(c.block)
        sel.per_model_planned[c.model] = sel.per_model_planned.get(c.model, 0) + c.cost
        sel.per_model_blocks[c.model] = sel.per_model_blocks.get(c.model, 0) + 1
    for t, m in pairs_with_changes(cands):
        sel.read.setdefault(t, {}).setdefault(m, [])
    for ms in sel.read.values():
        for m in ms:
            ms[m].sort()
    sel.expert_bytes_planned = sum(c.cost for c in chosen)
    sel.trim = trim_mod.read_counts(trims, chosen)
    if saliency is not None and scores is not None:
        sel.saliency = _saliency_record(saliency, cands, chosen, scores)
    return sel


def trimmed_contributions(
    cands: Sequence[Candidate], trims: dict[tuple[str, int], Any]
) -> list[Candidate]:
    """ties, breadcrumbs: a candidate's contribution counts only the delta that survives."""
    shares = {key: tt.kept_share() for key, tt in trims.items()}
    out = []
    for c in cands:
        share = shares.get((c.tensor, c.model))
        if share is not None:
            c = dataclasses.replace(c, contrib=c.contrib * math.sqrt(share[c.block]))
        out.append(c)
    return out


def saliency_scores(
    saliency: Saliency, cands: Sequence[Candidate], tasks: Sequence[Any]
) -> dict[tuple[str, int, int], float]:
    """Each candidate's saliency score, from |w|·||Δ|| and its block's saliency summary."""
    refs = {t.plan.name: t.reference for t in tasks if t.reference is not None}
    out = {}
    for c in cands:
        ref = refs[c.tensor]
        blk = saliency.blocks(c.tensor, tuple(ref.shape), ref.rows_per_block)[c.block]
        out[(c.tensor, c.block, c.model)] = saliency.score(blk, c.contrib)
    return out


def _saliency_record(
    saliency: Saliency,
    cands: Sequence[Candidate],
    chosen: Sequence[Candidate],
    scores: dict[tuple[str, int, int], float],
) -> dict[str, Any]:
    """What the plan keeps of the saliency: its id, each candidate's score, the totals."""
    from mergestore.merge.saliency import LOSS_CHANGE

    taken = {(c.tensor, c.block, c.model) for c in chosen}
    per: dict[str, dict[str, list[list[float]]]] = {}
    kept = omitted = 0.0
    for c in sorted(cands, key=lambda c: (c.tensor, c.model, c.block)):
        key = (c.tensor, c.block, c.model)
        v = scores[key]
        if key in taken:
            kept += v
        else:
            omitted += v
        per.setdefault(c.tensor, {}).setdefault(str(c.model), []).append([c.block, _g(v)])
    half = 0.5 if saliency.kind == "fisher" else 1.0
    return {
        **saliency.to_plan(),
        "loss_change": LOSS_CHANGE[saliency.kind],
        "score_kept": _g(kept),
        "score_omitted": _g(omitted),
        "predicted_loss_change_omitted": _g(half * omitted),
        "scores": per,
    }


def _g(x: float) -> float:
    """A score as the plan keeps it: 7 significant digits (the same on every machine)."""
    return float(f"{x:.7g}")


def check_budget(budget: str | int, cands: Sequence[Candidate], sel: Selection) -> int:
    """The budget in bytes: refused when it can read no expert block (0, 0%, or less than the
    smallest block), capped at the full read with a note when it is larger."""
    full = sel.expert_bytes_full
    limit = parse_budget(budget, full)
    if limit < 0:
        raise BudgetError("the budget must not be negative")
    smallest = min((c.cost for c in cands if c.cost > 0), default=0)
    if limit < smallest:
        what = "reads no expert block" if limit == 0 else "is smaller than any expert block"
        asked = f"{budget}" if f"{budget}" == f"{limit}" else f"{budget} ({limit} bytes)"
        raise BudgetError(
            f"a budget of {asked} {what}: the smallest is {smallest} bytes, "
            f"the full read {full} bytes (for the base alone, check out the base)"
        )
    if limit > full:
        sel.notes.append(
            f"budget {budget} ({limit} bytes) is more than the full read ({full} bytes of "
            "expert blocks): capped at the full read"
        )
        limit = full
    sel.budget_bytes = limit
    return limit


def uninformative_bound_note(rel: float, u_out: float) -> str:
    """Why a bound over 100% of the merge delta says nothing, and what gives a tight one."""
    why = f"the error bound is {rel:.0%} of the merge delta, so it says nothing about the error"
    if u_out > 2.0**-20:  # a 16-bit output: its rounding allowance dwarfs fine-tune deltas
        return (
            f"{why}: a 16-bit output's rounding allowance (about 2u of each base block's norm, "
            "u = 2^-8 for bf16) is larger than the deltas; merge with --dtype float32 "
            "--out-dtype float32 for a tight bound (docs/budget.md)"
        )
    return f"{why}: too few blocks are read; raise the budget"


def pairs_with_changes(cands: Sequence[Candidate]) -> set[tuple[str, int]]:
    return {(c.tensor, c.model) for c in cands}


def _block_sums(cands: Sequence[Candidate]) -> dict[tuple[str, int], float]:
    sums: dict[tuple[str, int], float] = {}
    for c in cands:
        sums[(c.tensor, c.block)] = sums.get((c.tensor, c.block), 0.0) + c.contrib
    return sums


def _omitted_sums(cands: Sequence[Candidate], chosen: Sequence[Candidate]) -> dict:
    taken = {(c.tensor, c.block, c.model) for c in chosen}
    sums: dict[tuple[str, int], float] = {}
    for c in cands:
        if (c.tensor, c.block, c.model) not in taken:
            sums[(c.tensor, c.block)] = sums.get((c.tensor, c.block), 0.0) + c.contrib
    return sums


def _smallest_prefix(
    pool: Sequence[Candidate],
    cands: Sequence[Candidate],
    rounding: _Rounding,
    target: float,
) -> list[Candidate] | None:
    """The shortest prefix of `pool` (score-per-byte order) whose bound is <= target, or None.

    The bound never grows as a prefix grows (an omitted contribution leaves its block, and a
    block with nothing omitted has no error, rounding included), so a binary search finds it.
    Reading the whole pool gives 0 when the pool is every candidate.
    """

    def ok(k: int) -> bool:
        return _bound(_omitted_sums(cands, pool[:k]), cands, rounding) <= target

    if not ok(len(pool)):
        return None
    lo, hi = 0, len(pool)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return list(pool[:lo])


@dataclass(frozen=True)
class _Rounding:
    """What rounding can add to ||M_full − M_budget|| in a block (see docs/budget.md)."""

    u_out: float  # unit roundoff of the output dtype
    gamma: float  # relative error of the kernel's arithmetic, gamma_n = n·u/(1 − n·u)
    tiny: float  # absolute error per element below the normal range (out + compute)
    magnitude_weight: float  # W: the output holds at most W·||A_b|| + the weighted deltas

    @classmethod
    def of(
        cls, spec: MethodSpec, tasks: Sequence[Any], dtype: str | None, out_dtype: str | None
    ) -> _Rounding:
        # The least precise dtype that can take part is a sound (conservative) choice.
        names = {r.dtype for t in tasks for r in t.inputs if r is not None}
        names |= {t.reference.dtype for t in tasks if t.reference is not None}
        in_bits = min((MANTISSA_BITS[n] for n in names if n in MANTISSA_BITS), default=23)
        c_bits = MANTISSA_BITS[dtype] if dtype else in_bits
        o_bits = MANTISSA_BITS[out_dtype] if out_dtype else min(c_bits, in_bits)
        k = max((len(t.inputs) for t in tasks), default=1)
        u_c = 2.0 ** -(c_bits + 1)
        n = k + 8  # casts, the subtraction, weight rounding, the sum, normalize, lambda, + base
        gamma = n * u_c / (1 - n * u_c)
        w = max(
            [1.0]
            + [sum(effective_weights(spec, t)) for t in tasks if t.inputs and t.plan.per_input]
        )
        tiny = SUBNORMAL_HALF_ULP[o_bits] + SUBNORMAL_HALF_ULP[c_bits] * (1 + w) * n
        return cls(2.0 ** -(o_bits + 1), gamma, tiny, w)


def _bound(
    omitted: dict[tuple[str, int], float],
    cands: Sequence[Candidate],
    rounding: _Rounding,
) -> float:
    """sqrt(Σ_b (Σ_omitted contrib + rounding allowance)²) over blocks with omissions.

    Per block b with an omission, both outputs are the rounded results of a computation whose
    exact values s, s' differ by Σ_omitted w̃_k·Δ_k (w̃: the weight as rounded by the kernel,
    |w̃| ≤ (1+γ)|w|). Round-to-nearest has |fl(x) − x| ≤ u·|x| per normal element, hence
    ||fl(x) − x||₂ ≤ u·||x||₂ per block; the kernel's own error is ≤ γ·S elementwise in norm,
    with S = W·||A_b|| + Σ_k |w_k|·||Δ_k,b|| bounding ||s|| and ||s'||. So
    ||M_full,b − M_budget,b|| ≤ (1+γ)·Σ_omitted + 2·(u·(1+γ) + γ)·S + 2·√numel·tiny.
    Blocks with nothing omitted are computed from identical inputs elementwise: no error.
    """
    by_block: dict[tuple[str, int], list[Candidate]] = {}
    for c in cands:
        by_block.setdefault((c.tensor, c.block), []).append(c)
    r = rounding
    total = 0.0
    for key, s in omitted.items():
        if s <= 0:
            continue
        group = by_block[key]
        mag = r.magnitude_weight * group[0].base_l2 + sum(c.contrib for c in group)
        slack = 2 * (r.u_out * (1 + r.gamma) + r.gamma) * mag
        slack += 2 * math.sqrt(group[0].numel) * r.tiny
        total += ((1 + r.gamma) * s + slack) ** 2
    return math.sqrt(total)


def _order(
    cands: Sequence[Candidate],
    strategy: str,
    scores: dict[tuple[str, int, int], float] | None = None,
    *,
    spread: bool = False,
) -> list[Candidate]:
    """Candidates in the order the budget is filled.

    score: by score per byte (the planner): the saliency's `scores` when given, else |w|·||Δ||.
    With `spread` (methods that average the agreeing experts), a candidate's score is divided by
    1 + the number of experts' blocks already taken at its position (_spread_order).
    The others exist to benchmark it at equal budget:
    uniform takes the same fraction of blocks from every (tensor, input), spread evenly
    (bit-reversed positions); random[:SEED] is a seeded shuffle.
    """
    by_key = sorted(cands, key=lambda c: (c.tensor, c.block, c.model))
    if strategy == "score" and spread:
        return _spread_order(by_key, scores)
    if strategy == "score" and scores is not None:
        return sorted(
            by_key,
            key=lambda c: -(scores[(c.tensor, c.block, c.model)] / c.cost) if c.cost else -math.inf,
        )
    if strategy == "score":
        return sorted(
            by_key, key=lambda c: -(c.contrib / c.cost) if c.cost else -math.inf
        )  # stable: ties keep (tensor, block, input) order
    if strategy == "uniform":
        groups: dict[tuple[str, int], list[Candidate]] = {}
        for c in by_key:
            groups.setdefault((c.tensor, c.model), []).append(c)
        # which groups round up at the budget's edge: a seeded order, not the alphabet
        names = list(groups)
        random.Random(0).shuffle(names)
        keyed = []
        for g in (groups[n] for n in names):
            bits = max(1, (len(g) - 1).bit_length())
            spread = sorted(range(len(g)), key=lambda i: int(f"{i:0{bits}b}"[::-1], 2))
            # the r-th block taken from a group of n leaves (r+1)/n of it read
            keyed.extend(((r + 1) / len(g), g[i]) for r, i in enumerate(spread))
        return [c for _, c in sorted(keyed, key=lambda kc: kc[0])]
    name, _, seed = strategy.partition(":")
    if name == "random":
        out = list(by_key)
        random.Random(int(seed or 0)).shuffle(out)
        return out
    raise BudgetError(f"unknown {STRATEGY_ENV} {strategy!r} (score, uniform, random[:SEED])")


def _spread_order(
    cands: Sequence[Candidate], scores: dict[tuple[str, int, int], float] | None
) -> list[Candidate]:
    """Greedy by score per byte with diminishing returns per block position: after k experts'
    blocks at (tensor, block) are taken, the next one there counts 1/(1 + k) of its score
    (lazy greedy on a heap; ties broken by tensor, block, input)."""
    import heapq

    def per_byte(c: Candidate) -> float:
        v = scores[(c.tensor, c.block, c.model)] if scores is not None else c.contrib
        return v / c.cost if c.cost else math.inf

    heap = [(-per_byte(c), i, 0) for i, c in enumerate(cands)]
    heapq.heapify(heap)
    taken: dict[tuple[str, int], int] = {}
    out: list[Candidate] = []
    while heap:
        neg, i, seen = heapq.heappop(heap)
        c = cands[i]
        now = taken.get((c.tensor, c.block), 0)
        if now != seen:  # others were taken at its position since: re-score and re-queue
            heapq.heappush(heap, (-per_byte(c) / (1 + now), i, now))
            continue
        out.append(c)
        taken[(c.tensor, c.block)] = now + 1
    return out


def _candidates(
    repo: Repository,
    spec: MethodSpec,
    tasks: Sequence[Any],
    models: Sequence[Any],
    base_index: int,
    progress: Callable[[int], None] | None,
) -> tuple[list[Candidate], tuple[int, int]]:
    """Every (input, block) that differs from the base, with its cost and statistics."""
    need: list[tuple[Any, int, int, float, bytes, bytes, str]] = []
    for t in tasks:
        ref = t.reference
        if ref is None or t.plan.copy_from is not None:
            continue
        ws = effective_weights(spec, t)
        for k, (rec, model) in enumerate(zip(t.inputs, t.input_models, strict=True)):
            if model == base_index:
                continue
            if rec.shape != ref.shape or rec.dtype != ref.dtype or not supports_stats(rec.dtype):
                continue  # not block-aligned with the base: always read in full
            for i, (bid, rid) in enumerate(zip(rec.blocks, ref.blocks, strict=True)):
                if bid != rid:
                    need.append((t, i, model, ws[k], bid, rid, rec.dtype))
    meter = ReadMeter()
    computed: list[tuple[bytes, bytes, str, DeltaStats]] = []
    # One index transaction for every location and every kept statistic; only missing
    # statistics are computed (the analyze code path), in parallel.
    locs = repo.block_locations({bid for _t, _i, _m, _w, bid, _r, _d in need})
    ref_ids = {loc.ref for loc in locs.values() if loc.ref is not None}
    ref_locs = repo.block_locations(ref_ids)
    kept = repo.get_stats_many({(bid, rid, dt) for _t, _i, _m, _w, bid, rid, dt in need})
    missing = [key for key in dict.fromkeys((b, r, d) for *_x, b, r, d in need) if key not in kept]

    # imported here: a merge without a budget never computes delta statistics, and diff.py is
    # the largest module a merge would otherwise compile and run at start-up (~20 ms of CPU)
    from mergestore.diff import pair_stats_many

    stats_iter = pair_stats_many(repo, missing, meter, workers=default_workers(), progress=progress)
    for key, (st, fresh) in zip(missing, stats_iter, strict=True):
        kept[key] = st
        if fresh:
            computed.append((*key, st))
    cands = []
    for t, i, model, w, bid, rid, dtype in need:
        loc = locs[bid]
        cost = loc.length
        if loc.ref is not None and loc.ref != rid:
            ref_loc = ref_locs.get(loc.ref)
            cost += ref_loc.length if ref_loc else 0
        st = kept[(bid, rid, dtype)]
        cands.append(
            Candidate(
                t.plan.name,
                i,
                model,
                cost,
                w * st.l2,
                st.numel,
                st.max_abs,
                st.l2_a,
                st.l1,
                st.l2,
                st.nnz,
            )
        )
    if computed:
        repo.put_stats(computed)
    return cands, (meter.bytes_read, len(computed))


def full_expert_bytes(repo: Repository, tasks: Sequence[Any], base_index: int | None) -> int:
    """Stored bytes a full read of the experts costs, as the engine reads them.

    Per tensor: every input block that differs from the base block, each block id once, plus
    the delta reference of each such block that the merge does not already hold (a merge with
    no base holds none), also once.
    """
    total = 0
    for t in tasks:
        ref = t.reference
        counted: set[bytes] = set(ref.blocks) if ref is not None else set()
        wanted: list[bytes] = []
        for rec, model in zip(t.inputs, t.input_models, strict=True):
            if model == base_index:
                continue
            aligned = ref is not None and ref.shape == rec.shape and ref.dtype == rec.dtype
            for i, bid in enumerate(rec.blocks):
                if (aligned and bid == ref.blocks[i]) or bid in counted:
                    continue
                counted.add(bid)
                wanted.append(bid)
        locs = repo.block_locations(wanted)
        refs: list[bytes] = []
        for bid in wanted:
            loc = locs.get(bid)
            if loc is None:
                continue
            total += loc.length
            if loc.ref is not None and loc.ref not in counted:
                counted.add(loc.ref)
                refs.append(loc.ref)
        total += sum(loc.length for loc in repo.block_locations(refs).values())
    return total
