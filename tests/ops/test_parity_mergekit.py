"""Bit-for-bit parity with real mergekit 0.1.5 (``merge_tensors``), run single-threaded from its
own venv (tests/mergekit_ref.py; under CI=true these fail when mergekit cannot be had).

Deterministic methods are compared with torch.equal on random fp32 and bf16 tensors.
Random methods run with rng="global" after the same torch.manual_seed as mergekit.
Rank-selecting methods (ties, breadcrumbs*, sce, della*) use data in which no tie straddles a
cut, because mergekit's (non-stable) sort orders equal values arbitrarily; see
docs/methods.md.
"""

from __future__ import annotations

import pytest
import torch
from mergekit_ref import mk

from mergestore.ops import BaseRule, Scope, TensorContext, get_method, merge_tensor

SHAPES = [(37,), (24, 40), (3, 8, 10)]
# bf16 task vectors are coarse (differences of bf16 values), so |delta| ties are common; small
# tensors keep rank cuts tie-free for a few seeds.
BF16_SHAPES = [(37,), (6, 8), (2, 3, 5)]
DTYPE_SHAPES = [(torch.float32, s) for s in SHAPES] + [(torch.bfloat16, s) for s in BF16_SHAPES]
BIG = (1100, 1000)  # > 2**20 elements: two slerp chunks, arcee_fusion's sampled quantiles


def make_inputs(shape, n, dtype, seed, scale=0.05):
    """A base plus n dense perturbations (no exact zeros in the task vectors)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    xs = [base + scale * (i + 1) * torch.randn(shape, generator=g) for i in range(n)]
    return base.to(dtype), [x.to(dtype) for x in xs]


def _split(method, shared, per_input):
    """mergekit's parameters: shared values as-is, per-input ones as lists in input order."""
    params = dict(shared)
    spec = get_method(method)
    for p in spec.params:
        if p.scope is not Scope.SHARED and any(p.name in d for d in per_input):
            params[p.name] = [d.get(p.name, p.default) for d in per_input]
    return params


def run_both(method, base, xs, shared, per_input, *, seed=None, dtype=None):
    spec = get_method(method)
    if spec.base is BaseRule.IGNORED:
        tensors, base_index = list(xs), None
    else:
        tensors, base_index = ([base, *xs], 0) if base is not None else (list(xs), None)
    ctx = TensorContext("model.layers.0.self_attn.q_proj.weight", rng="global")
    if seed is not None:
        torch.manual_seed(seed)
    ours = merge_tensor(method, base, xs, shared, per_input, ctx, dtype=dtype)
    theirs = mk.merge_tensors(
        tensors,
        method,
        parameters=_split(method, shared, per_input),
        base_index=base_index,
        dtype=dtype,
        seed=seed,
    )
    return ours, theirs


def assert_same(ours, theirs):
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    diff = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
    assert torch.equal(ours, theirs), f"max |diff| = {diff}"


# --- tie detection for rank-selecting methods (independent of the code under test) ---------


def _straddles(values, cuts):
    """Whether a cut between ascending ranks r-1 | r falls between equal values."""
    s = torch.sort(values.reshape(-1).float()).values
    return any(0 < r < s.numel() and s[r - 1] == s[r] for r in cuts)


def _gta_cuts(method, n, params):
    d = params.get("density", 1.0)
    if d >= 1:
        return []
    if method in ("ties",):
        return [n - max(1, int(d * n))]
    if method.startswith("breadcrumbs"):
        target, top = int(d * n), int(params.get("gamma", 0.01) * n)
        bot = max(0, n - target - top)
        return [bot, bot + target]
    return []


def tie_free_inputs(method, shape, n, dtype, per_input, shared=None, scale=0.05):
    """make_inputs with the first seed whose task vectors have no tie at any cut."""
    for seed in range(200):
        base, xs = make_inputs(shape, n, dtype, seed, scale)
        deltas = [(x - base) for x in xs]
        bad = False
        for delta, params in zip(deltas, per_input, strict=True):
            if _straddles(delta.abs(), _gta_cuts(method, delta.numel(), params)):
                bad = True
            if method.startswith("della"):
                rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
                mags = rows.abs().transpose(0, 1).reshape(rows.shape[1], -1)
                # della ranks along dim 1: every column of `mags` is one ranked line
                for j in range(mags.shape[1]):
                    if torch.unique(mags[:, j]).numel() != mags.shape[0]:
                        bad = True
                        break
        if method == "sce" and shared and shared.get("select_topk", 1.0) < 1:
            var = torch.var(torch.stack(deltas), dim=0, unbiased=False).abs()
            k = int(torch.count_nonzero(var) * shared["select_topk"])
            if _straddles(var, [var.numel() - k]):
                bad = True
        if not bad:
            return base, xs
    raise AssertionError("no tie-free seed found")


