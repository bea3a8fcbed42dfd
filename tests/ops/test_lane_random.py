"""dare* and della* on the torch-free lane (ops.lane_random) give the torch path's bits.

Each case merges the same tensors with ops.lanes.merge on numpy arrays and with
ops.merge_tensor on torch tensors with the C kernels off (torch alone: keep_mask's numpy
Philox stream, sparsify's torch drop, L1 rescale and row ranks, gta's combine), for inputs
in bf16, fp16 and fp32 (mixed), `dtype: float32` and `dtype: bfloat16` compute and every
out_dtype.
"""

from __future__ import annotations

import pytest
import torch

from fixtures.bits import same_bits
from fixtures.lane_family import TORCH, from_lane, lane_family, to_lane
from mergestore import native
from mergestore.ops import (
    TensorContext,
    get_method,
    lane_random,
    lanes,
    merge_tensor,
    validate_params,
)

pytestmark = pytest.mark.skipif(native.kernels is None, reason="C kernels not built")

CTX = TensorContext("model.layers.3.self_attn.o_proj.weight", seed=11)


def params(method: str, i: int, density: float | None = None) -> dict:
    i %= 4
    p = {"weight": [0.3, 0.7, -0.45, 1.1][i], "density": density or [0.5, 0.3, 0.71, 0.9][i]}
    if method.startswith("della"):
        p["epsilon"] = [0.1, 0.2, 0.05, 0.09][i]
    return p


def family(n: int, shape: tuple[int, ...], dtypes: list[str], seed: int, coarse: bool = False):
    """lane_family; `coarse`: many equal magnitudes (della's row ranks must take ties by
    column)."""
    return lane_family(n, shape, dtypes, seed, coarse=8 if coarse else 0)


def check(method, base, xs, out_dtype, per_input=None, shared=None, ctx=CTX, compute="F32"):
    per_input = per_input or [params(method, i) for i in range(len(xs))]
    shared = shared or {}
    shared_r, per_r = validate_params(get_method(method), shared, per_input, has_base=True)
    assert lanes.reason(method, compute, shared_r, per_r) is None
    kernels, native.kernels = native.kernels, None  # the torch path alone, no C kernel
    try:
        want = merge_tensor(
            method, base, xs, shared, per_input, ctx,
            dtype=TORCH[compute], out_dtype=TORCH[out_dtype] if out_dtype else None,
        )  # fmt: skip
    finally:
        native.kernels = kernels
    got = lanes.merge(
        method, to_lane(base), [to_lane(x) for x in xs], shared_r, per_r, compute, out_dtype, ctx
    )
    assert same_bits(from_lane(got).reshape(want.shape), want), (method, out_dtype)


COMPUTE = ["F32", "BF16"]


@pytest.mark.parametrize("method", sorted(lane_random.METHODS))
@pytest.mark.parametrize("compute", COMPUTE)
@pytest.mark.parametrize("out_dtype", [None, "BF16", "F16", "F32"])
def test_every_input_format(method, compute, out_dtype):
    base, xs = family(4, (37, 129), ["BF16", "F32", "BF16", "F16", "BF16"], seed=len(method))
    check(method, base, xs, out_dtype, compute=compute)


@pytest.mark.parametrize("method", sorted(lane_random.METHODS))
@pytest.mark.parametrize("compute", COMPUTE)
@pytest.mark.parametrize(
    "shape", [(), (1,), (7,), (15,), (16,), (17,), (1000,), (3, 1), (5, 700), (2, 3, 40)]
)
def test_shapes(method, compute, shape):
    base, xs = family(3, shape, ["BF16"] * 4, seed=3)
    check(method, base, xs, "BF16", compute=compute)


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("compute", COMPUTE)
def test_equal_magnitudes_rank_by_column(method, compute):
    base, xs = family(3, (64, 300), ["BF16"] * 4, seed=5, coarse=True)
    check(method, base, xs, "BF16", compute=compute)


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("compute", COMPUTE)
def test_rows_wider_than_16_bit_columns(method, compute):
    """A row of more than 65536 elements (a 1-D tensor is one row): the bf16 row ranks sort
    64-bit entries there (column indices past 16 bits), with ties by column."""
    base, xs = family(2, (70001,), ["BF16"] * 3, seed=29, coarse=True)
    check(method, base, xs, "BF16", compute=compute)


@pytest.mark.parametrize("method", sorted(lane_random.METHODS))
@pytest.mark.parametrize("compute", COMPUTE)
@pytest.mark.parametrize("rescale", [True, False])
def test_rescale_and_lambda(method, compute, rescale):
    base, xs = family(2, (33, 65), ["F32"] * 3, seed=9)
    shared = {"rescale": rescale, "lambda": 0.7, "normalize": True}
    check(method, base, xs, None, shared=shared, compute=compute)


