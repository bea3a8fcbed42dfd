"""nearswap and ram on the torch-free lane, in any compute dtype: the Python half of
csrc/merge_elementwise.c (the torch twins are ops/nearswap.py and ops/ram.py; tests/ops/
test_lanes.py checks that both give the same bits, for every mix of input, compute and output
dtypes).

The kernels do torch's operations in torch's order, each rounded to the compute dtype. What
torch computes outside them is computed here the same way:
- nearswap's `t` multiplies in fp32 (torch takes a Python scalar factor of a 16-bit tensor in
  fp32), and its clamp bound 1e-6 is rounded to the compute dtype (clamp converts its bound to
  the tensor's dtype);
- ram's epsilon is compared in the compute dtype (torch rounds a Python scalar to a 16-bit
  tensor's dtype for a comparison); its dim-0 sum adds in order in fp32, which torch does for
  at most RAM_MAX_INPUTS inputs (ops.lanes.FP32_MAX_INPUTS), so larger ram merges stay on torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mergestore import native
from mergestore.ops.lane16 import _run_columns, f32
from mergestore.ops.lane_formats import FMT, format_of, out_array, rounded

METHODS = ("nearswap", "ram")
RAM_MAX_INPUTS = 4


def reason(method: str, per_input: Sequence[Mapping[str, Any]]) -> str | None:
    """None if the lane computes this method's tensor with the torch path's bits, else why."""
    if method == "ram" and len(per_input) > RAM_MAX_INPUTS:
        return f"ram: fp32 sums of more than {RAM_MAX_INPUTS} inputs"
    return None


def in_format(value: float, compute: str) -> float:
    """A Python float as torch rounds it to a tensor of the compute dtype."""
    return rounded([value], compute)[0]


def merge(
    method: str,
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
    out_fmt, cfmt = FMT[out_name], FMT[compute]
    arrays = [np.ascontiguousarray(x).reshape(-1) for x in (base, *inputs)]
    fmts = [FMT[format_of(x)] for x in arrays]
    n = arrays[0].size
    out = out_array(n, out_name)
    if method == "nearswap":
        t, lo = f32([shared["t"]])[0], in_format(1e-6, compute)

        def columns(r: range) -> None:
            parts = [x[r.start : r.stop] for x in arrays]
            kernels.nearswap(out[r.start : r.stop], out_fmt, cfmt, parts, fmts, t, lo)

    else:
        threshold = in_format(shared["epsilon"], compute)

        def columns(r: range) -> None:
            parts = [x[r.start : r.stop] for x in arrays]
            kernels.ram(out[r.start : r.stop], out_fmt, cfmt, parts, fmts, threshold)

    _run_columns(columns, n)
    return out.reshape(base.shape)