# --- deterministic GTA ------------------------------------------------------------------------

W3 = [0.5, 0.3, 0.2]


def wd(densities, **extra):
    """Per-input parameters with weights W3 and the given densities."""
    return [{"weight": w, "density": d, **extra} for w, d in zip(W3, densities, strict=True)]


GTA_CASES = [
    ("task_arithmetic", {}, [{"weight": w} for w in W3]),
    ("task_arithmetic", {"lambda": 0.7, "normalize": True}, [{"weight": w} for w in W3]),
    ("task_arithmetic", {}, [{"weight": w} for w in (1.0, -0.5, 0.25)]),
    ("ties", {}, [{"weight": w, "density": 0.5} for w in W3]),
    (
        "ties",
        {"lambda": 0.8},
        wd((0.3, 0.7, 0.9)),
    ),
    ("ties", {"normalize": False, "int8_mask": True}, [{"weight": 1.0, "density": 0.4}] * 3),
    ("ties", {"rescale": True}, [{"weight": w, "density": 0.6} for w in (1.0, -0.5, 0.7)]),
    ("breadcrumbs", {}, [{"weight": w, "density": 0.6, "gamma": 0.05} for w in W3]),
    ("breadcrumbs", {"normalize": True}, [{"weight": 1.0, "density": 0.9, "gamma": 0.2}] * 3),
    ("breadcrumbs_ties", {}, [{"weight": w, "density": 0.6, "gamma": 0.05} for w in W3]),
    ("breadcrumbs_ties", {"rescale": True}, [{"weight": 0.4, "density": 0.3, "gamma": 0.2}] * 3),
]


@pytest.mark.parametrize(("dtype", "shape"), DTYPE_SHAPES)
@pytest.mark.parametrize(("method", "shared", "per_input"), GTA_CASES)
def test_gta_parity(method, shared, per_input, dtype, shape):
    base, xs = tie_free_inputs(method, shape, 3, dtype, per_input)
    assert_same(*run_both(method, base, xs, shared, per_input))


# --- random methods: global RNG, same manual_seed -------------------------------------------

RANDOM_CASES = [
    ("dare_linear", {}, [{"weight": w, "density": 0.5} for w in W3]),
    ("dare_linear", {"rescale": False}, wd((0.3, 0.7, 1.0))),
    ("dare_ties", {}, [{"weight": w, "density": 0.5} for w in W3]),
    ("dare_ties", {"normalize": True, "lambda": 1.2}, [{"weight": w, "density": 0.7} for w in W3]),
    ("della", {"lambda": 0.9}, [{"weight": w, "density": 0.5, "epsilon": 0.1} for w in W3]),
    ("della", {}, wd((0.3, 0.6, 0.8), epsilon=0.15)),
    ("della_linear", {"lambda": 0.9}, [{"weight": w, "density": 0.5, "epsilon": 0.1} for w in W3]),
    ("della_linear", {"rescale": False}, [{"weight": 1.0, "density": 0.4, "epsilon": 0.3}] * 3),
]  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("method", "shared", "per_input"), RANDOM_CASES)
def test_random_parity_fp32(method, shared, per_input, shape):
    base, xs = tie_free_inputs(method, shape, 3, torch.float32, per_input)
    for seed in (0, 42):
        assert_same(*run_both(method, base, xs, shared, per_input, seed=seed))


@pytest.mark.parametrize(("method", "shared", "per_input"), RANDOM_CASES)
def test_random_parity_bf16(method, shared, per_input):
    # Masks are drawn in bf16 (p rounded to bf16) for bf16 task vectors. Short rows and
    # large task vectors keep della's per-row ranks free of bf16 ties.
    base, xs = tie_free_inputs(method, (16, 8), 3, torch.bfloat16, per_input, scale=1.0)
    assert_same(*run_both(method, base, xs, shared, per_input, seed=3))


# --- other deterministic methods --------------------------------------------------------------

