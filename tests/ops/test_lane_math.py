"""ops.lane_math and csrc/sleef_f32.c give torch's bits for the sphere lanes' scalar steps, checked
against torch itself: acos/sin/cos of one-element tensors in fp32 (MKL's VML in torch's library)
and bf16 (SLEEF's u10 functions in C, then rounded), and the short fp32 norms and sums.
bench/check_trig.py checks every fp32 input of the C functions against SLEEF as torch ships it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mergestore import native
from mergestore.ops import lane_math as lm
from mergestore.ops import lane_sphere

pytestmark = pytest.mark.skipif(native.kernels is None, reason="C kernels not built")

OPS = [(lm.ACOS, torch.acos), (lm.SIN, torch.sin), (lm.COS, torch.cos)]
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16}


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit equality, any NaN equal to any NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


@pytest.mark.parametrize(("op", "fn"), OPS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sleef_on_every_16_bit_input(op, fn, dtype):
    """torch computes bf16 and fp16 acos/sin/cos as SLEEF's fp32 function, rounded: the C
    functions, rounded the same way, agree on every input they cover (sin/cos: |x| < 125)."""
    x16 = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x16.float().numpy()
    out = np.empty_like(x)
    missed = native.kernels.sleef_f32_array(op, x, out)
    covered = np.ones(x.shape, bool) if op == lm.ACOS else np.abs(x) < 125
    assert missed == int((~covered).sum())
    assert np.isnan(out[~covered]).all()
    ours = torch.from_numpy(out).to(dtype).float().numpy()
    assert _same(ours, fn(x16).float().numpy())[covered].all()


def _samples(op: int) -> np.ndarray:
    """The methods' arguments: cosines in [-1, 1] (densely near the ends), angles in [0, pi],
    their multiples by weights, and the edges of the covered range."""
    rng = np.random.default_rng(op)
    if op == lm.ACOS:
        near = 1 - np.geomspace(1e-7, 0.5, 500)
        parts = [rng.uniform(-1, 1, 3000), near, -near, [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-30]]
    else:
        parts = [
            rng.uniform(0, np.pi, 2000),
            rng.uniform(-130, 130, 1000),
            np.geomspace(1e-30, 1, 300),
            [0.0, -0.0, 124.99999, -124.99999, 125.0, np.pi / 2, np.pi],
        ]
    return np.concatenate([np.asarray(p, np.float64) for p in parts])


@pytest.mark.parametrize(("op", "fn"), OPS)
@pytest.mark.parametrize("compute", ["F32", "BF16"])
def test_func_gives_torchs_one_element_bits(op, fn, compute):
    dtype = DTYPES[compute]
    for v in _samples(op):
        x = torch.tensor([v], dtype=dtype)
        want = fn(x).float().item()
        try:
            got = lm.func(op, x.float().item(), compute)
        except lm.Untraced:
            assert compute == "BF16" and op != lm.ACOS and abs(x.float().item()) >= 125
            continue
        assert _same(np.float32(got), np.float32(want)), (op, compute, v, got, want)


def test_fp32_acos_dense_on_minus_one_to_one():
    """Every 257th fp32 value of [-1, 1] through lane_math's fp32 functions (MKL's, as called
    from ATen) and through torch."""
    vml = lm._load_vml()
    assert vml is not None, "torch's library has no MKL VML"
    pos = np.arange(0, 0x3F800001, 257, dtype=np.uint32).view(np.float32)
    x = np.concatenate([pos, -pos])
    for op, fn in OPS:
        out = np.empty_like(x)
        vml[op](x.size, x.ctypes.data, out.ctypes.data, lm._VML_MODE)
        assert _same(out, fn(torch.from_numpy(x)).numpy()).all()


def test_lane_math_does_not_import_torch():
    code = """
import sys
from mergestore.ops import lane_math as lm
assert 0.0 < lm.func(lm.ACOS, 0.25, "F32") < 2 and lm.func(lm.SIN, 0.5, "BF16") > 0
assert "torch" not in sys.modules, "torch was imported"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_norm32_and_sum32_are_torchs_over_stacked_values():
    """slerp's norm of the per-chunk norms and sum of the per-chunk dots: torch's reduction
    orders (eight lanes, a tail in fours then fused) for every length up to 80."""
    rng = np.random.default_rng(0)
    torch.set_num_threads(1)
    for trial in range(800):
        c = 1 + trial % 80
        v = (rng.standard_normal(c) * rng.uniform(0.01, 100)).astype(np.float32)
        stacked = torch.from_numpy(v).reshape(c, 1, 1)
        want = torch.linalg.vector_norm(stacked, dim=0).item()
        assert _same(np.float32(lm.norm32(list(map(float, v)))), np.float32(want)), c
        want = stacked.sum(dim=0).item()
        assert _same(np.float32(lane_sphere._sum32(list(map(float, v)))), np.float32(want)), c


