"""Elementwise kernels run piece by piece give the same bits as one call on the whole tensor."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mergestore.ops.apply as apply
from fixtures.bits import same_bits
from mergestore.ops import TensorContext, merge_tensor
from mergestore.ops.registry import get_method

CTX = TensorContext("model.layers.1.mlp.up_proj.weight", seed=3)

CASES = [
    ("linear", False, {}, {"weight": 0.3}),
    ("linear", False, {"normalize": False}, {"weight": 0.7}),
    ("task_arithmetic", True, {}, {"weight": 0.3}),
    ("task_arithmetic", True, {"normalize": True, "lambda": 0.9}, {"weight": 0.45}),
    ("ram", True, {}, {}),
    ("nearswap", True, {"t": 0.01}, {}),
]


def _inputs(dtype: torch.dtype, n: int, shape: tuple[int, ...]):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(shape, generator=g)
    xs = []
    for i in range(n):
        d = 0.02 * torch.randn(shape, generator=g)
        d[torch.rand(shape, generator=g) < 0.3] = 0  # unchanged elements, ties in magnitudes
        xs.append((base + d * (i + 1)).to(dtype))
    base = base.to(dtype)
    base.view(-1)[:5] = -0.0  # signed zeros survive (or not) the same way in both
    return base, xs


@pytest.mark.parametrize("method,with_base,shared,per", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("compute", [None, torch.float32])
def test_chunked_equals_whole(
    monkeypatch: pytest.MonkeyPatch, method, with_base, shared, per, dtype, compute
) -> None:
    assert get_method(method).elementwise
    n = 1 if method == "nearswap" else 3
    base, xs = _inputs(dtype, n, (37, 29))  # 1073 elements: pieces of 64 and a ragged tail
    args = (method, base if with_base else None, xs, shared, [dict(per) for _ in xs], CTX)
    whole = merge_tensor(*args, dtype=compute, out_dtype=torch.bfloat16)
    monkeypatch.setattr(apply, "CHUNK_ELEMENTS", 64)
    calls = []
    kernel = get_method(method).kernel

    def counting(*a, **k):
        calls.append(a[1][0].numel())
        return kernel(*a, **k)

    spec = dataclasses.replace(get_method(method), kernel=counting)
    monkeypatch.setattr(apply, "get_method", lambda name: spec)
    pieces = merge_tensor(*args, dtype=compute, out_dtype=torch.bfloat16)
    assert len(calls) == 17 and max(calls) == 64  # really run in pieces
    assert pieces.shape == whole.shape and pieces.dtype == whole.dtype
    assert torch.equal(pieces.view(torch.int16), whole.view(torch.int16))


GTA_CASES = [
    ("ties", {"density": 0.5, "weight": 0.4}, {}),
    ("ties", {"density": 0.3, "weight": 0.7}, {"normalize": False, "lambda": 1.5}),
    ("breadcrumbs_ties", {"density": 0.6, "gamma": 0.05, "weight": 0.5}, {}),
    ("dare_ties", {"density": 0.5, "weight": 0.4}, {}),
    ("della", {"density": 0.5, "epsilon": 0.1, "weight": 0.4}, {}),
    ("dare_linear", {"density": 0.5, "weight": 0.4}, {}),
    ("breadcrumbs", {"density": 0.6, "gamma": 0.05, "weight": 0.5}, {}),
]


@pytest.mark.parametrize("method,per,shared", GTA_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n", [1, 3, 6])
def test_gta_tail_in_column_ranges_equals_whole(
    monkeypatch: pytest.MonkeyPatch, method, per, shared, dtype, n
) -> None:
    """GTA's post-sparsification steps (weighting, election, sums, normalisation) run on
    column ranges of the stacked deltas, and large tensors on two threads; the bits equal
    one pass over the whole tensor on one thread."""
    from mergestore.ops import gta

    base, xs = _inputs(dtype, n, (41, 23))  # 943 elements
    args = (method, base, xs, shared, [dict(per) for _ in xs], CTX)
    monkeypatch.setattr(gta, "TAIL_CHUNK", 1 << 30)
    whole = merge_tensor(*args)
    monkeypatch.setattr(gta, "TAIL_CHUNK", 64)
    ranges = merge_tensor(*args)
    monkeypatch.setattr(gta, "PARALLEL_MIN", 1)  # two threads: inputs, then column ranges
    threaded = merge_tensor(*args)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    for other in (ranges, threaded):
        assert other.dtype == whole.dtype
        assert torch.equal(other.view(bits), whole.view(bits))


def _stream_case(dtype: torch.dtype, n: int, kind: str):
    g = torch.Generator().manual_seed(n)
    base = torch.randn(n, generator=g).to(dtype)
    if kind == "frozen":  # every magnitude ties at zero
        return base, base.clone()
    x = (base.float() + 0.01 * torch.randn(n, generator=g)).to(dtype)
    x[::7] = base[::7]  # unchanged elements: many ties at 0
    if kind == "specials":
        x[3], x[11], x[200] = float("nan"), float("inf"), -float("inf")
        base[5] = -0.0
    return base, x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1000, 70_000, 200_003])
@pytest.mark.parametrize("kind", ["dense", "frozen", "specials"])
@pytest.mark.parametrize("density", [0.001, 0.3, 0.5, 0.9, 0.999])
def test_streamed_rank_cuts_equal_whole_tensor_ones(dtype, n, kind, density) -> None:
    """delta_into's two streaming passes give magnitude()'s and magnitude_outliers()' bits,
    ties at the cut (the lower flat index first) included."""
    from mergestore.ops import sparsify

    base, x = _stream_case(dtype, n, kind)
    cases = [
        ("magnitude", 0.0, sparsify.magnitude(x - base, density, False)),
        ("magnitude_outliers", 0.05, sparsify.magnitude_outliers(x - base, density, 0.05, False)),
    ]
    for name, gamma, expect in cases:
        out = torch.empty_like(base)
        sparsify.delta_into(out, x, base, name, density, gamma)
        assert same_bits(out, expect), name
