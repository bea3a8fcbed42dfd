"""The 16-bit GTA paths (one fp32 accumulator, per-input consensus) against mergekit 0.1.5.

The parity suite uses 3 inputs; these cover 1 to 8, where torch's own reduction order could
differ (fp32 sums of 5+ rows use several accumulators, so fp32 keeps the stacked sum).
Densities of 1 keep every element, so no rank cut (and no tie) is involved.
"""

from __future__ import annotations

import pytest
import torch
from mergekit_ref import mk

from mergestore import native
from mergestore.ops import TensorContext, merge_tensor


def _inputs(n: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(40, 33, generator=g)
    # Mixed scales make rounding order matter; some exact zeros test the sign rule.
    xs = []
    for i in range(n):
        d = torch.randn(40, 33, generator=g) * 10.0 ** (-3 + i % 4)
        d[torch.rand(40, 33, generator=g) < 0.1] = 0
        xs.append((base + d).to(dtype))
    return base.to(dtype), xs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n", [1, 2, 5, 8])
@pytest.mark.parametrize(
    ("method", "shared"),
    [
        ("task_arithmetic", {}),
        ("task_arithmetic", {"normalize": True, "lambda": 0.6}),
        ("ties", {}),
        ("ties", {"normalize": False}),
        ("breadcrumbs", {"normalize": True}),
    ],
)
def test_many_inputs_match_mergekit(method, shared, n, dtype):
    base, xs = _inputs(n, dtype, seed=n)
    weights = [0.7, -0.3, 0.45, 0.2, 1.1, 0.05, -0.6, 0.33][:n]
    per_input = [{"weight": w, "density": 1.0} for w in weights]
    ours = merge_tensor(method, base, xs, shared, per_input, TensorContext("t"))
    params = dict(shared, weight=weights, density=[1.0] * n)
    theirs = mk.merge_tensors([base, *xs], method, parameters=params, base_index=0)
    assert ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs)


def test_all_weights_cancel_like_mergekit():
    base, xs = _inputs(2, torch.bfloat16, seed=0)
    per_input = [{"weight": 0.5}, {"weight": -0.5}]
    shared = {"normalize": True}
    ours = merge_tensor("task_arithmetic", base, xs, shared, per_input, TensorContext("t"))
    theirs = mk.merge_tensors(
        [base, *xs],
        "task_arithmetic",
        parameters={"normalize": True, "weight": [0.5, -0.5]},
        base_index=0,
    )
    assert torch.equal(ours, theirs)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values with NaN in the same places (torch's own NaN bits depend on whether an
    element falls in a vector body or a scalar tail, so NaN payloads are not compared)."""
    a, b = a.float(), b.float()
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(
        torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0)
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    ("method", "per"),
    [
        ("task_arithmetic", {}),
        ("ties", {"density": 0.5}),
        ("breadcrumbs", {"density": 0.8, "gamma": 0.05}),
        ("dare_ties", {"density": 0.5}),
        ("della", {"density": 0.5, "epsilon": 0.1}),
    ],
)
@pytest.mark.parametrize(
    "inputs", ["negative weight beside the base", "the base alone", "positive weights"]
)
def test_an_input_equal_to_an_infinite_base_gives_torchs_nans(
    monkeypatch, dtype, method, per, inputs
) -> None:
    """An input that is the base itself is skipped only where the base is finite: with an
    infinity in the base its delta is NaN in torch, which must poison the sum here too."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(5000, generator=g).to(dtype)
    base[10], base[20] = float("inf"), float("-inf")
    expert = (base.float() + 0.02 * torch.randn(5000, generator=g)).to(dtype)
    expert[10], expert[20] = 1.0, -2.0
    xs, weights = {
        "negative weight beside the base": ([expert, base], (-0.5, 0.3)),
        "the base alone": ([base], (0.5,)),
        "positive weights": ([expert, base], (0.5, 0.3)),
    }[inputs]
    per_input = [{"weight": w, **per} for w in weights]
    ctx = TensorContext(name="t", seed=0)
    fast = merge_tensor(method, base, xs, {}, per_input, ctx)
    with monkeypatch.context() as m:
        m.setattr(native, "kernels", None)
        slow = merge_tensor(method, base, xs, {}, per_input, ctx)
    assert bool(torch.isnan(slow[10])) and bool(torch.isnan(slow[20]))
    assert _same_values(fast, slow)
