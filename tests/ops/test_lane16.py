"""ops.lane16: the torch-free kernels give the bits of the torch lane.

Each value torch computes outside the C kernels (weights rounded to bf16, the GTA divisor,
linear's weight sum) is recomputed here and compared with torch; the whole lane is compared
with merge_tensor on the native kernels and on torch alone.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import torch

from mergestore import native
from mergestore.ops import TensorContext, lane16, merge_tensor, validate_params
from mergestore.ops.registry import get_method

pytestmark = pytest.mark.needs(native.kernels is not None, "C kernels not built")
CTX = TensorContext(name="t", seed=0)


def _near_bf16_midpoints(rng: random.Random, n: int) -> list[float]:
    """Doubles a hair off the midpoint between two bf16 values (where rounding via fp32
    could go the other way)."""
    out = []
    while len(out) < n:
        bits = (rng.getrandbits(15) << 16) | 0x8000 | (rng.getrandbits(1) << 31)
        if ((bits >> 23) & 0xFF) in (0, 0xFF):
            continue
        f = struct.unpack("<f", struct.pack("<I", bits))[0]
        out.append(f + rng.choice([-1, 1]) * abs(f) * rng.choice([1e-12, 2.0**-30, 2.0**-25]))
    return out


def test_bf16_rounds_python_floats_as_torch_does() -> None:
    rng = random.Random(0)
    values = [rng.uniform(-4, 4) for _ in range(3000)] + _near_bf16_midpoints(rng, 3000)
    values += [0.3, 1e-8, -1e-8, 0.0, -0.0, 1 / 3, 65504.0, 3.0e38]
    want = torch.tensor(values, dtype=torch.bfloat16).float().tolist()
    assert lane16.bf16(values) == want


def test_fp32_weight_sum_is_torchs_up_to_the_limit() -> None:
    rng = random.Random(1)
    for n in range(1, lane16.LINEAR_MAX_INPUTS + 1):
        for _ in range(500):
            w = lane16.f32([rng.uniform(-1, 1) * 10 ** rng.uniform(-3, 1) for _ in range(n)])
            assert lane16.sum_f32(w) == float(torch.tensor(w).sum()), w
    # Past the limit torch's reduction no longer adds in order: the limit is needed.
    n = lane16.LINEAR_MAX_INPUTS + 1
    differs = 0
    for _ in range(500):
        w = lane16.f32([rng.uniform(-1, 1) * 10 ** rng.uniform(-3, 1) for _ in range(n)])
        differs += lane16.sum_f32(w) != float(torch.tensor(w).sum())
    assert differs > 0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 12])
def test_gta_divisor_is_torchs(n: int) -> None:
    rng = random.Random(n)
    cases = [[rng.uniform(-1, 1) for _ in range(n)] for _ in range(300)]
    cases.append([1e-8] + [0.0] * (n - 1))
    cases.append([0.5, -0.5] * (n // 2) + [0.0] * (n % 2))
    for weights in cases:
        t = torch.tensor(weights, dtype=torch.bfloat16)
        want = t.reshape(-1, 1).sum(dim=0)
        want[want.abs() < 1e-8] = 1
        assert lane16.gta_divisor(lane16.bf16(weights)) == float(want), weights


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def _lane(method: str, base, xs, shared, per_input, fp16: bool = False) -> np.ndarray:
    spec = get_method(method)
    s, p = validate_params(spec, shared, per_input, has_base=base is not None)
    lane = lane16.LANES[method]
    assert lane.accepts(s, p, fp16)
    like = base if base is not None else xs[0]
    out = np.empty(like.shape, dtype=np.uint16)
    return lane.merge(base, xs, s, p, out, fp16)


needs_f16 = pytest.mark.needs(lane16.has_fp16(), "no fp16 kernels in this build")
# bf16, and fp16 where the build has its kernels
FORMATS = [torch.bfloat16, pytest.param(torch.float16, marks=needs_f16)]


def _twins(monkeypatch, method, base, xs, shared, per_input):
    """merge_tensor on the native kernels, and on torch alone."""
    fast = merge_tensor(method, base, xs, shared, per_input, CTX)
    with monkeypatch.context() as m:
        m.setattr(native, "kernels", None)
        slow = merge_tensor(method, base, xs, shared, per_input, CTX)
    return fast, slow


@pytest.mark.parametrize("numel", [1, 1000, 70_001])
# 1 to 5 live inputs (the base itself is skipped): the fused kernel takes 1 to 4
@pytest.mark.parametrize("n", [1, 3, 4, 5, 6])
@pytest.mark.parametrize(
    "shared", [{}, {"normalize": True}, {"lambda": 0.7}, {"normalize": True, "lambda": 1.5}]
)
def test_task_arithmetic_lane_same_bits(monkeypatch, numel, n, shared) -> None:
    g = torch.Generator().manual_seed(numel + n)
    base = torch.randn(numel, generator=g).to(torch.bfloat16)
    xs = [(base.float() + 0.01 * torch.randn(numel, generator=g)).to(torch.bfloat16)]
    xs += [base] * (n > 1)  # an input that is the base tensor itself (the engine does this)
    xs += [torch.randn(numel, generator=g).to(torch.bfloat16) for _ in range(n - len(xs))]
    per_input = [{"weight": w} for w in [0.3, -0.45, 1.2, 0.05, 0.6, -0.2][:n]]
    fast, slow = _twins(monkeypatch, "task_arithmetic", base, xs, shared, per_input)
    b = _bits(base)
    ours = _lane(
        "task_arithmetic", b, [b if x is base else _bits(x) for x in xs], shared, per_input
    )
    assert np.array_equal(ours, _bits(fast))
    assert np.array_equal(ours, _bits(slow))


def test_task_arithmetic_lane_skips_the_base_itself() -> None:
    base = torch.randn(4096).to(torch.bfloat16)
    b = _bits(base)
    nan_like = np.full_like(b, 0x7FC0)  # would poison the sum if it were read
    same = _lane("task_arithmetic", b, [b, b], {}, [{"weight": 0.3}, {"weight": 0.3}])
    assert np.array_equal(same, b)
    assert not np.array_equal(
        _lane("task_arithmetic", b, [b, nan_like], {}, [{"weight": 0.3}, {"weight": 0.3}]), b
    )


@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("shared", [{}, {"normalize": True, "lambda": 0.7}])
def test_task_arithmetic_leaves_the_base_out_span_by_span(monkeypatch, dtype, shared) -> None:
    """The C kernel leaves an input that is the base array itself out of each span of 4096
    elements whose base is finite, and takes every input in a span with an infinity (its
    deltas there are NaN in torch): a tensor of four spans, infinities in the second and the
    last, the base given twice among three inputs, has torch's bits in every span."""
    numel = 3 * 4096 + 77
    g = torch.Generator().manual_seed(9)
    base = torch.randn(numel, generator=g).to(dtype)
    base[5000], base[3 * 4096 + 10] = float("inf"), float("-inf")
    expert = (base.float() + 0.02 * torch.randn(numel, generator=g)).to(dtype)
    expert[5000], expert[3 * 4096 + 10] = 1.5, float("-inf")
    xs = [base, expert, base]
    per_input = [{"weight": w} for w in (0.4, -0.3, 0.9)]
    fast, slow = _twins(monkeypatch, "task_arithmetic", base, xs, shared, per_input)
    b = _bits(base)
    fp16 = dtype == torch.float16
    ours = _lane(
        "task_arithmetic", b, [b if x is base else _bits(x) for x in xs], shared, per_input, fp16
    )
    # every input read everywhere: copies of the base, which the kernel cannot tell from it
    copies = [b.copy() if x is base else _bits(x) for x in xs]
    assert np.array_equal(ours, _lane("task_arithmetic", b, copies, shared, per_input, fp16))
    assert np.array_equal(ours, _bits(fast))
    # torch's values, its NaNs where the base is infinite (torch's NaN bits are its own)
    nan = np.isnan(slow.float().numpy())
    assert nan[5000] and nan[3 * 4096 + 10] and not nan[:4096].any()
    assert np.array_equal(np.isnan(fast.float().numpy()), nan)
    assert np.array_equal(ours[~nan], _bits(slow)[~nan])


