"""slerp, nuslerp and multislerp on the torch-free lane (ops.lane_sphere, csrc/merge_sphere.c)
give the torch path's bits.

Each case merges the same tensors twice: with ops.lanes.merge on numpy arrays, and with
ops.merge_tensor on torch tensors with the C kernels off (ops/slerp.py, ops/nuslerp.py,
ops/multislerp.py: mergekit 0.1.5's arithmetic), torch on one thread as the engine runs it,
for inputs in bf16, fp16 and fp32 (mixed), compute in float32 and bfloat16 (and float16 for
slerp), and every out_dtype.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.bits import same_bits
from fixtures.lane_family import NAMES, TORCH, from_lane, lane_family, to_lane
from mergestore import native
from mergestore.errors import MergeError
from mergestore.ops import TensorContext, get_method, lanes, merge_tensor, validate_params
from mergestore.ops import lane_math as lm

pytestmark = pytest.mark.skipif(native.kernels is None, reason="C kernels not built")

COMPUTE = ["BF16", "F32"]
CTX = TensorContext("model.layers.0.self_attn.o_proj.weight", seed=0)


family = lane_family


def check(method, base, xs, shared_in, per_in, compute, out_dtype):
    spec = get_method(method)
    shared, per = validate_params(spec, shared_in, per_in, has_base=base is not None)
    numel = xs[0].numel()
    assert lanes.reason(method, compute, shared, per, numel) is None
    kernels, native.kernels, threads = native.kernels, None, torch.get_num_threads()
    torch.set_num_threads(1)  # a reduction's order depends on torch's threads
    try:
        want = merge_tensor(
            method, base, xs, shared_in, per_in, CTX,
            dtype=TORCH[compute], out_dtype=TORCH[out_dtype] if out_dtype else None,
        )  # fmt: skip
    finally:
        native.kernels = kernels
        torch.set_num_threads(threads)
    lane_base = to_lane(base) if base is not None else None
    got = lanes.merge(
        method, lane_base, [to_lane(x) for x in xs], shared, per, compute, out_dtype, CTX
    )
    got_t = from_lane(got).reshape(want.shape)
    assert same_bits(got_t, want), (method, compute, out_dtype, (got_t != want).sum())


def slerp(base, xs, compute, out_dtype, t=0.4):
    check("slerp", base, xs[:1], {"t": t}, [{}], compute, out_dtype)


def nuslerp(base, xs, compute, out_dtype, w=(0.6, 0.4)):
    per = [{"weight": w[0]}, {"weight": w[1]}]
    check("nuslerp", base, xs[:2], {}, per, compute, out_dtype)


def multislerp(base, xs, compute, out_dtype, normalize=True, eps=1e-8):
    per = [{"weight": [0.25, 0.4, 0.1, 0.7][i]} for i in range(len(xs))]
    shared = {"normalize_weights": normalize, "eps": eps}
    check("multislerp", base, xs, shared, per, compute, out_dtype)


@pytest.mark.parametrize("compute", COMPUTE)
@pytest.mark.parametrize("out_dtype", [None, *NAMES])
@pytest.mark.parametrize("with_base", [True, False])
def test_every_dtype_combination(compute, out_dtype, with_base):
    base, xs = family(4, (37, 64), ["BF16", "F32", "BF16", "F16", "BF16"], seed=1)
    b = base if with_base else None
    nuslerp(b, xs, compute, out_dtype)
    multislerp(b, xs, compute, out_dtype)
    multislerp(b, xs[:2], compute, out_dtype, normalize=False, eps=1e-3)


@pytest.mark.parametrize("compute", NAMES)
@pytest.mark.parametrize("out_dtype", [None, *NAMES])
def test_slerp_every_dtype_combination(compute, out_dtype):
    base, xs = family(1, (37, 64), ["F32", "BF16"], seed=3)
    slerp(base, xs, compute, out_dtype)
    slerp(base.to(torch.bfloat16), [xs[0].to(torch.float16)], compute, out_dtype, t=1.3)
    slerp(base, [base.clone()], compute, out_dtype)  # colinear: the linear branch


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 70), min_size=0, max_size=2).map(lambda s: (*s, 8)),
    n=st.integers(2, 4),
    dtypes=st.lists(st.sampled_from(NAMES), min_size=5, max_size=5),
    compute=st.sampled_from(COMPUTE),
    out_dtype=st.sampled_from([None, *NAMES]),
    with_base=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_random(shape, n, dtypes, compute, out_dtype, with_base, seed):
    base, xs = family(n, shape, dtypes, seed)
    b = base if with_base else None
    nuslerp(b, xs, compute, out_dtype, w=(0.3 + seed % 5, 0.2 + seed % 3))
    multislerp(b, xs, compute, out_dtype)
    slerp(base, xs, compute, out_dtype, t=(seed % 7) / 6)


@pytest.mark.parametrize("compute", COMPUTE)
def test_colinear_opposite_and_zero_vectors(compute):
    """nuslerp's lerp branch (colinear inputs), zero-sum weights (t = 0.5); multislerp of one
    input (returned), of antipodal inputs (the weighted-sum fallback) and of zero vectors."""
    x = torch.linspace(-1, 1, 64)
    nuslerp(None, [x, 2 * x], compute, "BF16")
    nuslerp(None, [x, x.flip(0)], compute, None, w=(0.5, -0.5))
    nuslerp(torch.zeros(64), [torch.zeros(64), x], compute, None)
    multislerp(None, [x], compute, None)
    multislerp(None, [x, -x], compute, None)
    multislerp(None, [torch.zeros(64), torch.zeros(64)], compute, "F32")


def test_antipodal_refusal_is_the_twins():
    spec = get_method("multislerp")
    per = [{"weight": 1.0}, {"weight": 1.0}, {"weight": 1.0}]
    shared, per_r = validate_params(spec, {}, per, has_base=False)
    x = torch.linspace(-1, 1, 64)
    xs = [to_lane(v) for v in (x, -x, torch.zeros(64))]
    with pytest.raises(MergeError, match="mean direction"):
        lanes.merge("multislerp", None, xs, shared, per_r, "F32", None, CTX)


def test_large_tensors_cascade_levels():
    """Sizes whose sums run through several cascade levels (2^20 elements and more), and
    slerp's chunks of 2^20 elements."""
    base, xs = family(4, ((1 << 20) + 8 * 37,), ["BF16"] * 5, seed=2)
    slerp(base, xs, "F32", "BF16")
    slerp(base, xs, "BF16", None, t=0.7)
    nuslerp(base, xs, "F32", "BF16")
    multislerp(base, xs, "F32", "BF16")
    multislerp(None, xs, "BF16", None)


