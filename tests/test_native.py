"""The C kernels (mergestore/csrc/) give the bits of their torch/numpy twins.

Each test runs the same call twice, with the kernels and with ``native.kernels = None`` (what
a machine without a compiler runs), and compares bit for bit (NaN payloads aside, see
fixtures/bits.py). Skipped where the extension was not built.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fixtures.bits import same_bits
from mergestore import native
from mergestore.ops import TensorContext, merge_tensor

pytestmark = pytest.mark.needs(native.kernels is not None, "C kernels not built")

CTX = TensorContext("model.layers.2.self_attn.q_proj.weight", seed=11)


def _twice(monkeypatch: pytest.MonkeyPatch, fn):
    fast = fn()
    with monkeypatch.context() as m:
        m.setattr(native, "kernels", None)
        slow = fn()
    return fast, slow


# Per format: a delta below the smallest normal, and a value whose sums leave the range.
_TINY_HUGE = {torch.bfloat16: (1e-38, 3e38), torch.float16: (1e-7, 6e4)}


def _family(n_inputs: int, numel: int, kind: str, seed: int = 0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    base = (0.02 * torch.randn(numel, generator=g)).to(dtype)
    xs = []
    for i in range(n_inputs):
        x = (base.float() + 0.002 * (i + 1) * torch.randn(numel, generator=g)).to(dtype)
        x[i::5] = base[i::5]  # unchanged elements: zero deltas, ties at the cut
        xs.append(x)
    if kind == "specials":
        xs[0][7], xs[-1][9], xs[0][13] = float("nan"), float("inf"), -float("inf")
        base[17] = -0.0
        xs[0][17] = 0.0
    if kind == "nan_payloads":  # signalling and all-ones bf16 NaNs, in the base and in inputs
        assert dtype == torch.bfloat16
        bits = torch.tensor([0x7F81, -1, 0x7FFF, -129], dtype=torch.int16)  # -1 = 0xFFFF
        xs[0].view(torch.int16)[20:24] = bits
        base.view(torch.int16)[30:34] = bits
    if kind == "tiny":  # subnormal and huge deltas: rounding at both ends of the range
        tiny, huge = _TINY_HUGE[dtype]
        xs[0][:64] = base[:64] + torch.tensor(tiny, dtype=dtype)
        xs[-1][64:128] = torch.tensor(huge, dtype=dtype)
    return base, xs


METHODS = [
    ("task_arithmetic", {"weight": 0.3}, {}),
    ("task_arithmetic", {"weight": 0.7}, {"normalize": True, "lambda": 0.6}),
    ("ties", {"density": 0.5, "weight": 0.4}, {}),
    ("ties", {"density": 0.2, "weight": 1.3}, {"normalize": False, "lambda": 1.5}),
    ("breadcrumbs", {"density": 0.6, "gamma": 0.05, "weight": 0.5}, {}),
    ("breadcrumbs_ties", {"density": 0.9, "gamma": 0.01, "weight": 0.5}, {}),
    ("dare_linear", {"density": 0.5, "weight": 0.4}, {}),
    ("dare_ties", {"density": 0.5, "weight": 0.4}, {}),
    ("della", {"density": 0.5, "epsilon": 0.1, "weight": 0.4}, {}),
    ("della_linear", {"density": 0.3, "epsilon": 0.2, "weight": 0.6}, {"rescale": False}),
]


@pytest.mark.parametrize("method,per,shared", METHODS)
@pytest.mark.parametrize("kind", ["dense", "specials", "tiny", "nan_payloads"])
@pytest.mark.parametrize("n_inputs", [1, 4])
@pytest.mark.parametrize("numel", [1000, 300_001])
def test_gta_methods_same_bits(monkeypatch, method, per, shared, kind, n_inputs, numel) -> None:
    base, xs = _family(n_inputs, numel, kind)
    # per-input weights differ, so input order matters in every sum
    per_input = [dict(per, weight=per["weight"] * (1 + 0.25 * i)) for i in range(n_inputs)]
    fast, slow = _twice(monkeypatch, lambda: merge_tensor(method, base, xs, shared, per_input, CTX))
    assert same_bits(fast, slow)


@pytest.mark.parametrize("sparsifier,gamma", [("magnitude", 0.0), ("magnitude_outliers", 0.05)])
@pytest.mark.parametrize("density", [0.001, 0.3, 0.5, 0.999])
@pytest.mark.parametrize("kind", ["dense", "specials"])
def test_rank_cuts_same_bits(monkeypatch, sparsifier, gamma, density, kind) -> None:
    from mergestore.ops import sparsify

    base, (x,) = _family(1, 70_001, kind, seed=5)

    def run():
        out = torch.empty_like(base)
        sparsify.delta_into(out, x, base, sparsifier, density, gamma)
        return out

    fast, slow = _twice(monkeypatch, run)
    assert same_bits(fast, slow)
    if kind == "dense" and sparsifier == "magnitude":
        k = max(1, int(density * base.numel()))
        assert int((fast != 0).sum()) == min(k, int(((x - base) != 0).sum()))


def test_all_ties_at_the_cut(monkeypatch) -> None:
    """Every magnitude equal: the cut keeps the lowest flat indices."""
    from mergestore.ops import sparsify

    base = torch.zeros(10_000, dtype=torch.bfloat16)
    x = torch.full_like(base, 0.5)
    x[::2] = -0.5

    def run():
        out = torch.empty_like(base)
        sparsify.delta_into(out, x, base, "magnitude", 0.3, 0.0)
        return out

    fast, slow = _twice(monkeypatch, run)
    assert same_bits(fast, slow)
    assert torch.equal((fast != 0).nonzero().flatten(), torch.arange(3000))


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64"])
@pytest.mark.parametrize("numel", [0, 1, 7, 8, 4099])
def test_delta_stats_match_fp64(dtype, numel) -> None:
    from mergestore.formats.safetensors import torch_dtype

    g = torch.Generator().manual_seed(numel)
    a = torch.randn(numel, generator=g, dtype=torch.float64).to(torch_dtype(dtype))
    b = (a.double() + 0.01 * torch.randn(numel, generator=g, dtype=torch.float64)).to(a.dtype)
    if numel > 4:
        b[:3] = a[:3]
        a[3] = -0.0
        b[3] = 0.0  # equal values, different bits: not counted as changed
    dd, l1, mx, bb, aa, nnz = native.kernels.delta_stats(
        b.numpy().tobytes() if dtype != "BF16" else b.view(torch.int16).numpy().tobytes(),
        a.numpy().tobytes() if dtype != "BF16" else a.view(torch.int16).numpy().tobytes(),
        dtype,
    )
    d = b.double() - a.double()
    assert math.isclose(dd, float((d * d).sum()), rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(l1, float(d.abs().sum()), rel_tol=1e-12, abs_tol=1e-300)
    assert mx == (float(d.abs().max()) if numel else 0.0)
    assert math.isclose(bb, float((b.double() ** 2).sum()), rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(aa, float((a.double() ** 2).sum()), rel_tol=1e-12, abs_tol=1e-300)
    assert nnz == int((d != 0).sum())


def test_delta_stats_nan_and_inf() -> None:
    a = np.array([1.0, 2.0, 3.0, np.inf], dtype=np.float32)
    b = np.array([1.0, np.nan, 3.0, np.inf], dtype=np.float32)
    dd, l1, mx, bb, aa, nnz = native.kernels.delta_stats(b, a, "F32")
    assert math.isnan(mx) and math.isnan(dd) and nnz == 2  # NaN - 2 and inf - inf are NaN


def test_join2_inverts_split_planes() -> None:
    from mergestore.store.codecs.byteplane import split_planes

    rng = np.random.default_rng(0)
    words = rng.integers(0, 1 << 16, size=5001, dtype=np.uint16)
    ref = rng.integers(0, 1 << 16, size=5001, dtype=np.uint16)
    for rot in (0, 1, 7, 8, 15):
        rows = split_planes(words.view(np.uint8), 2, rot)
        out = np.empty_like(words)
        native.kernels.join2(out, rows[0, :5001].copy(), rows[1, :5001].copy(), rot, None)
        assert np.array_equal(out, words)
        native.kernels.join2(out, rows[0, :5001].copy(), rows[1, :5001].copy(), rot, ref)
        assert np.array_equal(out, words ^ ref)


def test_bad_arguments_raise() -> None:
    k = native.kernels
    with pytest.raises(ValueError):
        k.delta_stats(b"\0\0", b"\0\0\0\0", "BF16")
    with pytest.raises(ValueError):
        k.delta_stats(b"\0\0", b"\0\0", "I8")
    with pytest.raises(ValueError):
        k.join2(np.empty(4, np.uint16), np.empty(4, np.uint8), np.empty(3, np.uint8), 0, None)
    with pytest.raises(BufferError):  # read-only output
        k.join2(bytes(8), np.empty(4, np.uint8), np.empty(4, np.uint8), 0, None)
    planes = [np.empty(4, np.uint8) for _ in range(3)]
    with pytest.raises(ValueError):  # a plane of another length
        k.join4(np.empty(4, np.uint32), *planes, np.empty(3, np.uint8), 0, None)
    with pytest.raises(ValueError):  # rotation past the word
        k.join4(np.empty(4, np.uint32), *planes, np.empty(4, np.uint8), 32, None)
    with pytest.raises(ValueError):  # rows shorter than the words
        k.split4(np.empty((4, 3), np.uint8), np.empty(4, np.uint32), 1, None)
    out, base = np.empty(8, np.uint16), np.zeros(8, np.uint16)
    with pytest.raises(ValueError):  # base of another length
        k.gta_sum_bf16(out, base[:4], [base], [0.5], False, 1.0, False, 1.0, False)
    with pytest.raises(ValueError):  # an input of another length
        k.gta_consensus_bf16(out, base, [base, base[:6]], [0.5, 0.5], True, 1.0, False)
    with pytest.raises(ValueError):  # one weight per input
        k.gta_sum_bf16(out, base, [base, base], [0.5], False, 1.0, False, 1.0, False)
    with pytest.raises(ValueError):
        k.row_ranks_bf16(np.zeros(6, np.uint16), np.empty(6, np.int64), 2, 4)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("kind", ["dense", "specials", "tiny", "nan_payloads"])
@pytest.mark.parametrize("numel", [77, 300_001])
@pytest.mark.parametrize("n", [4, 6])  # the fused kernel (up to 4 inputs), and the tiled one
def test_linear_same_bits(monkeypatch, normalize, kind, numel, n) -> None:
    """linear's fp32 fused multiply-adds (torch's addcmul_), in input order."""
    _, xs = _family(n, numel, kind, seed=2)
    per_input = [{"weight": w} for w in (0.3, 0.25, -0.1, 0.7, 0.12, -0.4)[:n]]
    fast, slow = _twice(
        monkeypatch,
        lambda: merge_tensor("linear", None, xs, {"normalize": normalize}, per_input, CTX),
    )
    assert same_bits(fast, slow)


@pytest.mark.needs(bool(getattr(native.kernels, "HAVE_F16", 0)), "no fp16 kernels in this build")
@pytest.mark.parametrize("method,per,shared", METHODS)
@pytest.mark.parametrize("kind", ["dense", "specials", "tiny"])
@pytest.mark.parametrize("n_inputs", [1, 4])
def test_fp16_methods_same_bits(monkeypatch, method, per, shared, kind, n_inputs) -> None:
    """The fp16 GTA kernels (and the torch path's fp16 rank cuts) against torch alone."""
    base, xs = _family(n_inputs, 300_001, kind, dtype=torch.float16)
    per_input = [dict(per, weight=per["weight"] * (1 + 0.25 * i)) for i in range(n_inputs)]
    fast, slow = _twice(monkeypatch, lambda: merge_tensor(method, base, xs, shared, per_input, CTX))
    assert fast.dtype == slow.dtype == torch.float16
    assert same_bits(fast, slow)


@pytest.mark.needs(bool(getattr(native.kernels, "HAVE_F16", 0)), "no fp16 kernels in this build")
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("kind", ["dense", "specials", "tiny"])
def test_fp16_linear_same_bits(monkeypatch, normalize, kind) -> None:
    _, xs = _family(4, 100_003, kind, seed=2, dtype=torch.float16)
    per_input = [{"weight": w} for w in (0.3, 0.25, -0.1, 0.7)]
    fast, slow = _twice(
        monkeypatch,
        lambda: merge_tensor("linear", None, xs, {"normalize": normalize}, per_input, CTX),
    )
    assert same_bits(fast, slow)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("numel", [1, 31, 32, 33, 1000, 100_003])
def test_keep_masks_are_numpys_philox_stream(monkeypatch, dtype, numel) -> None:
    """The C drop mask draws numpy's Philox4x64-10 float32 stream, key for key."""
    g = torch.Generator().manual_seed(numel)
    probs = torch.rand(numel, generator=g).to(dtype)
    probs[:3] = torch.tensor([0.0, 1.0, 0.5])[:numel].to(dtype)
    for index in (0, 1, 7):
        fast, slow = _twice(monkeypatch, lambda index=index: CTX.keep_mask(index, probs))
        assert fast.dtype == slow.dtype == dtype
        assert torch.equal(fast, slow)


def test_philox_keys_past_64_bits() -> None:
    for key in (0, (1 << 64) - 1, (1 << 64) + 12345, (1 << 128) - 1):
        u = np.random.Generator(np.random.Philox(key=key)).random(77, dtype=np.float32)
        p = np.random.default_rng(1).random(77).astype(np.float32)
        out = np.empty(77, dtype=np.float32)
        native.kernels.philox_keep(out, p, key & ((1 << 64) - 1), key >> 64, False)
        assert np.array_equal(out, (u < p).astype(np.float32))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1000), (64, 257), (2, 3000)])
