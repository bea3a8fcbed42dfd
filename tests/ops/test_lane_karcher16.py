"""karcher in bf16 compute on the lane (ops.lane_karcher16, csrc/merge_karcher16.c) gives the
torch path's bits.

Each case merges the same tensors twice: with ops.lanes.merge on numpy arrays, and with
ops.merge_tensor on torch tensors with the C kernels off (ops/karcher.py: mergekit 0.1.5's
arithmetic), torch on one thread as the engine runs it, for inputs in bf16, fp16 and fp32
(mixed), bf16 compute, and every out_dtype. The lane takes torch.dot's order: ATen's kernel in
its AVX2 form (checked against that form written out here), and above 4096 elements on AVX-512
CPUs oneDNN's matmul where it runs on AMX or with AVX-512 BF16 (ops/onednn_dot.py; checked
against torch.dot itself, the second by running this module again with oneDNN capped to it);
where oneDNN runs another kernel the lane refuses tensors of more than 4096 elements (checked).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
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
    lane_karcher16,
    lanes,
    merge_tensor,
    onednn_dot,
)
from mergestore.ops import validate_params as validate
from mergestore.ops.lane_math import bf16

pytestmark = pytest.mark.needs(native.kernels is not None, "C kernels not built")

CTX = TensorContext("model.layers.1.mlp.gate_proj.weight", seed=0)
AVX2 = lane_karcher16.torch_runs_avx2()
ATEN = AVX2 or lane_karcher16.torch_runs_avx512()  # the lane knows ATen's bf16 dot order here
KIND = onednn_dot.kind()  # how torch.dot sums more than 4096 bf16 elements here
ONEDNN_MIN = onednn_dot.ONEDNN_MIN
CAPPED = "MERGESTORE_TEST_ONEDNN_CAPPED"  # set when this module runs again, capped


def on_lane(numel: int) -> bool:
    """Where the lane must take a bf16 tensor of numel elements (a multiple of 8)."""
    return ATEN and (numel <= ONEDNN_MIN or KIND != "unknown")


def models(n, shape, dtypes, seed, spread=1.0):
    """n models near a common point (karcher takes no base), in the given dtypes."""
    g = torch.Generator().manual_seed(seed)
    center = 0.02 * torch.randn(shape, generator=g)
    xs = [center + spread * 0.01 * torch.randn(shape, generator=g) for _ in range(n)]
    return [x.to(TORCH[t]) for x, t in zip(xs, dtypes, strict=False)]


def check(xs, out_dtype, shared_in=None):
    shared_in = shared_in or {}
    shared, per = validate(get_method("karcher"), shared_in, [{}] * len(xs), has_base=False)
    why = lanes.reason("karcher", "BF16", shared, per, xs[0].numel())
    if not on_lane(xs[0].numel()):  # a dot the lane does not know: it refuses, torch runs
        assert why is not None and "dot" in why
        return
    assert why is None
    kernels, native.kernels, threads = native.kernels, None, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = merge_tensor(
            "karcher", None, xs, shared_in, [{}] * len(xs), CTX,
            dtype=torch.bfloat16, out_dtype=TORCH[out_dtype] if out_dtype else None,
        )  # fmt: skip
    finally:
        native.kernels = kernels
        torch.set_num_threads(threads)
    got = lanes.merge("karcher", None, [to_lane(x) for x in xs], shared, per, "BF16", out_dtype)
    got_t = from_lane(got).reshape(want.shape)
    assert same_bits(got_t, want), (out_dtype, (got_t != want).sum())


@pytest.mark.parametrize("out_dtype", [None, *NAMES])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_karcher_bf16_every_dtype_mix(out_dtype, k):
    dtypes = ["BF16", "F32", "F16", "BF16", "BF16"]
    check(models(k, (37, 64), dtypes, seed=k), out_dtype)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 90),
    cols=st.sampled_from([8, 24, 64, 72, 136]),
    k=st.integers(2, 6),
    spread=st.sampled_from([0.0, 0.01, 1.0, 100.0]),
    max_iter=st.integers(1, 12),
    seed=st.integers(0, 1000),
)
def test_karcher_bf16_random(rows, cols, k, spread, max_iter, seed):
    """Any size of a multiple of 8 (the dot's block, vector and scalar tails), inputs equal
    (every angle under tol: no step) or far apart, any number of iterations."""
    check(models(k, (rows, cols), ["BF16"] * k, seed, spread), None, {"max_iter": max_iter})


def test_karcher_bf16_opposite_inputs():
    x = models(1, (16, 32), ["BF16"], seed=3)[0]
    check([x, -x, x], "F32")


def _dot_avx2(x: np.ndarray, y: np.ndarray) -> float:
    """torch.dot of two bf16 vectors in its AVX2 form, written out (csrc/merge_karcher16.c)."""
    n, f = x.size, np.float32
    xs, ys = x.astype(np.float32), y.astype(np.float32)
    acc = np.zeros((8, 8), np.float32)
    blocks, vecs = n & ~63, n & ~15
    for j in range(0, blocks, 64):
        for r in range(8):
            for lane in range(8):
                e = j + 8 * r + lane
                acc[r, lane] = f(acc[r, lane] + xs[e] * ys[e])  # the product is exact
    for off in (4, 2, 1):
        for r in range(off):
            acc[r] = acc[r] + acc[r + off]

    def reduce8(v):
        return f((f(v[0] + v[4]) + f(v[2] + v[6])) + (f(v[1] + v[5]) + f(v[3] + v[7])))

    total = reduce8(acc[0])
    tail = np.zeros(8, np.float32)
    for j in range(blocks, vecs, 16):
        for half in (0, 8):
            for lane in range(8):
                tail[lane] = f(tail[lane] + xs[j + half + lane] * ys[j + half + lane])
    total = f(total + reduce8(tail))
    for j in range(vecs, n):
        total = f(total + f(xs[j] * ys[j]))
    return float(total)


def _widen(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _cancelling(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors whose dot product depends on the order of its sum: large values that cancel
    between small ones."""
    a = torch.randn(n, generator=g)
    m = (n // 8) // 2 * 2
    if m:
        big = torch.exp2(torch.randint(10, 22, (m // 2,), generator=g).float())
        a[torch.randperm(n, generator=g)[:m]] = torch.cat([big, -big])[
            torch.randperm(m, generator=g)
        ]
    b = torch.ones(n) if n % 2 else torch.rand(n, generator=g) + 0.5
    return a.bfloat16(), b.bfloat16()


def test_karcher16_dot_order():
    """The kernel's sum is the AVX2 form above, to the bit, for every kind of tail; and, where
    torch runs that form, torch.dot's own result (which the naive order misses)."""
    g = torch.Generator().manual_seed(7)
    naive_misses = 0
    sizes = torch.randint(140, 5000, (60,), generator=g).tolist()
    for n in [*range(1, 140), 255, 256, 257, 1000, 4099, *sizes]:
        a, b = _cancelling(n, g)
        x, y = to_lane(a), to_lane(b)
        got = native.kernels.karcher16_dots(x.copy(), None, [y])[0]
        want = _dot_avx2(_widen(x), _widen(y))
        assert np.float32(got).view(np.uint32) == np.float32(want).view(np.uint32), n
        if ATEN and (n <= ONEDNN_MIN or KIND == "aten"):  # ATen's dot
            torch_dot = torch.dot(a, b).float().item()
            assert bf16(got) == torch_dot or (np.isnan(got) and np.isnan(torch_dot)), n
            naive_misses += bf16(_naive(a, b)) != torch_dot
    assert not ATEN or naive_misses > 20  # the data tell orders apart


def _naive(a: torch.Tensor, b: torch.Tensor) -> float:
    """The products summed one by one in fp32."""
    return float(np.cumsum((a.float() * b.float()).numpy(), dtype=np.float32)[-1])


# Sizes whose oneDNN sums differ in shape at 2 MiB of L2 per core: one chunk (with tails of 8,
# 24), the last single chunk, two chunks from a tail, powers of two at the limit, 3-4 chunks.
AMX_SIZES = [4104, 4120, 5000, 65544, 262112, 262120, 262144, 393216, 524288, 600008, 786432]


@pytest.mark.skipif(
    KIND not in onednn_dot.ONEDNN_KINDS, reason="torch.dot of bf16 here is no oneDNN kernel known"
)
def test_karcher16_onednn_dot_is_torch_dot():
    """karcher16_dots_onednn gives torch.dot's bits (oneDNN's chunks, the instruction's
    rounding) at every kind of size, for inputs evenly spaced in memory (one tile) or not (a
    tile each), with the mean's division first; a plain fp32 sum and one chunk both miss. torch
    on one thread, as the engine runs it (with more, oneDNN's AVX-512 BF16 kernel splits a
    power-of-two n over threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _onednn_dots_match_torch()
    finally:
        torch.set_num_threads(threads)


def _onednn_dots_match_torch():
    g = torch.Generator().manual_seed(11)
    kernels, misses, whole_misses = native.kernels, 0, 0
    for n in AMX_SIZES:
        a, b = _cancelling(n, g)
        perm, half = torch.randperm(n, generator=g), torch.randn(n // 2, generator=g)
        a = torch.cat([half, half])[perm].bfloat16()  # with c below: exact sum 0, all rounding
        sign = torch.where(perm < n // 2, 1, -1)
        c = torch.cat([torch.randn(n // 2, generator=g)] * 2)[perm] * sign
        us = torch.stack([b, -3 * b, c.bfloat16(), (2 * c).bfloat16()])
        rows = list(np.ascontiguousarray(np.stack([to_lane(u) for u in us])))
        chunk = onednn_dot.chunk(KIND, n)

        def dots(mean, d, units, chunk=chunk):
            return kernels.karcher16_dots_onednn(KIND, mean, d, units, chunk)

        got = dots(to_lane(a).copy(), None, rows)
        apart = dots(to_lane(a).copy(), None, [r.copy() for r in rows])
        whole = dots(to_lane(a).copy(), None, rows, (n + 31) // 32 * 32)
        assert np.array_equal(np.float32(got), np.float32(apart)), n
        for u, v, w in zip(us, got, whole, strict=True):
            want = torch.dot(a, u).float().item()
            assert bf16(v) == want, (n, chunk, v, want)
            misses += bf16(_naive(a, u)) != want
            whole_misses += chunk < n and bf16(w) != want
        mean, scaled = to_lane(a * 3).copy(), np.empty(n, np.uint16)
        kernels.karcher16_scale(scaled, mean, 3.0)
        divided = dots(mean, 3.0, rows)
        assert np.array_equal(mean, scaled)
        assert divided == dots(scaled, None, rows)
    assert misses > 5 and whole_misses > 5  # the data tell orders and chunks apart


def test_onednn_chunk_rule():
    """onednn_dot.chunk gives the chunks measured on an Intel Xeon with 2 MiB of L2 per core
    (torch 2.13, oneDNN 3.12): the chunk size with which the AMX kernel gave torch.dot's bits on
    order-sensitive data, where no other size among n / c (c up to 128) and powers of two did;
    512 at every size for the AVX-512 BF16 kernel (the same search on 11 sizes)."""
    measured = {
        4104: 4104, 262112: 262112, 262144: 262144, 262176: 262176, 300000: 300000,
        393216: 196608, 393248: 393248, 458752: 229376, 491520: 245760, 524256: 524256,
        524288: 524288, 524320: 174784, 600000: 200000, 655360: 327680, 700000: 233344,
        720896: 360448, 786400: 262144, 786432: 196608, 786464: 196640, 917504: 229376,
        1000000: 250016, 1048544: 262144, 1048576: 262144, 1310720: 262144, 1572864: 262144,
        2097152: 262144, 2359296: 262144, 13762560: 259680, 32768000: 262144,
    }  # fmt: skip
    for n, chunk in measured.items():
        assert min(onednn_dot.chunk("amx", n, l2=2 << 20), n) == chunk, n  # n: one chunk
        assert onednn_dot.chunk("avx512_bf16", n) == 512


def test_karcher_bf16_reasons(monkeypatch):
    shared, per = validate(get_method("karcher"), {}, [{}] * 3, has_base=False)
    assert "multiple of 8" in lanes.reason("karcher", "BF16", shared, per, 60)
    assert "F16 compute" in lanes.reason("karcher", "F16", shared, per, 64)
    capability = (lane_karcher16.torch_runs_avx2, lane_karcher16.torch_runs_avx512)
    for f in capability:
        f.cache_clear()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    try:
        assert "AVX2" in lanes.reason("karcher", "BF16", shared, per, 64)
    finally:
        monkeypatch.delenv("ATEN_CPU_CAPABILITY")
        for f in capability:
            f.cache_clear()
    assert (lanes.reason("karcher", "BF16", shared, per, 64) is None) == ATEN
    assert (lanes.reason("karcher", "BF16", shared, per, 8192) is None) == on_lane(8192)
    onednn_dot.verdict.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    try:  # oneDNN then runs another kernel on AVX-512 CPUs: the lane keeps ATen's dots only
        why = lanes.reason("karcher", "BF16", shared, per, 8192)
        assert (why is None) == (ATEN and onednn_dot.kind() == "aten")
        assert why is None or "ONEDNN_MAX_CPU_ISA" in why or not ATEN
        assert (lanes.reason("karcher", "BF16", shared, per, 4096) is None) == ATEN
    finally:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        onednn_dot.verdict.cache_clear()


def test_karcher16_division_is_torch_division():
    """Every bf16 value divided by divisors of every kind (zero, infinities, NaN, subnormal,
    huge): torch's bits, the fp32 divisor kept as a second operand keeps it."""
    x = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(200, generator=g) * torch.exp2(torch.randint(-60, 60, (200,), generator=g))
    special = [1.0, 2.0, 3.0, 0.1, -2.5, 1e-30, 1e30, 3e38, 1.2e-38, 1e-45, 0.0, -0.0]
    special += [float("inf"), float("-inf"), float("nan")]
    for d in [*special, *spread.tolist()]:
        want = x / torch.tensor(d, dtype=torch.float32)  # a second operand keeps its fp32 value
        got = np.empty(65536, dtype=np.uint16)
        native.kernels.karcher16_scale(got, to_lane(x), float(np.float32(d)))
        assert same_bits(from_lane(got), want), d


def test_karcher_bf16_large_tensors_split_over_threads(monkeypatch):
    """A large tensor's elementwise passes run in two column ranges on two threads, each norm
    taken whole after them, the inputs' norms and the dot products in two groups of inputs:
    the same bits (the threshold lowered to reach it). Iterations that step (far inputs) and
    that stop at once (equal inputs) both run."""
    from mergestore.ops import lane16

    monkeypatch.setattr(lane16, "PARALLEL_MIN", 4096)
    monkeypatch.delenv("MERGESTORE_THREADS", raising=False)
    assert len(lane16._columns(77 * 136)) == 2
    check(models(4, (77, 136), ["BF16", "F32", "BF16", "BF16"], seed=5), None)
    check(models(5, (77, 136), ["BF16"] * 5, seed=6, spread=100.0), "F32", {"max_iter": 12})
    check(models(3, (77, 136), ["BF16", "F16", "BF16"], seed=8, spread=0.0), "F16")
    xs = models(4, (77, 136), ["BF16"] * 4, seed=9, spread=1.0)
    xs[2] = xs[2].clone()
    xs[2].view(-1)[5000] = float("inf")  # an infinity in the second column range
    check(xs, "BF16")


def test_karcher_bf16_tensors_of_several_onednn_chunks():
    """A tensor whose dot products oneDNN sums in three chunks (at 2 MiB of L2 per core)."""
    check(models(4, (600, 1000), ["BF16", "F32", "BF16", "BF16"], seed=12), None)


def test_karcher_bf16_steps_without_loading_torchs_library():
    """The step's cos and sin come from their exact values (lane_math.bf16_of_func32): a merge
    whose iterations step loads neither torch nor its library (a 0.3-0.5 s dlopen)."""
    code = """
import sys
import subprocess
import sys

import numpy as np
from mergestore.ops import get_method, lanes, validate_params
from mergestore.ops import lane_math as lm
steps = []
exact = lm.bf16_of_func32
lm.bf16_of_func32 = lambda op, x: steps.append(x) or exact(op, x)
rng = np.random.default_rng(3)
xs = [(rng.standard_normal(4096).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
      for _ in range(3)]
shared, per = validate_params(get_method("karcher"), {}, [{}] * 3, has_base=False)
why = lanes.reason("karcher", "BF16", shared, per, 4096)
if why is not None:  # no known bf16 dot here: the lane refuses (and so loads nothing)
    assert "dot" in why, why
    sys.exit(0)
out = lanes.merge("karcher", None, xs, shared, per, "BF16", None)
assert out.dtype == np.uint16 and out.size == 4096
assert steps, "no iteration stepped"
assert not lm._vml_tried, "torch's library was loaded"
assert "torch" not in sys.modules, "torch was imported"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(
    CAPPED in os.environ
    or native.kernels is None
    or "avx512_bf16" not in native.kernels.onednn_dot_kinds()
    or not lane_karcher16.torch_runs_avx512(),
    reason="no AVX-512 BF16 here (or already the capped run)",
)
def test_this_module_again_with_onednn_on_avx512_bf16():
    """On a CPU with AMX, oneDNN's AVX-512 BF16 kernel (AMD Zen 4's, Intel Cooper Lake's) runs
    only with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, set before torch starts: in processes started
    so, the lane takes that kernel (its once-per-process check against torch.dot passes), and
    this module's kernel test and karcher merges against torch pass."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", CAPPED: "1"}
    code = "from mergestore.ops import onednn_dot as o; print(o.kind(), o.why())"
    kind = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert kind.stdout.split()[:1] == ["avx512_bf16"], kind.stdout + kind.stderr
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