def test_reasons():
    spec = get_method("slerp")
    shared, per_r = validate_params(spec, {"t": 0.5}, [{}], has_base=True)
    assert lanes.reason("slerp", "F16", shared, per_r, 64) is None
    assert "multiple of 8" in lanes.reason("slerp", "F32", shared, per_r, 12)
    spec = get_method("nuslerp")
    per = [{"weight": 1.0}, {"weight": 2.0}]
    shared, per_r = validate_params(spec, {}, per, has_base=True)
    assert lanes.reason("nuslerp", "F32", shared, per_r, 64) is None
    assert lanes.reason("nuslerp", "BF16", shared, per_r, 64) is None
    assert "fp16" in lanes.reason("nuslerp", "F16", shared, per_r, 64)
    assert "multiple of 8" in lanes.reason("nuslerp", "F32", shared, per_r, 63)
    shared, per_r = validate_params(spec, {"nuslerp_flatten": False}, per, has_base=True)
    assert "per row" in lanes.reason("nuslerp", "F32", shared, per_r, 64)
    spec = get_method("multislerp")
    shared, per_r = validate_params(spec, {}, [{"weight": 1.0}] * 5, has_base=True)
    assert "more than 4" in lanes.reason("multislerp", "F32", shared, per_r, 64)


def test_slerp_over_many_chunks():
    """Six chunks of 2^20 elements: the norm of the chunk norms takes torch's vector tail (four
    plain multiply-adds, then fused ones), the dot products its stacked sum."""
    base, xs = family(1, ((5 << 20) + 8 * 41,), ["BF16", "BF16"], seed=4)
    slerp(base, xs, "F32", "BF16", t=0.3)


