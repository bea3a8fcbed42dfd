"""karcher on the lane (ops.lane_karcher, csrc/merge_karcher.c) gives the torch path's bits.

Each case merges the same tensors twice: with ops.lanes.merge on numpy arrays, and with
ops.merge_tensor on torch tensors with the C kernels off (ops/karcher.py: mergekit 0.1.5's
arithmetic), torch on one thread as the engine runs it, for inputs in bf16, fp16 and fp32
(mixed), fp32 compute, and every out_dtype.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.bits import same_bits
from fixtures.lane_family import NAMES, TORCH, from_lane, to_lane
from mergestore import native
from mergestore.ops import (
    TensorContext,
    get_method,
    lane_karcher,
    lane_math,
    lanes,
    merge_tensor,
    validate_params,
)

pytestmark = pytest.mark.skipif(native.kernels is None, reason="C kernels not built")

CTX = TensorContext("model.layers.1.mlp.gate_proj.weight", seed=0)


def models(n, shape, dtypes, seed, spread=1.0):
    """n models near a common point (karcher takes no base), in the given dtypes."""
    g = torch.Generator().manual_seed(seed)
    center = 0.02 * torch.randn(shape, generator=g)
    xs = [center + spread * 0.01 * torch.randn(shape, generator=g) for _ in range(n)]
    return [x.to(TORCH[t]) for x, t in zip(xs, dtypes, strict=False)]


def check(xs, out_dtype, shared_in=None, fresh_thread=False):
    shared_in = shared_in or {}
    spec = get_method("karcher")
    shared, per = validate_params(spec, shared_in, [{}] * len(xs), has_base=False)
    assert lanes.reason("karcher", "F32", shared, per, xs[0].numel()) is None
    # torch on one thread, as the engine runs it: a reduction's order (torch.dot's too, which
    # the lane calls) depends on torch's threads
    kernels, native.kernels, threads = native.kernels, None, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = merge_tensor(
            "karcher", None, xs, shared_in, [{}] * len(xs), CTX,
            dtype=torch.float32, out_dtype=TORCH[out_dtype] if out_dtype else None,
        )  # fmt: skip
        native.kernels = kernels
        args = ("karcher", None, [to_lane(x) for x in xs], shared, per, "F32", out_dtype, CTX)
        if fresh_thread:  # where torch has run no parallel loop yet (see lane_karcher)
            with ThreadPoolExecutor(1) as pool:
                got = pool.submit(lanes.merge, *args).result()
        else:
            got = lanes.merge(*args)
    finally:
        native.kernels = kernels
        torch.set_num_threads(threads)
    got_t = from_lane(got).reshape(want.shape)
    assert same_bits(got_t, want), (out_dtype, (got_t != want).sum())


@pytest.fixture(params=["own", "mkl"])
def dots(request, monkeypatch):
    """Both ways of taking the dot products: summed in C in MKL's order (where the check
    passes on this machine), and MKL's sdot on fp32 unit arrays."""
    if request.param == "own":
        if not lane_karcher.own_dots():
            pytest.skip("MKL's sdot here is not its generic kernel")
    else:
        monkeypatch.setattr(lane_karcher, "_own", False)
    return request.param


@pytest.mark.parametrize("out_dtype", [None, *NAMES])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_every_dtype_mix(out_dtype, n, dots):
    xs = models(n, (37, 64), ["BF16", "F32", "F16", "BF16", "F32"], seed=n)
    check(xs, out_dtype)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 60), min_size=0, max_size=2).map(lambda s: (*s, 8)),
    n=st.integers(1, 5),
    dtypes=st.lists(st.sampled_from(NAMES), min_size=5, max_size=5),
    out_dtype=st.sampled_from([None, *NAMES]),
    max_iter=st.integers(1, 12),
    tol=st.sampled_from([1e-5, 1e-3, 1e-8]),
    spread=st.sampled_from([0.0, 1e-3, 1.0, 100.0]),
    seed=st.integers(0, 1000),
)
def test_random(shape, n, dtypes, out_dtype, max_iter, tol, spread, seed):
    xs = models(n, shape, dtypes, seed, spread)
    check(xs, out_dtype, {"max_iter": max_iter, "tol": tol})


def test_zero_and_equal_inputs(dots):
    """A zero input (not live), all-zero inputs (the twin's zeros), equal inputs (every
    angle under tol: no step)."""
    x = torch.linspace(-1, 1, 64)
    check([x, torch.zeros(64), 2 * x], "BF16")
    check([torch.zeros(64), torch.zeros(64)], None)
    check([x, x.clone(), x.clone()], None)
    check([x, -x], "F32")


def test_large_tensor(dots):
    xs = models(4, ((1 << 20) + 8 * 37,), ["BF16"] * 4, seed=7)
    check(xs, "BF16")


def test_in_a_fresh_thread(dots):
    """The lane in a thread where torch has run no parallel loop yet (as in the engine's
    workers): without applying torch's thread count there first, torch.dot split its sum over
    the default threads."""
    xs = models(4, (2880, 1024), ["BF16"] * 4, seed=11, spread=3.0)
    check(xs, "BF16", fresh_thread=True)


def test_reasons():
    spec = get_method("karcher")
    shared, per = validate_params(spec, {}, [{}] * 3, has_base=False)
    assert lanes.reason("karcher", "F32", shared, per, 64) is None
    assert "F16 compute" in lanes.reason("karcher", "F16", shared, per, 64)
    assert "multiple of 8" in lanes.reason("karcher", "F32", shared, per, 60)


def _order_sensitive(rng, n):
    """Two 64-byte-aligned fp32 vectors whose sum of products depends on its order."""
    x, y = lane_karcher._aligned(n), lane_karcher._aligned(n)
    x[:] = rng.standard_normal(n).astype("float32") * (2.0 ** rng.integers(-12, 12, n))
    y[:] = rng.standard_normal(n).astype("float32")
    return x, y


def test_own_order_is_mkls_sdot():
    """Where the lane sums the dot products itself, it gives MKL's sdot bits: lengths other
    than the check's (every residue mod 32 up to 700, and the bench's tensor sizes); and the
    vectors are sensitive to the order (numpy's own sum differs for most)."""
    import numpy as np

    if not lane_karcher.own_dots():
        pytest.skip("MKL's sdot here is not its generic kernel")
    lane_math.one_blas_thread()
    rng = np.random.default_rng(3)
    differ = 0
    sizes = [*range(101, 700, 7), 2949120, (1 << 20) + 8 * 37]
    for n in sizes:
        x, y = _order_sensitive(rng, n)
        want = np.float32(lane_math.dot32(x, y))
        got = np.float32(native.kernels.mkl_def_sdot(x, y))
        assert got.view(np.uint32) == want.view(np.uint32), n
        differ += np.float32(np.dot(x, y)) != want
    assert differ > len(sizes) // 2


def test_own_check_fails_on_another_order(monkeypatch):
    """The check refuses a sum that is not MKL's (here numpy's), so the lane calls MKL."""
    import numpy as np

    class Other:
        def __getattr__(self, name):
            return getattr(kernels, name)

        @staticmethod
        def mkl_def_sdot(x, y):
            return float(np.dot(x, y))

    kernels = native.kernels
    monkeypatch.setattr(native, "kernels", Other())
    assert lane_karcher._check_own() is False
    monkeypatch.setattr(lane_karcher, "_own", False)
    assert "MKL's sdot called" in lanes.notes("karcher")["karcher_dots"]
    assert lanes.notes("linear") == {}