@pytest.mark.parametrize("numel", [1, 1000, 70_001])
@pytest.mark.parametrize("n", [1, 2, 3, 4])  # each count of the fused kernel
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_lane_same_bits(monkeypatch, numel, n, normalize) -> None:
    g = torch.Generator().manual_seed(numel * 7 + n)
    xs = [torch.randn(numel, generator=g).to(torch.bfloat16) for _ in range(n)]
    per_input = [{"weight": w} for w in [0.3, 0.45, -0.2, 0.61][:n]]
    shared = {"normalize": normalize}
    fast, slow = _twins(monkeypatch, "linear", None, xs, shared, per_input)
    ours = _lane("linear", None, [_bits(x) for x in xs], shared, per_input)
    assert np.array_equal(ours, _bits(fast))
    assert np.array_equal(ours, _bits(slow))


@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("numel", [7, 5000, 70_001])
@pytest.mark.parametrize(
    ("method", "per", "shared"),
    [
        ("ties", {"density": 0.5}, {}),
        ("ties", {"density": 0.2}, {"normalize": False, "lambda": 1.3}),
        ("breadcrumbs", {"density": 0.8, "gamma": 0.05}, {}),
        ("breadcrumbs_ties", {"density": 0.7, "gamma": 0.1}, {"lambda": 0.8}),
    ],
)
def test_rank_cut_lanes_same_bits(monkeypatch, dtype, numel, method, per, shared) -> None:
    fp16 = dtype == torch.float16
    g = torch.Generator().manual_seed(numel + 11 * fp16)
    base = torch.randn(numel, generator=g).to(dtype)
    # Coarse deltas (a few units of the format's step near 1): many magnitudes tie at the
    # cut, so the tie rule is exercised too.
    steps = torch.randint(-3, 4, (numel,), generator=g) / (256 if fp16 else 64)
    xs = [(base.float() + steps).to(dtype)]
    xs.append(base)  # the base tensor itself, as the engine passes an input equal to it
    xs.append((base.float() + 0.02 * torch.randn(numel, generator=g)).to(dtype))
    per_input = [{"weight": w, **per} for w in (0.5, 0.3, -0.4)]
    fast, slow = _twins(monkeypatch, method, base, xs, shared, per_input)
    b = _bits(base)
    rows = [b if x is base else _bits(x) for x in xs]
    ours = _lane(method, b, rows, shared, per_input, fp16)
    assert np.array_equal(ours, _bits(fast))
    assert np.array_equal(ours, _bits(slow))