def test_untraced_scalars_go_through_the_twin(monkeypatch):
    """bf16 sin beyond SLEEF's first range (t * theta >= 125: t = 101 here) and, with
    lane_math made to refuse everything, every method: the twin's bits."""
    base, xs = family(2, (16, 8), ["BF16", "BF16", "BF16"], seed=5)
    refused, func = [], lm.func

    def spy(op, x, compute):
        try:
            return func(op, x, compute)
        except lm.Untraced:
            refused.append(x)
            raise

    monkeypatch.setattr(lm, "func", spy)
    nuslerp(base, xs, "BF16", None, w=(-1.0, 1.01))
    assert refused and abs(refused[0]) >= 125

    def refuse(*args):
        raise lm.Untraced("test")

    monkeypatch.setattr(lm, "func", refuse)
    for compute in COMPUTE:
        slerp(base, xs, compute, None)
        nuslerp(base, xs, compute, "F32")
        multislerp(None, xs, compute, None)


@pytest.mark.parametrize("compute", COMPUTE)
@pytest.mark.parametrize("with_base", [True, False])
def test_multislerp_passes_reuse_what_the_last_made(compute, with_base):
    """The passes keep the u_i, the mean direction and the step for the next ones
    (merge_sphere.c's cache): the torch twin's bits over many tiles (a partial last one), with
    an input far from the others, one near zero, and an infinity in one input."""
    base, xs = family(4, (61, 136), ["BF16", "F32", "BF16", "BF16", "F32"], seed=7)
    xs[1] = xs[1] * 300.0
    xs[2] = xs[2] * 1e-30
    b = base if with_base else None
    multislerp(b, xs, compute, None)
    multislerp(b, xs[:3], compute, "F32", normalize=False)
    xs[3] = xs[3].clone()
    xs[3].view(-1)[4097] = float("inf")
    multislerp(b, xs, compute, "BF16")


@pytest.mark.parametrize("compute", COMPUTE)
@pytest.mark.parametrize("with_base", [True, False])
def test_multislerp_large_tensors_split_over_threads(monkeypatch, compute, with_base):
    """A large tensor's elementwise passes run in column ranges on two threads, their norms
    taken from the cached rows after, and the inputs' norms in two groups of inputs: the same
    bits (the threshold lowered to reach it)."""
    from mergestore.ops import lane16

    monkeypatch.setattr(lane16, "PARALLEL_MIN", 4096)  # lane_sphere asks lane16._splits
    monkeypatch.delenv("MERGESTORE_THREADS", raising=False)
    assert lane16._columns(77 * 136)[0].stop < 77 * 136  # two ranges
    base, xs = family(4, (77, 136), ["BF16", "BF16", "F32", "BF16", "BF16"], seed=11)
    b = base if with_base else None
    multislerp(b, xs, compute, None)
    multislerp(b, xs[:3], compute, "F32", normalize=False)
    nuslerp(b, xs, compute, "BF16")


@pytest.mark.parametrize("compute", COMPUTE)
@pytest.mark.parametrize("out_dtype", [None, "BF16", "F32"])
def test_multislerp_leaves_the_base_itself_out(monkeypatch, compute, out_dtype):
    """An input that is the base array itself (a frozen tensor) adds only zeros: the passes
    leave it out where the base is finite and keep it where the base holds an infinity (its
    deltas are NaN there), its weight still in the normalisation; the torch twin's bits in
    every case. Every input the base: nothing is left out (the mean is zero: the fallback)."""
    from mergestore.ops import lane_sphere

    seen = []
    real = lane_sphere._frozen_left_out

    def spy(args):
        live, kept = real(args)
        seen.append(live)
        return live, kept

    monkeypatch.setattr(lane_sphere, "_frozen_left_out", spy)
    base, xs = family(3, (37, 64), ["BF16", "BF16", "F32", "BF16"], seed=5)
    multislerp(base, [xs[0], base, xs[1], xs[2]], compute, out_dtype)
    assert seen[-1] == [0, 2, 3]
    multislerp(base, [base, xs[1]], compute, out_dtype, normalize=False)
    assert seen[-1] == [1]
    multislerp(base, [base, base], compute, out_dtype)
    assert seen[-1] == [0, 1]
    multislerp(base, [xs[0], base.clone(), xs[1]], compute, out_dtype)  # equal, not the same
    assert seen[-1] == [0, 1, 2]
    inf_base = base.clone()
    inf_base.view(-1)[5] = float("inf")
    multislerp(inf_base, [xs[0], inf_base, xs[1]], compute, out_dtype)
    assert seen[-1] == [0, 1, 2]