@pytest.mark.parametrize("tail", [{}, {"normalize": True, "lambda": 0.7}, {"normalize": False}])
@pytest.mark.parametrize("method", sorted(lane_random.METHODS))
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_every_input_count_in_bf16(k, method, tail):
    """1 to 5 inputs in bf16 compute, with the method's own tail and others: 1-4 hold each
    element's values in registers (rng.c's keep_few16), 5 take the tile path; specials
    included. The torch path's bits."""
    base, xs = family(k, (23, 301), ["BF16"] * (k + 1), seed=31 + k)
    xs[0][0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    check(method, base, xs, "BF16", shared=dict(tail), compute="BF16")


@pytest.mark.parametrize("method", sorted(lane_random.METHODS))
@pytest.mark.parametrize("k", [2, 3, 4])
def test_zero_sums_in_bf16(k, method):
    """Sums that come out zero: opposite deltas of equal weight (the sign vote of a zero sum
    is +1), and negative deltas all dropped over a base of -0.0 (a sum of -0.0 terms started
    from +0.0 is +0.0, so the output stays -0.0 + +0.0 = +0.0). The torch path's bits."""
    base, xs = family(k, (6, 257), ["BF16"] * (k + 1), seed=41 + k)
    base[0] = 0.0
    xs[1][0] = -xs[0][0]
    base[1] = -0.0
    for x in xs:
        x[1] = -x[1].abs() - 0.5
    per = [params(method, i) | {"weight": 0.5, "density": 0.5} for i in range(k)]
    shared = {"rescale": False} if method.startswith("dare") else {}
    check(method, base, xs, "BF16", per_input=per, shared=shared, compute="BF16")


def test_bf16_l1_sums_follow_torchs_order():
    """Magnitudes 2^20 beside 1 and 3: the bf16 L1 sums (fp32 pairs of a 16-element vector,
    then torch's cascade, then the tail) only match torch if added in its order."""
    g = torch.Generator().manual_seed(23)
    base = torch.zeros(4099)
    pick = torch.randint(0, 4, (4099,), generator=g)
    xs = [torch.tensor([2.0**20, 1.0, 3.0, 0.125])[pick] * torch.randn(4099, generator=g).sign()]
    xs = [x.to(torch.bfloat16) for x in xs]
    check("dare_linear", base.to(torch.bfloat16), xs, None, compute="BF16")


@pytest.mark.parametrize("method", sorted(lane_random.METHODS))
@pytest.mark.parametrize("compute", COMPUTE)
def test_an_input_that_is_the_base_and_density_one(method, compute):
    """A frozen tensor (the base array itself) is left out of the sums; density 1 drops
    nothing; tiny deltas fall under the rescale's eps."""
    base, xs = family(3, (40, 64), ["BF16"] * 4, seed=13)
    xs[1] = base
    xs[2] = (base.float() + 1e-12).to(torch.bfloat16)
    per = [params(method, i) for i in range(3)]
    per[0]["density"] = 1.0
    check(method, base, xs, "BF16", per_input=per, compute=compute)


@pytest.mark.parametrize("method", sorted(lane_random.METHODS))
@pytest.mark.parametrize("compute", COMPUTE)
def test_specials(method, compute):
    """NaN, infinities and signed zeros in inputs and base go where torch puts them."""
    base, xs = family(3, (16, 48), ["F32"] * 4, seed=17)
    xs[0][0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    xs[1][1, 5] = float("nan")
    base[2, 7] = float("inf")
    base[3, 3] = -0.0
    check(method, base, xs, "BF16", compute=compute)


@pytest.mark.parametrize("method", sorted(lane_random.METHODS))
@pytest.mark.parametrize("compute", COMPUTE)
def test_large_tensor_two_threads(method, compute):
    """Tensors of 2^23+ elements run their inputs' first passes and the combine's column
    ranges on two threads: the same bits as torch on one thread (the engine's setting, and
    mergekit's with OMP_NUM_THREADS=1: torch splits a large sum between its threads)."""
    base, xs = family(2, (1 << 12, 1 << 11), ["BF16"] * 3, seed=19)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        check(method, base, xs, "BF16", compute=compute)
    finally:
        torch.set_num_threads(threads)


def test_global_rng_stays_on_torch():
    shared, per = validate_params(
        get_method("dare_ties"), {}, [params("dare_ties", 0)], has_base=True
    )
    assert lanes.reason("dare_ties", "F32", shared, per, rng="global") is not None
    assert lanes.reason("dare_ties", "F16", shared, per) is not None