@pytest.mark.parametrize(
    ("method", "per", "shared"),
    [
        ("ties", {"density": 1.0}, {}),
        ("ties", {"density": 0.5}, {"rescale": True}),
        ("breadcrumbs", {"density": 0.0}, {}),
    ],
)
def test_rank_cut_lanes_decline_unstreamed_cuts(method, per, shared) -> None:
    spec = get_method(method)
    s, p = validate_params(spec, shared, [{"weight": 0.5, **per}], has_base=True)
    assert not lane16.LANES[method].accepts(s, p)


def test_linear_lane_declines_many_normalized_inputs() -> None:
    lane = lane16.LANES["linear"]
    many = [{"weight": 0.2}] * (lane16.LINEAR_MAX_INPUTS + 1)
    assert not lane.accepts({"normalize": True}, many)
    assert lane.accepts({"normalize": False}, many)


def test_large_tensor_split_over_two_columns(monkeypatch) -> None:
    numel = lane16.PARALLEL_MIN + 3
    g = torch.Generator().manual_seed(5)
    base = torch.randn(numel, generator=g).to(torch.bfloat16)
    xs = [torch.randn(numel, generator=g).to(torch.bfloat16) for _ in range(2)]
    per_input = [{"weight": 0.3}, {"weight": 0.7}]
    with monkeypatch.context() as m:
        m.setattr(native, "kernels", None)
        slow = merge_tensor("task_arithmetic", base, xs, {}, per_input, CTX)
    ours = _lane("task_arithmetic", _bits(base), [_bits(x) for x in xs], {}, per_input)
    assert np.array_equal(ours, _bits(slow))


