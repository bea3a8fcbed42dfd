"""The torch-free lane for every dtype combination (ops.lanes) gives the torch path's bits.

Each case merges the same tensors twice: with ops.lanes.merge on numpy arrays, and with
ops.merge_tensor on torch tensors with the C kernels turned off (torch alone: mergekit 0.1.5's
dtype rules and arithmetic), for inputs in bf16, fp16 and fp32 (mixed), compute in float32,
bfloat16 and float16, and every out_dtype.
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
from mergestore.ops import (
    TensorContext,
    cuts,
    get_method,
    lane_formats,
    lane_karcher16,
    lanes,
    merge_tensor,
    validate_params,
)

pytestmark = pytest.mark.skipif(native.kernels is None, reason="C kernels not built")

CTX = TensorContext("model.layers.0.mlp.down_proj.weight", seed=3)

METHODS = {
    "task_arithmetic": lambda i: {"weight": [0.3, 0.7, -0.45, 1.1][i]},
    "ties": lambda i: {"weight": [0.3, 0.7, 0.45, 1.0][i], "density": [0.5, 0.3, 0.71, 0.2][i]},
    "breadcrumbs": lambda i: {"weight": [0.6, 0.5, 0.4, 0.3][i], "density": 0.6, "gamma": 0.05},
    "breadcrumbs_ties": lambda i: {"weight": [0.6, 0.5, 0.4, 0.3][i], "density": 0.7},
    "linear": lambda i: {"weight": [0.3, 0.7, 0.25, 0.9, 0.5][i]},
}


def family(n: int, shape: tuple[int, ...], dtypes: list[str], seed: int, ties: bool = False):
    """lane_family; with `ties`, coarse values so many magnitudes are equal (rank cuts must
    take ties by flat index)."""
    return lane_family(n, shape, dtypes, seed, coarse=8 if ties else 0)


def check(method, base, xs, compute, out_dtype, params=None, shared_params=None):
    per_input = [(params or METHODS[method])(i) for i in range(len(xs))]
    spec = get_method(method)
    if method == "linear":
        base_arg, inputs = None, [base, *xs][: lanes.FP32_MAX_INPUTS]
        per_input = [METHODS[method](i) for i in range(len(inputs))]
    else:
        base_arg, inputs = base, xs
    given = shared_params or {}
    shared, per_r = validate_params(spec, given, per_input, has_base=base_arg is not None)
    assert lanes.reason(method, compute, shared, per_r) is None
    kernels, native.kernels = native.kernels, None  # the torch path alone, no C kernel
    try:
        want = merge_tensor(
            method, base_arg, inputs, given, per_input, CTX,
            dtype=TORCH[compute], out_dtype=TORCH[out_dtype] if out_dtype else None,
        )  # fmt: skip
    finally:
        native.kernels = kernels
    got = lanes.merge(
        method,
        to_lane(base_arg) if base_arg is not None else None,
        [to_lane(x) for x in inputs],
        shared,
        per_r,
        compute,
        out_dtype,
    )
    got_t = from_lane(got).reshape(want.shape)
    assert same_bits(got_t, want), (method, compute, out_dtype)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("compute", NAMES)
@pytest.mark.parametrize("out_dtype", [None, *NAMES])
def test_every_dtype_combination(method, compute, out_dtype):
    dtypes = ["BF16", "F32", "BF16", "F16", "BF16"]
    base, xs = family(4, (37, 129), dtypes, seed=len(method) + len(compute))
    check(method, base, xs, compute, out_dtype)


@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("out_dtype", [None, *NAMES])
@pytest.mark.parametrize("shared", [{}, {"normalize": False}, {"normalize": True, "lambda": 0.7}])
@pytest.mark.parametrize("in_dtype", ["BF16", "F32"])
def test_fp32_compute_register_loops(method, n, out_dtype, shared, in_dtype):
    """task_arithmetic and linear in fp32 compute over 1 to 4 inputs and a base all bf16 or all
    fp32 (the register loops of csrc/merge_few32.h), with infinities, NaNs (in fp32 one whose
    payload fills the low 16 bits, which a bf16 output must keep a NaN), subnormals and signed
    zeros, on lengths that are not a multiple of a tile."""
    if method == "linear":
        shared = {k: v for k, v in shared.items() if k != "lambda"}
    base, xs = family(n, (3, 700), [in_dtype] * (n + 1), seed=21 + n)
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 1e-40, -1e-40])
    low_nan = torch.tensor([0x7FFFFFFF, -1], dtype=torch.int32).view(torch.float32)
    for i, x in enumerate([base, *xs]):
        x[i % 3, 5 * i : 5 * i + 7] = specials.to(x.dtype)
        if in_dtype == "F32":
            x[(i + 1) % 3, 9 * i : 9 * i + 2] = low_nan
    # linear takes the base as its first input (check): n inputs in all
    check(method, base, xs if method != "linear" else xs[: n - 1], "F32", out_dtype, None, shared)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_ties_in_magnitudes_fp32(method):
    base, xs = family(3, (64, 300), ["BF16"] * 4, seed=5, ties=True)
    check(method, base, xs, "F32", "BF16")


@pytest.mark.parametrize("method", ["ties", "breadcrumbs"])
@pytest.mark.parametrize("compute", ["F32", "BF16"])
def test_large_tensors_with_runs_of_equal_magnitudes(method, compute):
    """Tensors large enough for the sampled bracket of the cuts (csrc/cut_select.c): an input
    equal to the base (every delta +0, the cut inside the zeros) and coarse deltas (long runs
    of equal magnitudes) keep torch's bits."""
    base, xs = family(3, (520, 512), ["BF16", "BF16", "F32", "BF16"], seed=11, ties=True)
    xs[0] = base.clone()
    check(method, base, xs, compute, "BF16")


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("non_finite", [False, True])
@pytest.mark.parametrize("compute", ["F32", "BF16"])
def test_an_input_that_is_the_base_array(method, non_finite, compute):
    """An input that is the base tensor itself (a frozen tensor: the engine passes the same
    array) is left out of the cut merges only when that changes no bit; with an infinity
    in the base its NaN deltas count, as in torch."""
    dtypes = ["BF16", "BF16", "F32", "BF16"] if compute == "F32" else ["BF16"] * 4
    base, xs = family(3, (48, 70), dtypes, seed=13, ties=True)
    if non_finite:
        base[3, 4] = float("inf")
    xs[1] = base  # the same tensor: the lane sees the same memory
    check(method, base, xs, compute, "BF16")