def test_della_row_ranks_same_as_a_stable_sort(monkeypatch, shape) -> None:
    from mergestore.ops import sparsify

    g = torch.Generator().manual_seed(shape[1])
    d = (0.01 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    d[:, ::3] = 0.0  # ties
    if shape[1] > 5:
        d[0, 4], d[0, 5], d[-1, 1] = float("nan"), float("inf"), -float("nan")
    for dtype in (torch.int64, torch.bfloat16):  # della rounds its ranks to bf16
        fast, slow = _twice(monkeypatch, lambda dt=dtype: sparsify._ranks_along_dim1(d.abs(), dt))
        assert fast.dtype == slow.dtype == dtype
        assert torch.equal(fast, slow)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 7), (5, 1000), (64, 257), (2, 3000)])
@pytest.mark.parametrize(("density", "epsilon"), [(0.5, 0.1), (0.3, 0.15), (0.9, 0.05)])
def test_della_probs_same_as_torch(monkeypatch, shape, density, epsilon) -> None:
    from mergestore.ops import sparsify

    g = torch.Generator().manual_seed(shape[0] * shape[1])
    d = (0.01 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    d[:, ::3] = 0.0  # ties
    if shape[1] > 5:
        d[0, 4], d[0, 5], d[-1, 1] = float("nan"), float("inf"), -float("nan")
    fast, slow = _twice(
        monkeypatch, lambda: sparsify._della_probs(d, density, epsilon, torch.bfloat16)
    )
    assert fast.dtype == slow.dtype == torch.bfloat16
    assert same_bits(fast, slow)  # one column: (r - lo) / (hi - lo) is 0/0, a NaN


@pytest.mark.parametrize("shape", [(), (0,), (0, 4), (1,), (3, 1)])
@pytest.mark.parametrize("method,per,shared", METHODS)
def test_scalar_and_empty_tensors(monkeypatch, shape, method, per, shared) -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(shape, generator=g).to(torch.bfloat16)
    xs = [(base.float() + 0.1 * torch.randn(shape, generator=g)).to(torch.bfloat16) for _ in "ab"]
    per_input = [dict(per) for _ in xs]
    fast, slow = _twice(monkeypatch, lambda: merge_tensor(method, base, xs, shared, per_input, CTX))
    assert fast.shape == slow.shape == base.shape
    assert same_bits(fast, slow)


_F16_PROBE = """
import hashlib, numpy as np
from mergestore import native
k = native.kernels
rng = np.random.default_rng(5)
n = 100_003  # not a multiple of 8: the vector loops' scalar tails too
base = (rng.standard_normal(n) * 0.02).astype(np.float16)
base[:3] = [np.inf, np.nan, -0.0]
xs = [(base.astype(np.float32) + s * rng.standard_normal(n)).astype(np.float16)
      for s in (1e-3, 1e-7, 3e4)]  # ordinary, subnormal and overflowing deltas
bits = [x.view(np.uint16) for x in xs]
h = hashlib.sha256()
for args in [(False, 1.0, False, 1.0, False), (False, 0.7, True, 1.3, True),
             (True, 1.0, True, 0.5, True)]:
    out = np.empty(n, np.uint16)
    k.gta_sum_bf16(out, base.view(np.uint16), bits, [0.3, -0.5, 0.25], *args, True)
    h.update(out.tobytes())
for normalize in (True, False):
    out = np.empty(n, np.uint16)
    k.linear_bf16(out, bits, [0.3, -0.5, 0.25], normalize, 0.05, True)
    h.update(out.tobytes())
for args in [(True, 1.0, False), (False, 1.4, True)]:
    out = np.empty(n, np.uint16)
    k.gta_consensus_bf16(out, base.view(np.uint16), bits, [0.3, -0.5, 0.25], *args, True)
    h.update(out.tobytes())
for x in bits:
    out, hist = np.empty(n, np.uint16), np.zeros(1 << 15, np.int64)
    k.sub_hist_bf16(out, x, base.view(np.uint16), hist, True)
    h.update(out.tobytes() + hist.tobytes())
print(h.hexdigest())
"""


@pytest.mark.needs(bool(getattr(native.kernels, "HAVE_F16", 0)), "no fp16 kernels in this build")
def test_fp16_vector_and_generic_kernels_agree() -> None:
    """The AVX2+F16C fp16 kernels (GTA sum and consensus, linear, x - base) and the generic
    (bit arithmetic) ones give the same bits;
    MERGESTORE_NO_F16C=1 picks the generic ones when the module loads."""
    import os
    import subprocess
    import sys

    def run(env: dict[str, str]) -> str:
        r = subprocess.run(
            [sys.executable, "-c", _F16_PROBE], capture_output=True, text=True, env=env
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    env = {k: v for k, v in os.environ.items() if k != "MERGESTORE_NO_F16C"}
    assert run(env) == run({**env, "MERGESTORE_NO_F16C": "1"})


def test_kernel_families_name_both_halves() -> None:
    """Every exported kernel belongs to one family, whose C file and Python twin exist."""
    from pathlib import Path

    root = Path(native.__file__).resolve().parent
    listed = [k for _module, kernels in native.FAMILIES.values() for k in kernels]
    assert len(listed) == len(set(listed))
    exported = {n for n in dir(native.kernels) if callable(getattr(native.kernels, n))}
    assert exported == set(listed)
    for source, (twin, _kernels) in native.FAMILIES.items():
        assert (root / "csrc" / source).is_file()
        assert (root.parent / twin).is_file()
    # module.c (the method table) and formats.c (helpers every lane shares) export no kernels
    helpers = {"module.c", "formats.c"}
    assert {p.name for p in (root / "csrc").glob("*.c")} == set(native.FAMILIES) | helpers
