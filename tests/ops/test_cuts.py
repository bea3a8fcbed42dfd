"""The one-pass rank cuts (csrc/cut_select.c, ops.cuts) keep exactly the elements a stable sort
keeps, whether the sampled bracket holds the cut or the exact histograms take over; the fused
bf16 cut + combine gives the same bits on any column windows.

The reference is independent of the kernels: torch forms x - base in the compute dtype, numpy
sorts the magnitude bits stably (ties by ascending flat index, sparsify.first_ranks' rule).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergestore import native
from mergestore.ops import cuts, lane16, sparsify

pytestmark = pytest.mark.skipif(native.kernels is None, reason="C kernels not built")

N = 3 << 16  # above 8 x cuts.SAMPLE: the sampled bracket runs
RULES = [
    ("magnitude", 0.5, 0.0),
    ("magnitude", 0.1, 0.0),
    ("magnitude", 0.97, 0.0),
    ("magnitude_outliers", 0.9, 0.01),
    ("magnitude_outliers", 0.6, 0.05),
]
# (sample, z): the defaults; a bracket too narrow to hold the cut (the histograms take over
# whenever it misses); no sample (the histograms alone)
SEARCHES = [(cuts.SAMPLE, cuts.Z), (1024, 0.3), (0, 0.0)]


def deltas(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = 0.02 * torch.randn(n, generator=g)
    d = 1e-3 * torch.randn(n, generator=g)
    if kind == "zeros":  # 60% of the deltas are 0: the cut falls among them
        d[torch.rand(n, generator=g) < 0.6] = 0
    elif kind == "coarse":  # few distinct magnitudes: long runs of ties
        d = torch.round(d * 4e3) / 4e3
    elif kind == "frozen":
        d.zero_()
    elif kind == "lowrank":  # rows of one pattern, as the sampled runs see them
        d = 1e-4 * torch.outer(torch.randn(n // 512, generator=g), torch.randn(512, generator=g))
        d = d.reshape(-1)
    elif kind == "nonfinite":
        d[:5] = float("inf")
        d[7:9] = float("nan")
    return base, base + d


def keys(x: torch.Tensor, base: torch.Tensor, compute: str) -> np.ndarray:
    """The magnitude bits of x - base in the compute dtype, computed by torch."""
    if compute == "F32":
        return (x - base).view(torch.int32).numpy().astype(np.int64) & 0x7FFFFFFF
    d = x.to(torch.bfloat16) - base.to(torch.bfloat16)
    return d.view(torch.int16).numpy().astype(np.int64) & 0x7FFF


def sorted_keep(k: np.ndarray, sparsifier: str, density: float, gamma: float) -> np.ndarray:
    n = k.size
    idx = np.arange(n)
    keep = np.zeros(n, bool)
    if sparsifier == "magnitude":
        order = np.lexsort((idx, -k))  # largest first, ties by ascending index
        keep[order[: max(1, int(density * n))]] = True
        return keep
    (hi, _), (bot, _) = sparsify.cut_counts(n, sparsifier, density, gamma)
    order = np.lexsort((idx, k))  # smallest first, ties by ascending index
    keep[order[bot:hi]] = True
    return keep


def spec_keep(k: np.ndarray, spec: tuple[int, ...]) -> np.ndarray:
    idx = np.arange(k.size)

    def one(mode: int, v: int, last: int) -> np.ndarray:
        if mode <= 1:
            return np.full(k.size, mode == 1)
        beyond = k > v if mode == 2 else k < v
        return beyond | ((k == v) & (idx < last))

    keep = one(*spec[:3])
    if spec[3] >= 0:
        keep &= ~one(*spec[3:6])
    return keep


@pytest.mark.parametrize("kind", ["gauss", "zeros", "coarse", "frozen", "lowrank", "nonfinite"])
@pytest.mark.parametrize("compute", ["F32", "BF16"])
def test_cuts_keep_what_a_stable_sort_keeps(kind, compute):
    base, x = deltas(kind, N, seed=len(kind))
    if compute == "BF16":  # bf16 compute: the lane rounds the inputs to bf16 first
        base, x = base.to(torch.bfloat16).float(), x.to(torch.bfloat16).float()
        pair = [t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16) for t in (x, base)]
        fmt = lane16.BF16
    else:
        pair, fmt = [x.numpy(), base.numpy()], lane16.F32
    k = keys(x, base, compute)
    code = lane16.F32 if compute == "F32" else lane16.BF16
    exact = []
    for sparsifier, density, gamma in RULES:
        want = sorted_keep(k, sparsifier, density, gamma)
        counts = sparsify.cut_counts(N, sparsifier, density, gamma)
        for sample, z in SEARCHES:
            got = native.kernels.find_cuts(
                [pair[0]], [fmt], pair[1], fmt, code, [counts], sample, z
            )[0]
            assert np.array_equal(spec_keep(k, got[:6]), want), (sparsifier, density, sample)
            exact.append((sample, got[6]))
    assert all(e == 1 for s, e in exact if s == 0)
    if kind in ("gauss", "lowrank"):  # the bracket held every cut
        assert all(e == 0 for s, e in exact if s == cuts.SAMPLE)


@pytest.mark.parametrize("compute", ["F32", "BF16"])
def test_inputs_searched_together_get_their_own_cuts(compute):
    """One pass over the base and several inputs (one overflowing its bracket, one frozen)
    gives each input the cuts it gets alone."""
    kinds = ["gauss", "coarse", "frozen", "zeros", "lowrank"]
    base = deltas("gauss", N, seed=1)[0]
    xs = [
        base + (deltas(kind, N, seed=i)[1] - deltas(kind, N, seed=i)[0])
        for i, kind in enumerate(kinds)
    ]
    code = lane16.F32 if compute == "F32" else lane16.BF16
    if compute == "BF16":
        arrays = [
            t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16) for t in [base, *xs]
        ]
    else:
        arrays = [t.numpy() for t in [base, *xs]]
    rules = [
        {"density": d, "gamma": g}
        for d, g in [(0.5, 0), (0.9, 0.01), (0.3, 0), (0.6, 0.05), (0.2, 0)]
    ]
    for sparsifier in ("magnitude", "magnitude_outliers"):
        for sample, z in SEARCHES[:2]:
            together = cuts.find_many(
                arrays[1:], [code] * 5, arrays[0], code, code, sparsifier, rules, sample, z
            )
            alone = [
                cuts.find(
                    x, code, arrays[0], code, code, sparsifier, r["density"], r["gamma"], sample, z
                )
                for x, r in zip(arrays[1:], rules, strict=True)
            ]
            assert together == alone


def test_finite():
    x = np.zeros(10000, np.float32)
    assert lane16.finite(x, lane16.F32)
    x[9999] = np.inf
    assert not lane16.finite(x, lane16.F32)
    b = np.zeros(9000, np.uint16)
    assert lane16.finite(b, lane16.BF16)
    b[4500] = 0xFFC0  # a NaN
    assert not lane16.finite(b, lane16.BF16)


FUSED_RULES = [
    ("magnitude", 0.37, 0.0),
    ("magnitude_outliers", 0.8, 0.02),
    ("magnitude", 0.5, 0.0),
    ("magnitude_outliers", 0.6, 0.1),
    ("magnitude", 0.9, 0.0),
]


def _bf16_inputs(n: int, k: int, nonfinite: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    g = torch.Generator().manual_seed(7)
    base = (0.02 * torch.randn(n, generator=g)).to(torch.bfloat16)
    xs = [
        (base.float() + torch.round(torch.randn(n, generator=g) * 8) / 8e3).to(torch.bfloat16)
        for _ in range(k)
    ]
    if nonfinite:
        xs[0][[3, 900]] = float("inf")
        xs[-1][[5, 1500]] = float("nan")
        xs[k // 2][7] = float("-inf")
        base[[11, 1999]] = torch.tensor([float("inf"), float("nan")], dtype=torch.bfloat16)
    u16 = [t.view(torch.int16).numpy().view(np.uint16) for t in [base, *xs]]
    return u16[0], u16[1:]


def _combined(flat_base, rows, w, consensus, normalize, lam):
    want = np.empty_like(flat_base)
    lane16.gta_combine(
        flat_base, rows, w, list(range(len(rows))), deltas=True, consensus=consensus,
        normalize=normalize, lam=lam, out=want,
    )  # fmt: skip
    return want


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("tail", [(True, 1.0), (False, 1.0), (False, 0.7), (True, 0.7)])
@pytest.mark.parametrize("nonfinite", [False, True])
@pytest.mark.parametrize("consensus", [True, False])
def test_fused_bf16_cut_in_any_column_windows(consensus, nonfinite, tail, k):
    """kernels.gta_cut16 on column windows (each told its flat start) gives the bits of one
    call over the whole tensor, wherever a cut's tie breakpoint falls, and those of cutting
    each delta (sparsify.delta_bits_into) and combining them (lane16.gta_combine), with
    infinities and NaNs kept or dropped by the cuts too: for 1 to 5 inputs, with and without
    normalize and lambda (breadcrumbs of 1-4 inputs with neither sums in registers)."""
    normalize, lam = tail
    n = 50 * 41
    flat_base, flats = _bf16_inputs(n, k, nonfinite)
    rules = FUSED_RULES[:k]
    specs = [
        cuts.find(x, lane16.BF16, flat_base, lane16.BF16, lane16.BF16, *rule)
        for x, rule in zip(flats, rules, strict=True)
    ]
    assert any(0 < s[2] < n for s in specs)  # a breakpoint inside the tensor
    w = lane16.bf16([0.3, 0.5, 0.9, 0.7, 0.2][:k])
    args = (w, consensus, lane16.gta_divisor(w), normalize, lam, lam != 1.0)
    whole = np.empty(n, np.uint16)
    native.kernels.gta_cut16(whole, flat_base, flats, specs, 0, *args)
    for step in (37, 512, 700):  # windows smaller, equal to and larger than a tile
        pieces = np.empty_like(whole)
        for a in range(0, n, step):
            b = min(a + step, n)
            native.kernels.gta_cut16(
                pieces[a:b], flat_base[a:b], [x[a:b] for x in flats], specs, a, *args
            )
        assert whole.tolist() == pieces.tolist()
    rows = []
    for x, (sparsifier, density, gamma) in zip(flats, rules, strict=True):
        row = np.empty_like(x)
        sparsify.delta_bits_into(row, x, flat_base, sparsifier, density, gamma)
        rows.append(row)
    assert whole.tolist() == _combined(flat_base, rows, w, consensus, normalize, lam).tolist()


@pytest.mark.parametrize("mode2", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("mode1", [0, 1, 2, 3])
def test_fused_bf16_cut_keeps_what_apply_cuts16_keeps(mode1, mode2):
    """Every pair of cut modes (none, all, largest, smallest; no second cut, or one of the four
    dropped), with tie breakpoints inside the tensor: gta_cut16's kept interval per piece keeps
    what rank_cuts.c's apply_cuts16 keeps (two ranges, the second dropped), in the register
    sums (one input, no tail) and in the per-input tiles (with consensus)."""
    n = 3000
    flat_base, flats = _bf16_inputs(n, 1, nonfinite=True)
    row = np.empty_like(flats[0])  # x - base as delta_bits_into forms it
    hist = np.zeros(1 << 15, dtype=np.int64)
    native.kernels.sub_hist_bf16(row, flats[0].view(np.int16), flat_base.view(np.int16), hist)
    mags = np.unique(row & 0x7FFF)
    v1, v2 = int(mags[len(mags) // 3]), int(mags[2 * len(mags) // 3])
    if mode1 == 3 and mode2 == 2:
        v1, v2 = v2, v1  # keep the smallest up to a high v, drop the largest from a low one
    spec = (mode1, v1, 1234, mode2, v2 if mode2 >= 0 else 0, 2100 if mode2 >= 0 else 0)
    native.kernels.apply_cuts16(row, *spec)
    w = lane16.bf16([0.3])
    for consensus in (False, True):
        got = np.empty(n, np.uint16)
        args = (w, consensus, lane16.gta_divisor(w), False, 1.0, False)
        native.kernels.gta_cut16(got, flat_base, flats, [spec], 0, *args)
        want = _combined(flat_base, [row], w, consensus, False, 1.0)
        assert got.tolist() == want.tolist()


@pytest.mark.parametrize("compute", ["F32", "BF16"])
def test_bracket_larger_than_the_scratch(compute):
    """A bracket holding more keys than the pooled scratch has room for (long runs of equal
    magnitudes around the cut, as discrete deltas of 16-bit weights give): fp32 keys gather
    into buffers of their own instead of the two histogram passes, bf16 keys take their one
    histogram pass; either way the cuts a stable sort gives."""
    g = torch.Generator().manual_seed(3)
    base = 0.02 * torch.randn(N, generator=g)
    x = base + torch.round(torch.randn(N, generator=g) * 3) / 4e3  # ~13 distinct magnitudes
    if compute == "BF16":
        base, x = base.to(torch.bfloat16).float(), x.to(torch.bfloat16).float()
        pair = [t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16) for t in (x, base)]
        code = lane16.BF16
    else:
        pair, code = [x.numpy(), base.numpy()], lane16.F32
    k = keys(x, base, compute)
    for sparsifier, density, gamma in RULES[:2]:
        counts = sparsify.cut_counts(N, sparsifier, density, gamma)
        for room in (N // 4, 64):  # find_many's scratch for one input; almost none
            scratch = np.zeros(room, np.uint32)
            got = native.kernels.find_cuts(
                [pair[0]], [code], pair[1], code, code, [counts], cuts.SAMPLE, cuts.Z, scratch
            )[0]
            assert np.array_equal(spec_keep(k, got[:6]), sorted_keep(k, sparsifier, density, gamma))
            if compute == "F32":
                assert got[6] == 0  # the bracket held the cut