@pytest.mark.parametrize("consensus", [True, False])
def test_fused_cut_kernel_in_any_column_windows(consensus):
    """kernels.gta_cut32 on column windows (each told its flat start) gives the bits of one
    call over the whole tensor, wherever a cut's tie breakpoint falls."""
    base, xs = family(3, (50, 41), ["BF16", "F32", "BF16", "F16"], seed=7, ties=True)
    flat_base = to_lane(base).reshape(-1)
    flats = [to_lane(x).reshape(-1) for x in xs]
    fmts = [lane_formats.FMT[lane_formats.format_of(x)] for x in flats]
    bfmt = lane_formats.FMT["BF16"]
    rules = [("magnitude", 0.37), ("magnitude_outliers", 0.8), ("magnitude", 0.5)]
    specs = [
        cuts.find(x, f, flat_base, bfmt, lane_formats.FMT["F32"], kind, d, 0.02)
        for x, f, (kind, d) in zip(flats, fmts, rules, strict=True)
    ]
    assert any(0 < s[2] < flat_base.size for s in specs)  # a breakpoint inside the tensor
    w = lanes.f32([0.3, 0.5, 0.9])
    args = (w, consensus, 1.7, True, 1.0, False)
    whole = np.empty(flat_base.size, np.float32)
    native.kernels.gta_cut32(whole, 2, flat_base, bfmt, flats, fmts, specs, 0, *args)
    pieces = np.empty_like(whole)
    for a in range(0, flat_base.size, 37):
        b = min(a + 37, flat_base.size)
        native.kernels.gta_cut32(
            pieces[a:b], 2, flat_base[a:b], bfmt, [x[a:b] for x in flats], fmts, specs, a, *args
        )
    assert whole.view(np.uint32).tolist() == pieces.view(np.uint32).tolist()


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(sorted(METHODS)),
    shape=st.lists(st.integers(1, 70), min_size=1, max_size=3).map(tuple),
    n=st.integers(1, 4),
    dtypes=st.lists(st.sampled_from(NAMES), min_size=5, max_size=5),
    compute=st.sampled_from(NAMES),
    out_dtype=st.sampled_from([None, *NAMES]),
    seed=st.integers(0, 1000),
    ties=st.booleans(),
)
def test_random_shapes(method, shape, n, dtypes, compute, out_dtype, seed, ties):
    base, xs = family(n, shape, dtypes, seed, ties)
    check(method, base, xs, compute, out_dtype)