OTHER_CASES = [
    ("linear", False, 3, {}, [{"weight": w} for w in W3]),
    ("linear", False, 3, {"normalize": False}, [{"weight": w} for w in (1.0, 2.0, -0.5)]),
    ("linear", False, 4, {}, [{"weight": w} for w in (0.1, 0.2, 0.3, 0.4)]),
    ("slerp", True, 1, {"t": 0.3}, [{}]),
    ("slerp", True, 1, {"t": 1.0}, [{}]),
    ("nuslerp", True, 2, {}, [{"weight": 0.3}, {"weight": 0.7}]),
    ("nuslerp", False, 2, {}, [{"weight": 0.3}, {"weight": 0.7}]),
    ("nuslerp", True, 2, {"nuslerp_flatten": False}, [{"weight": 1.0}, {"weight": 2.0}]),
    ("nuslerp", False, 2, {"nuslerp_flatten": False, "nuslerp_row_wise": True},
     [{"weight": 0.6}, {"weight": 0.4}]),
    ("nuslerp", True, 2, {}, [{"weight": 1.0}, {"weight": -1.0}]),
    ("multislerp", True, 3, {}, [{"weight": w} for w in W3]),
    ("multislerp", False, 3, {"normalize_weights": False}, [{"weight": w} for w in W3]),
    ("multislerp", False, 2, {"eps": 1e-6}, [{"weight": 0.5}, {"weight": 0.5}]),
    ("karcher", False, 4, {}, [{}] * 4),
    ("karcher", False, 3, {"max_iter": 3, "tol": 1e-3}, [{}] * 3),
    ("model_stock", True, 3, {}, [{}] * 3),
    ("model_stock", True, 2, {"filter_wise": True}, [{}] * 2),
    ("sce", True, 3, {}, [{}] * 3),
    ("sce", True, 3, {"select_topk": 0.5, "int8_mask": True}, [{}] * 3),
    ("nearswap", True, 1, {"t": 0.05}, [{}]),
    ("nearswap", True, 1, {"t": 1e-3}, [{}]),
    ("ram", True, 3, {"epsilon": 0.05}, [{}] * 3),
    ("ram", True, 2, {}, [{}] * 2),
    ("ramplus_tl", True, 3, {"epsilon": 0.05}, [{}] * 3),
    ("ramplus_tl", True, 3, {"r": 0.3, "alpha": 0.5, "epsilon": 0.08}, [{}] * 3),
    ("arcee_fusion", True, 1, {}, [{}]),
    ("passthrough", False, 1, {}, [{"scale": 0.5}]),
    ("passthrough", False, 1, {}, [{}]),
]  # fmt: skip


@pytest.mark.parametrize(("dtype", "shape"), DTYPE_SHAPES)
@pytest.mark.parametrize(("method", "with_base", "n", "shared", "per_input"), OTHER_CASES)
def test_other_parity(method, with_base, n, shared, per_input, dtype, shape):
    base, xs = tie_free_inputs(method, shape, n, dtype, per_input, shared)
    assert_same(*run_both(method, base if with_base else None, xs, shared, per_input))


@pytest.mark.parametrize(
    ("method", "shared", "per_input"),
    [
        ("slerp", {"t": 0.4}, [{}]),
        ("arcee_fusion", {}, [{}]),  # > 10**6 elements: quantiles from random samples
    ],
)
def test_big_tensor_parity(method, shared, per_input):
    base, xs = make_inputs(BIG, 1, torch.float32, seed=5)
    assert_same(*run_both(method, base, xs, shared, per_input, seed=9))


def test_big_tensor_slerp_bf16():
    base, xs = make_inputs(BIG, 1, torch.bfloat16, seed=6)
    assert_same(*run_both("slerp", base, xs, {"t": 0.65}, [{}]))


@pytest.mark.parametrize(
    ("method", "per_input"),
    [
        ("linear", [{"weight": 0.25}, {"weight": 0.75}]),
        ("task_arithmetic", [{"weight": 0.6}]),
    ],
)
def test_mixed_dtypes_promote_like_mergekit(method, per_input):
    base, xs = make_inputs((24, 40), 2, torch.float32, seed=11)
    a, b = base.to(torch.float16), xs[0].to(torch.bfloat16)
    if method == "linear":
        assert_same(*run_both(method, None, [a, b], {}, per_input))
    else:
        assert_same(*run_both(method, a, [b], {}, per_input))
    # an explicit compute dtype overrides the promotion
    assert_same(*run_both("linear", None, [a, b], {}, [{"weight": 1.0}] * 2, dtype=torch.bfloat16))


def test_base_alone_is_returned_like_mergekit():
    base, _ = make_inputs((5,), 0, torch.float32, seed=1)
    assert_same(*run_both("ties", base, [], {}, []))
