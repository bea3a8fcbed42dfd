"""sce on the torch-free lane (ops.lane_sce, csrc/merge_sce.c) gives the torch path's bits.

Each case merges the same tensors twice: with ops.lanes.merge on numpy arrays, and with
ops.merge_tensor on torch tensors with the C kernels off (ops/sce.py: mergekit 0.1.5's
arithmetic), torch on one thread as the engine runs it, for inputs in bf16, fp16 and fp32
(mixed), compute in float32, bfloat16 and float16, and every out_dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.bits import same_bits
from fixtures.lane_family import NAMES, TORCH, from_lane, lane_family, to_lane
from mergestore import native
from mergestore.ops import TensorContext, get_method, lanes, merge_tensor, validate_params

pytestmark = pytest.mark.skipif(native.kernels is None, reason="C kernels not built")

CTX = TensorContext("model.layers.0.mlp.up_proj.weight", seed=0)


def family(n, shape, dtypes, seed, coarse=False):
    """lane_family; with `coarse` the deltas take few values (many equal variances: ties at
    the cut)."""
    return lane_family(n, shape, dtypes, seed, coarse=4 if coarse else 0)


def check(base, xs, topk, compute, out_dtype, int8_mask=False):
    shared_in = {"select_topk": topk, "int8_mask": int8_mask}
    spec = get_method("sce")
    shared, per = validate_params(spec, shared_in, [{}] * len(xs), has_base=True)
    assert lanes.reason("sce", compute, shared, per, base.numel()) is None
    kernels, native.kernels, threads = native.kernels, None, torch.get_num_threads()
    torch.set_num_threads(1)  # a reduction's order depends on torch's threads
    try:
        want = merge_tensor(
            "sce", base, xs, shared_in, [{}] * len(xs), CTX,
            dtype=TORCH[compute], out_dtype=TORCH[out_dtype] if out_dtype else None,
        )  # fmt: skip
    finally:
        native.kernels = kernels
        torch.set_num_threads(threads)
    got = lanes.merge(
        "sce", to_lane(base), [to_lane(x) for x in xs], shared, per, compute, out_dtype
    )
    got_t = from_lane(got).reshape(want.shape)
    assert same_bits(got_t, want), (topk, compute, out_dtype, (got_t != want).sum())


@pytest.mark.parametrize("compute", NAMES)
@pytest.mark.parametrize("out_dtype", [None, *NAMES])
@pytest.mark.parametrize("topk", [1.0, 0.5, 0.13])
def test_every_dtype_combination(compute, out_dtype, topk):
    base, xs = family(4, (37, 61), ["BF16", "F32", "BF16", "F16", "BF16"], seed=1)
    check(base, xs, topk, compute, out_dtype)


@pytest.mark.parametrize("compute", NAMES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_input_counts_and_ties_at_the_cut(compute, n):
    """Coarse deltas: many equal variances, so the cut takes ties by ascending flat index."""
    base, xs = family(n, (53, 29), ["BF16"] * 5, seed=n, coarse=True)
    for topk in (0.5, 0.31, 0.9):
        check(base, xs, topk, compute, "BF16")


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 90), min_size=1, max_size=3),
    n=st.integers(1, 4),
    dtypes=st.lists(st.sampled_from(NAMES), min_size=5, max_size=5),
    compute=st.sampled_from(NAMES),
    out_dtype=st.sampled_from([None, *NAMES]),
    topk=st.sampled_from([1.0, 0.9, 0.5, 0.25, 0.01]),
    seed=st.integers(0, 1000),
    coarse=st.booleans(),
)
def test_random(shape, n, dtypes, compute, out_dtype, topk, seed, coarse):
    base, xs = family(n, tuple(shape), dtypes, seed, coarse)
    check(base, xs, topk, compute, out_dtype, int8_mask=seed % 2 == 0)


@pytest.mark.parametrize("compute", NAMES)
def test_frozen_inputs_zero_weights_and_signed_zeros(compute):
    """Every delta 0 (the weights' sum under 1e-6: 1/N each), -0 in the base, and one input
    equal to the base while others move."""
    base = torch.tensor([0.0, -0.0, 1.0, -2.5, 3e-3, -0.0] * 8)
    check(base, [base.clone(), base.clone()], 0.5, compute, None)
    moved = base + torch.linspace(-1e-3, 1e-3, base.numel())
    check(base, [base.clone(), moved, -moved], 0.5, compute, "F32")
    check(base, [moved, base.clone()], 1.0, compute, "BF16")


@pytest.mark.parametrize("compute", NAMES)
def test_infinities_and_nans(compute):
    base, xs = family(3, (16, 24), ["F32"] * 4, seed=5)
    xs[0].view(-1)[[3, 50, 77]] = torch.tensor([float("inf"), float("nan"), -float("inf")])
    xs[2].view(-1)[[3, 90]] = torch.tensor([float("-inf"), float("nan")])
    for topk in (1.0, 0.5):
        check(base, xs, topk, compute, None)


def test_large_tensors_split_over_two_threads(monkeypatch):
    """Columns split over two threads (and the weights' sums over two input groups), cut
    ties across the split, several cascade levels: the same bits."""
    from mergestore.ops import lane16, lane_sce

    monkeypatch.setattr(lane16, "PARALLEL_MIN", 1000)
    monkeypatch.setattr(lane_sce, "PARALLEL_MIN", 1000)
    base, xs = family(4, ((1 << 20) + 37,), ["BF16"] * 5, seed=2, coarse=True)
    for topk in (0.5, 1.0):
        check(base, xs, topk, "F32", "BF16")
    check(base, xs, 0.4, "BF16", None)


def test_reasons():
    spec = get_method("sce")
    shared, per = validate_params(spec, {}, [{}] * 4, has_base=True)
    assert lanes.reason("sce", "F32", shared, per, 64) is None
    assert lanes.reason("sce", "BF16", shared, per, 64) is None
    shared, per = validate_params(spec, {}, [{}] * 5, has_base=True)
    assert "more than 4 inputs" in lanes.reason("sce", "F32", shared, per, 64)


def test_cut_kernels():
    """u32_hist_lo and u32_nth_equal against numpy."""
    rng = np.random.default_rng(0)
    u = rng.integers(0, 3, 10_000, dtype=np.uint32) * 65536 + rng.integers(0, 5, 10_000)
    u = u.astype(np.uint32)
    hist = np.zeros(1 << 16, dtype=np.int64)
    native.kernels.u32_hist_lo(u, 1, hist)
    want = np.bincount((u[(u >> 16) == 1] & 0xFFFF).astype(np.int64), minlength=1 << 16)
    assert np.array_equal(hist, want)
    v = 65536 + 3
    where = np.flatnonzero(u == v)
    assert native.kernels.u32_nth_equal(u, v, 1) == where[0]
    assert native.kernels.u32_nth_equal(u, v, len(where)) == where[-1]
    assert native.kernels.u32_nth_equal(u, v, len(where) + 1) == -1