def test_infinities_and_nans_fp32():
    base, xs = family(3, (40, 50), ["BF16", "F32", "BF16", "F32"], seed=9)
    xs[0][0, :5] = float("inf")
    xs[1][1, :5] = float("nan")
    base[2, :3] = float("-inf")
    for method in METHODS:
        check(method, base, xs, "F32", "BF16")


@pytest.mark.parametrize("compute", NAMES)
def test_reasons(compute):
    spec = get_method("ties")
    shared, per = validate_params(spec, {}, [{"weight": 1.0, "density": 1.0}], has_base=True)
    assert "density" in lanes.reason("ties", compute, shared, per)
    spec = get_method("karcher")  # and slerp, nuslerp, multislerp: tests/ops/test_lane_sphere.py
    shared, per = validate_params(spec, {}, [{}, {}], has_base=False)
    aten = lane_karcher16.torch_runs_avx2() or lane_karcher16.torch_runs_avx512()
    on_lane = compute == "F32" or (compute == "BF16" and aten)
    assert (lanes.reason("karcher", compute, shared, per, 64) is None) == on_lane
    spec = get_method("sce")
    shared, per = validate_params(spec, {}, [{}, {}], has_base=True)
    assert lanes.reason("sce", compute, shared, per) is None  # ops.lane_sce
    if compute == "F32":
        spec = get_method("task_arithmetic")
        shared, per = validate_params(spec, {}, [{"weight": 1.0}] * 5, has_base=True)
        assert "more than 4" in lanes.reason("task_arithmetic", compute, shared, per)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("compute", ["F32", "BF16"])
def test_large_tensors_split_over_two_threads(method, compute, monkeypatch):
    """Above PARALLEL_MIN elements the lane cuts two inputs at once and combines two column
    ranges at once: the same bits."""
    from mergestore.ops import lane16

    monkeypatch.setattr(lane16, "PARALLEL_MIN", 1000)
    monkeypatch.setattr(cuts, "PARALLEL_MIN", 1000)
    base, xs = family(4, (61, 77), ["BF16", "F32", "BF16", "F16", "BF16"], seed=2, ties=True)
    check(method, base, xs, compute, "BF16")


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("dare_ties", {"density": 0.6}),
        ("dare_linear", {"density": 0.4}),
        ("della", {"density": 0.5, "epsilon": 0.1}),
        ("della_linear", {"density": 0.6, "epsilon": 0.2}),
        ("ties", {"density": 1.0}),
        ("ties", {"density": 0.4, "rescale": True}),
        ("breadcrumbs_ties", {"density": 0.0}),
    ],
)
@pytest.mark.parametrize("n", [1, 3, 4])
def test_fp32_torch_sparsified_deltas_combined_by_the_kernels(method, params, n, monkeypatch):
    """dtype: float32 merges the lane does not take (random drops, L1 rescale, density 0 or 1)
    still combine their torch-made deltas with the fp32 C kernels (ops.gta._native32): the
    bits of torch alone (native.kernels = None)."""
    base, xs = family(n, (33, 130), ["BF16", "F32", "BF16", "F16", "BF16"], seed=n)
    shared = {k: v for k, v in params.items() if k == "rescale"}
    per = [{"weight": [0.5, -0.25, 0.7, 0.3][i], **params} for i in range(n)]
    for p in per:
        p.pop("rescale", None)

    def run():
        return merge_tensor(
            method, base, xs, shared, per, CTX, dtype=torch.float32, out_dtype=torch.bfloat16
        )

    fast = run()
    monkeypatch.setattr(native, "kernels", None)
    slow = run()
    assert same_bits(fast, slow)


# nearswap and ram (ops.lane_elementwise): shared parameters, any compute dtype.
ELEMENTWISE = {
    "nearswap": ({"t": 0.0007}, 1),
    "ram": ({"epsilon": 1e-5}, 4),
}


def check_shared(method, base, xs, shared, compute, out_dtype):
    """check() for a method whose parameters are shared (nearswap, ram)."""
    spec = get_method(method)
    shared_r, per_r = validate_params(spec, shared, [{}] * len(xs), has_base=True)
    assert lanes.reason(method, compute, shared_r, per_r) is None
    kernels, native.kernels = native.kernels, None
    try:
        want = merge_tensor(
            method, base, xs, shared, [{}] * len(xs), CTX,
            dtype=TORCH[compute], out_dtype=TORCH[out_dtype] if out_dtype else None,
        )  # fmt: skip
    finally:
        native.kernels = kernels
    got = lanes.merge(
        method, to_lane(base), [to_lane(x) for x in xs], shared_r, per_r, compute, out_dtype
    )
    assert same_bits(from_lane(got).reshape(want.shape), want), (method, compute, out_dtype)