@pytest.mark.parametrize("compute", ["F32", "BF16"])
def test_scalar_arithmetic_is_torchs(compute):
    """The scalar steps' arithmetic on one-element tensors of the compute dtype: tensor op
    tensor, tensor op Python float, sums of up to four values, rounding of Python floats."""
    dtype = DTYPES[compute]
    rng = np.random.default_rng(1)
    for _ in range(400):
        a, b, s = (float(v) for v in rng.standard_normal(3) * rng.uniform(0.01, 10, 3))
        ta, tb = torch.tensor([a], dtype=dtype), torch.tensor([b], dtype=dtype)
        assert lm.rounded(a, compute) == ta.item()
        va, vb = ta.item(), tb.item()
        for how, want in (("+", ta + tb), ("-", ta - tb), ("*", ta * tb), ("/", ta / tb)):
            assert _same(np.float32(lane_sphere._op(va, vb, how, compute)), want.float().numpy())
        # a Python scalar: a factor is taken in fp32 (nuslerp's (1 - t) * theta), a term is
        # rounded to the dtype first (multislerp's + eps)
        s32, sc = float(np.float32(s)), lm.rounded(s, compute)
        assert _same(np.float32(lane_sphere._op(s32, va, "*", compute)), (s * ta).float().numpy())
        assert _same(np.float32(lane_sphere._op(va, sc, "+", compute)), (ta + s).float().numpy())
        k = 1 + int(rng.integers(0, 4))
        vals = [lm.rounded(float(v), compute) for v in rng.standard_normal(k) * 3]
        want = torch.tensor(vals, dtype=dtype).sum().float().item()
        assert _same(np.float32(lane_sphere._sum(vals, compute)), np.float32(want))


def test_dot32_is_torch_dot_on_one_thread():
    """karcher's dot products: MKL's sdot on one MKL thread in the calling thread (a fresh one
    too, where torch has set nothing) equals torch.dot on one torch thread, for sizes whose
    sums MKL splits in blocks and threads (up to 3M elements) and unaligned starts."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for n in (8, 1000, 4099, 65536 + 24, 3 << 20):
            raw = rng.standard_normal(2 * n + 16).astype(np.float32)
            for x, y in ((raw[:n], raw[n : 2 * n]), (raw[1 : n + 1], raw[n + 3 : 2 * n + 3])):
                want = torch.dot(torch.from_numpy(x), torch.from_numpy(y)).item()

                def ours(x=x, y=y):
                    lm.one_blas_thread()
                    return lm.dot32(x, y)

                assert _same(np.float32(ours()), np.float32(want)), n
                with ThreadPoolExecutor(1) as pool:
                    assert _same(np.float32(pool.submit(ours).result()), np.float32(want)), n
    finally:
        torch.set_num_threads(threads)


def test_without_mkl_the_reasons_say_torch(monkeypatch):
    """A torch build without MKL (fp32 acos/sin/cos and dot elsewhere): fp32 tensors of these
    methods go through torch, and merge --json says why; bf16 ones stay on the lane (SLEEF)."""
    from mergestore.ops import get_method, lanes, validate_params

    def params(method, shared, per):
        return validate_params(get_method(method), shared, per, has_base=method != "karcher")

    cases = [
        ("slerp", *params("slerp", {"t": 0.5}, [{}])),
        ("nuslerp", *params("nuslerp", {}, [{"weight": 1.0}, {"weight": 2.0}])),
        ("multislerp", *params("multislerp", {}, [{"weight": 1.0}] * 3)),
        ("karcher", *params("karcher", {}, [{}] * 3)),
    ]
    for method, shared, per in cases:
        assert lanes.reason(method, "F32", shared, per, 64) is None
    monkeypatch.setattr(lm, "_load_vml", lambda: None)
    for method, shared, per in cases:
        assert "MKL" in lanes.reason(method, "F32", shared, per, 64), method
    assert lanes.reason("nuslerp", "BF16", cases[1][1], cases[1][2], 64) is None


def test_bf16_of_fp32_trig_is_mkls_rounded():
    """bf16 of torch's fp32 acos/sin/cos (MKL's VML), as a bf16 lane needs it (karcher's step):
    taken from the exact value wherever that is certain, from MKL's own function near a bf16
    rounding boundary and outside the plain range; MKL's bits rounded, either way."""
    rng = np.random.default_rng(5)
    n = 3000
    xs = (rng.uniform(-1, 1, n) * np.exp2(rng.integers(-17, 12, n))).astype(np.float32)
    xs = np.concatenate([xs, np.float32([0.0, 1e-30, 3e-39, 1.0, -1.0, 1024.5, 3e5])])
    # inputs whose sine or cosine is within an fp32 ulp or two of a bf16 rounding boundary
    mids = (np.arange(0x3F01, 0x3F7F, 2, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    near = {lm.SIN: np.arcsin(mids.astype(np.float64)), lm.COS: np.arccos(mids.astype(np.float64))}

    def check(op: int, values: np.ndarray) -> int:
        """How many values needed MKL."""
        uncertain = 0
        for v in values.astype(np.float32).tolist():
            if op == lm.ACOS and abs(v) > 1:
                continue
            want = lm.bf16(lm.func(op, v, "F32"))
            assert lm.bf16_of_func32(op, v) == want, (op, v)
            uncertain += lm._certain_bf16(op, v) is None
        return uncertain

    for op in (lm.SIN, lm.COS, lm.ACOS):
        assert check(op, xs) < len(xs) // 50  # MKL is rarely needed
    for op, values in near.items():
        assert check(op, values) > len(values) // 2  # but near a boundary it decides
