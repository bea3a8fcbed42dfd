"""sce on the torch-free lane, in any compute dtype: the Python half of csrc/merge_sce.c (the
torch twin is ops/sce.py; tests/ops/test_lane_sce.py checks that both give the same bits for
every mix of input, compute and output dtypes).

Three passes of the kernels over the inputs (each recomputes the task vectors per tile, so
none is stored): the variance across inputs with its histogram, the mean squares of the
selected task vectors, and the election with the weighted mean. Between them, done here as
torch does on its small tensors:
- the number kept, int(nnz(var) * select_topk), an fp32 product (an int64 tensor times a
  Python float gives fp32), and the cut: the k largest |var| with ties by ascending flat
  index (ops.sparsify.first_ranks' rule), from two histograms of var's magnitude bits;
- the weights: mean_i = RC(sum_i / numel), their torch sum rounded to the compute dtype,
  then mean_i / total rounded (or 1 / N when |total| < 1e-6).
At most SCE_MAX_INPUTS inputs (torch's dim-0 sums add in order only up to 4 rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mergestore import native
from mergestore.ops import alloc
from mergestore.ops.lane16 import PARALLEL_MIN, _columns, _run_columns
from mergestore.ops.lane_formats import FMT, format_of, out_array, rounded
from mergestore.threads import ordered_map

SCE_MAX_INPUTS = 4
_NONE = 1 << 32  # a cut value above every magnitude: nothing selected


def reason(n_inputs: int) -> str | None:
    """None if the lane computes sce's tensor with the torch path's bits, else why."""
    if not hasattr(native.kernels, "sce_combine"):
        return "sce: the C kernels were built before sce's (reinstall to rebuild them)"
    if n_inputs > SCE_MAX_INPUTS:
        return f"sce: fp32 sums of more than {SCE_MAX_INPUTS} inputs"
    return None


def merge(
    base: np.ndarray,
    inputs: Sequence[np.ndarray],
    shared: Mapping[str, Any],
    compute: str,
    out_dtype: str | None,
) -> np.ndarray:
    """One output tensor (reason() is None for it, and it has inputs) in out_dtype, else the
    compute dtype."""
    kernels = native.kernels
    assert kernels is not None
    out_name = out_dtype or compute
    cfmt = FMT[compute]
    arrays = [np.ascontiguousarray(x).reshape(-1) for x in (base, *inputs)]
    fmts = [FMT[format_of(x)] for x in arrays]
    n = arrays[0].size
    var: np.ndarray | None = None
    v, last = -1, 0  # everything selected
    if shared["select_topk"] < 1:
        var = alloc.empty_bytes(4 * n).view(np.uint32)
        v, last = _cut(var, arrays, fmts, cfmt, float(shared["select_topk"]))
    weights = _weights(arrays, fmts, cfmt, compute, var, v, last)
    lo = rounded([1e-6], compute)[0]
    out = out_array(n, out_name)
    out_fmt = FMT[out_name]

    def columns(r: range) -> None:
        a, b = r.start, r.stop
        parts = [x[a:b] for x in arrays]
        kernels.sce_combine(out[a:b], out_fmt, parts, fmts, cfmt, var, v, last, a, weights, lo)

    _run_columns(columns, n)
    return out.reshape(base.shape)


def _cut(
    var: np.ndarray, arrays: list[np.ndarray], fmts: list[int], cfmt: int, density: float
) -> tuple[int, int]:
    """(v, last) of the top-k cut of |var| (filled in here): kept where bits > v, or == v at a
    flat index before last."""
    kernels = native.kernels
    assert kernels is not None
    n = var.size
    ranges = _columns(n)
    hists = [np.zeros(1 << 16, dtype=np.int64) for _ in ranges]

    def part(q: int) -> int:
        r = ranges[q]
        xs = [x[r.start : r.stop] for x in arrays]
        return int(kernels.sce_var(var[r.start : r.stop], hists[q], xs, fmts, cfmt))

    nnz = sum(ordered_map(part, range(len(ranges)), workers=len(ranges)))
    hist = hists[0] if len(hists) == 1 else sum(hists[1:], hists[0])
    count = int(np.float32(nnz) * np.float32(density))  # torch: int64 tensor * float -> fp32
    if count <= 0:
        return _NONE, 0
    if count >= n:
        return -1, 0
    r = n - count + 1  # the cut value's 1-based ascending rank
    cum = np.cumsum(hist)
    hi = int(np.searchsorted(cum, r))
    below = int(cum[hi - 1]) if hi > 0 else 0
    low = np.zeros(1 << 16, dtype=np.int64)
    kernels.u32_hist_lo(var, hi, low)
    cum_lo = np.cumsum(low)
    lo = int(np.searchsorted(cum_lo, r - below))
    n_less = below + (int(cum_lo[lo - 1]) if lo > 0 else 0)
    n_eq = int(low[lo])
    v = (hi << 16) | lo
    need = count - (n - n_less - n_eq)  # ties at v to keep, lowest flat indices first
    if need == n_eq:
        return v, n
    return v, kernels.u32_nth_equal(var, v, need) + 1


def _weights(
    arrays: list[np.ndarray],
    fmts: list[int],
    cfmt: int,
    compute: str,
    var: np.ndarray | None,
    v: int,
    last: int,
) -> list[float]:
    """omega_i = mean(m_i^2) / sum_j mean(m_j^2) in the compute dtype (1/N below 1e-6)."""
    kernels = native.kernels
    assert kernels is not None
    k, n = len(arrays) - 1, arrays[0].size
    # Large tensors: two halves of the inputs summed at once (each sum is one input's).
    groups = [list(range(k))] if n < PARALLEL_MIN or k < 2 else [
        list(range(k // 2)), list(range(k // 2, k))
    ]  # fmt: skip

    def sums(group: list[int]) -> list[float]:
        xs = [arrays[0]] + [arrays[1 + i] for i in group]
        fs = [fmts[0]] + [fmts[1 + i] for i in group]
        return kernels.sce_sumsq(xs, fs, cfmt, var, v, last)

    totals = [s for part in ordered_map(sums, groups, workers=len(groups)) for s in part]
    means = rounded([float(np.float32(s) / np.float32(n)) for s in totals], compute)
    total = rounded([kernels.torch_sum32(np.asarray(means, dtype=np.float32))], compute)[0]
    if abs(total) < 1e-6:
        return rounded([float(np.float32(1) / np.float32(k))] * k, compute)
    with np.errstate(all="ignore"):
        return rounded([float(np.float32(m) / np.float32(total)) for m in means], compute)