@pytest.mark.parametrize("method", sorted(ELEMENTWISE))
@pytest.mark.parametrize("compute", NAMES)
@pytest.mark.parametrize("out_dtype", [None, *NAMES])
def test_elementwise_every_dtype_combination(method, compute, out_dtype):
    shared, n = ELEMENTWISE[method]
    dtypes = ["BF16", "F32", "BF16", "F16", "BF16"]
    base, xs = family(n, (37, 129), dtypes, seed=len(method) + len(compute))
    check_shared(method, base, xs, shared, compute, out_dtype)


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(sorted(ELEMENTWISE)),
    shape=st.lists(st.integers(1, 70), min_size=1, max_size=3).map(tuple),
    n=st.integers(0, 4),
    dtypes=st.lists(st.sampled_from(NAMES), min_size=5, max_size=5),
    compute=st.sampled_from(NAMES),
    out_dtype=st.sampled_from([None, *NAMES]),
    seed=st.integers(0, 1000),
    ties=st.booleans(),
    param=st.sampled_from([0.0, 1e-6, 1e-5, 3e-4, 0.01, 1.0]),
)
def test_elementwise_random(method, shape, n, dtypes, compute, out_dtype, seed, ties, param):
    """Random shapes, dtype mixes and parameters (epsilon and t at and around the deltas'
    magnitudes, so the masks and clamps cut through the data); ram also with no inputs."""
    n = 1 if method == "nearswap" else n
    base, xs = family(n, shape, dtypes, seed, ties)
    shared = {"t": param} if method == "nearswap" else {"epsilon": param}
    check_shared(method, base, xs, shared, compute, out_dtype)


@pytest.mark.parametrize("method", sorted(ELEMENTWISE))
@pytest.mark.parametrize("compute", NAMES)
def test_elementwise_large_tensors_split_over_two_threads(method, compute, monkeypatch):
    from mergestore.ops import lane16

    monkeypatch.setattr(lane16, "PARALLEL_MIN", 1000)
    shared, n = ELEMENTWISE[method]
    base, xs = family(n, (61, 77), ["F32", "BF16", "F16", "BF16", "F32"], seed=4)
    check_shared(method, base, xs, shared, compute, "BF16")


def test_ram_of_the_base_alone_on_a_tensor_merged_in_chunks():
    """No inputs and a tensor large enough for the torch path's chunks (the shape then comes
    from the base): hypothesis found the IndexError this once raised."""
    base, xs = family(0, (56, 67, 70), ["BF16"] * 5, seed=3, ties=False)
    check_shared("ram", base, xs, {"epsilon": 1e-5}, "BF16", None)


@pytest.mark.parametrize("method", sorted(ELEMENTWISE))
def test_elementwise_infinities(method):
    shared, n = ELEMENTWISE[method]
    base, xs = family(n, (40, 50), ["BF16", "F32", "BF16", "F32", "BF16"], seed=9)
    xs[0][0, :5] = float("inf")
    base[2, :3] = float("-inf")
    check_shared(method, base, xs, shared, "F32", "BF16")


def test_ram_reasons():
    spec = get_method("ram")
    shared, per = validate_params(spec, {}, [{}] * 5, has_base=True)
    assert "more than 4" in lanes.reason("ram", "BF16", shared, per)
    shared, per = validate_params(spec, {}, [{}] * 4, has_base=True)
    assert lanes.reason("ram", "F16", shared, per) is None


@pytest.mark.parametrize("compute", NAMES)
def test_ram_epsilon_at_the_threshold(compute):
    """Deltas exactly at epsilon as the compute dtype rounds it, and one step either side:
    torch compares in the compute dtype."""
    eps = 1e-5
    at = torch.tensor([eps], dtype=TORCH[compute])
    up = torch.nextafter(at, torch.tensor([1.0], dtype=TORCH[compute]))
    down = torch.nextafter(at, torch.tensor([0.0], dtype=TORCH[compute]))
    row = torch.cat([at, up, down, -at, -up, -down, torch.tensor([eps], dtype=torch.float32)])
    base = torch.zeros(3, row.numel(), dtype=torch.float32)
    xs = [base + row.float(), base + row.float().flip(0), base + 2 * row.float()]
    check_shared("ram", base, xs, {"epsilon": eps}, compute, None)