@pytest.mark.parametrize("shape", [(), (0,), (0, 4), (1,)])
@pytest.mark.parametrize(
    ("method", "per", "has_base"),
    [
        ("task_arithmetic", {}, True),
        ("ties", {"density": 0.5}, True),
        ("breadcrumbs", {"density": 0.5, "gamma": 0.1}, True),
        ("linear", {}, False),
    ],
)
def test_scalar_and_empty_tensors(monkeypatch, shape, method, per, has_base) -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(shape, generator=g).to(torch.bfloat16) if has_base else None
    xs = [torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(2)]
    per_input = [{"weight": w, **per} for w in (0.6, 0.3)]
    with monkeypatch.context() as m:
        m.setattr(native, "kernels", None)
        slow = merge_tensor(method, base, xs, {}, per_input, CTX)
    b = _bits(base) if base is not None else None
    ours = _lane(method, b, [_bits(x) for x in xs], {}, per_input)
    assert ours.shape == tuple(slow.shape)
    assert np.array_equal(ours, _bits(slow))


# -- fp16 ----------------------------------------------------------------------------------


def _near_f16_midpoints(rng: random.Random, n: int) -> list[float]:
    out = []
    while len(out) < n:
        h = rng.getrandbits(15)
        if (h >> 10) in (0, 0x1F) or (h & 0x3FF) == 0x3FF:
            continue
        lo, hi = np.array([h, h + 1], dtype=np.uint16).view(np.float16).astype(np.float64)
        mid = (lo + hi) / 2
        out.append(mid + rng.choice([-1, 1]) * mid * rng.choice([1e-12, 2.0**-30, 2.0**-25]))
    return out


def test_f16_rounds_python_floats_as_torch_does() -> None:
    rng = random.Random(2)
    values = [rng.uniform(-4, 4) for _ in range(3000)] + _near_f16_midpoints(rng, 3000)
    values += [0.3, 1e-8, 6e-8, -0.0, 65504.0, 65520.0, 1e5]
    want = torch.tensor(values, dtype=torch.float16).float().tolist()
    assert lane16.f16(values) == want


@pytest.mark.parametrize("n", [1, 2, 4, 7, 12])
def test_f16_gta_divisor_is_torchs(n: int) -> None:
    rng = random.Random(100 + n)
    cases = [[rng.uniform(-1, 1) for _ in range(n)] for _ in range(300)]
    cases.append([0.0] * n)  # fp16 rounds 1e-8 to 0: a zero divisor stays zero
    cases.append([1e-7] + [0.0] * (n - 1))
    for weights in cases:
        t = torch.tensor(weights, dtype=torch.float16)
        want = t.reshape(-1, 1).sum(dim=0)
        want[want.abs() < 1e-8] = 1
        assert lane16.gta_divisor(lane16.f16(weights), fp16=True) == float(want), weights


@needs_f16
@pytest.mark.parametrize("numel", [1, 1000, 70_001])
@pytest.mark.parametrize(
    ("method", "shared", "has_base"),
    [
        ("task_arithmetic", {}, True),
        ("task_arithmetic", {"normalize": True, "lambda": 0.7}, True),
        ("linear", {}, False),
        ("linear", {"normalize": False}, False),
    ],
)
def test_f16_lanes_same_bits(monkeypatch, numel, method, shared, has_base) -> None:
    g = torch.Generator().manual_seed(numel + 7)
    base = torch.randn(numel, generator=g).to(torch.float16)
    xs = [(base.float() + 0.01 * torch.randn(numel, generator=g)).to(torch.float16)]
    xs += [base, torch.randn(numel, generator=g).to(torch.float16)]
    per_input = [{"weight": w} for w in (0.3, -0.45, 0.6)]
    b = base if has_base else None
    fast, slow = _twins(monkeypatch, method, b, xs, shared, per_input)
    bb = _bits(base)
    rows = [bb if x is base else _bits(x) for x in xs]
    ours = _lane(method, bb if has_base else None, rows, shared, per_input, fp16=True)
    assert np.array_equal(ours, _bits(fast))
    assert np.array_equal(ours, _bits(slow))