# model_stock (ops.lane_reduce): fp32 compute, tensors of a multiple of 8 elements; bf16
# compute, a multiple of 16.
def check_model_stock(base, xs, out_dtype, compute="F32"):
    spec = get_method("model_stock")
    shared, per = validate_params(spec, {}, [{}] * len(xs), has_base=True)
    assert lanes.reason("model_stock", compute, shared, per, base.numel()) is None
    # torch on one thread, as the engine runs it: a reduction's order depends on the threads
    kernels, native.kernels, threads = native.kernels, None, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = merge_tensor(
            "model_stock", base, xs, {}, [{}] * len(xs), CTX,
            dtype=TORCH[compute], out_dtype=TORCH[out_dtype] if out_dtype else None,
        )  # fmt: skip
    finally:
        native.kernels = kernels
        torch.set_num_threads(threads)
    got = lanes.merge(
        "model_stock", to_lane(base), [to_lane(x) for x in xs], shared, per, compute, out_dtype
    )
    assert same_bits(from_lane(got).reshape(want.shape), want), (compute, out_dtype)


@pytest.mark.parametrize("compute", ["F32", "BF16"])
@pytest.mark.parametrize("out_dtype", [None, *NAMES])
@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_model_stock_every_dtype_mix(compute, out_dtype, n):
    dtypes = ["BF16", "F32", "BF16", "F16", "BF16", "F32", "BF16"]
    base, xs = family(n, (37, 128), dtypes, seed=n)
    check_model_stock(base, xs, out_dtype, compute)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 70), min_size=1, max_size=2).map(lambda s: (*s, 8)),
    n=st.integers(2, 8),
    dtypes=st.lists(st.sampled_from(NAMES), min_size=9, max_size=9),
    out_dtype=st.sampled_from([None, *NAMES]),
    seed=st.integers(0, 1000),
)
def test_model_stock_fp32_random(shape, n, dtypes, out_dtype, seed):
    """The norms' and dot products' reduction orders hold for any size (a multiple of 8)."""
    base, xs = family(n, shape, dtypes, seed)
    check_model_stock(base, xs, out_dtype)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 70), min_size=1, max_size=2).map(lambda s: (*s, 16)),
    n=st.integers(2, 8),
    dtypes=st.lists(st.sampled_from(NAMES), min_size=9, max_size=9),
    out_dtype=st.sampled_from([None, *NAMES]),
    seed=st.integers(0, 1000),
    opposite=st.booleans(),
)
def test_model_stock_bf16_random(shape, n, dtypes, out_dtype, seed, opposite):
    """bf16 compute: torch's bf16 norm and sum orders and every step's rounding, for any size
    (a multiple of 16); `opposite`: the first two offsets cancel (n = 2: t = 0, the base)."""
    base, xs = family(n, shape, dtypes, seed)
    if opposite:
        xs[1] = (2 * base.float() - xs[0].float()).to(xs[1].dtype)
    check_model_stock(base, xs, out_dtype, "BF16")


@pytest.mark.parametrize("compute", ["F32", "BF16"])
def test_model_stock_large_tensor_cascade_levels(monkeypatch, compute):
    """Sizes whose sums run through several cascade levels (2^20 elements and more), also
    split over two threads."""
    from mergestore.ops import lane16

    monkeypatch.setattr(lane16, "PARALLEL_MIN", 1000)
    base, xs = family(3, (1 << 20) + 16 * 37, ["BF16", "BF16", "F32", "BF16"], seed=1)
    check_model_stock(base, xs, "BF16", compute)


def test_torch_sum32_is_torch_sum():
    g, threads = torch.Generator().manual_seed(0), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for n in [1, 2, 3, 5, 7, 8, 9, 31, 33, 127, 129, 1000, 65536 * 2 + 3, 3_000_001]:
            x = torch.randn(n, generator=g)
            assert np.float32(native.kernels.torch_sum32(x.numpy())) == x.sum().item(), n
    finally:
        torch.set_num_threads(threads)


def test_model_stock_reasons():
    spec = get_method("model_stock")
    shared, per = validate_params(spec, {}, [{}] * 3, has_base=True)
    assert lanes.reason("model_stock", "F32", shared, per, 64) is None
    assert "multiple of 8" in lanes.reason("model_stock", "F32", shared, per, 63)
    assert lanes.reason("model_stock", "BF16", shared, per, 64) is None
    assert "multiple of 16" in lanes.reason("model_stock", "BF16", shared, per, 72)
    assert "fp16 compute" in lanes.reason("model_stock", "F16", shared, per, 64)
    shared, per = validate_params(spec, {"filter_wise": True}, [{}] * 3, has_base=True)
    assert "filter_wise" in lanes.reason("model_stock", "F32", shared, per, 64)
