"""karcher on the lane in bf16 compute (mergekit's `dtype: bfloat16`): the Python half of
csrc/merge_karcher16.c (the torch twin is ops/karcher.py; tests/ops/test_lane_karcher16.py
checks that both give the same bits).

The twin's steps in its order on bf16 arrays: the unit vectors, the mean and the tangent are
bf16 tensors there, so each elementwise operation is rounded to bf16 (the C passes), and its
dot products are torch.dot of bf16 vectors, ATen's own fp32-arithmetic kernel, whose order the
C code reproduces in its AVX2 form. The norms are fp32 (the twin's `x.to(float32)`). The scalar
steps: clamp, then acos and sin of a bf16 value (SLEEF's, rounded to bf16, as ops.lane_math
gives them), the factor a * (theta / sin(theta)) rounded to bf16 at each step; cos and sin of
the fp32 step (MKL's VML), rounded to bf16 where they multiply a bf16 tensor
(lm.bf16_of_func32: certain from the exact value but near a bf16 rounding boundary, where
MKL's own function, in torch's library, is loaded and called; a tensor that needs it where
torch has no MKL goes through the twin):
torch casts a 0-d operand to the tensor's dtype when it comes first (`cos(step) * mean`, and
the final `scale * mean`) and keeps its fp32 value only as the second (`tangent / step`).

On CPUs with AVX-512 (bw, vl, dq), torch.dot of more than 4096 bf16 elements is oneDNN's matmul
(up to 4096 ATen's kernel above, the same order as on AVX2): where it runs on AMX tiles or with
AVX-512 BF16, the C kernels (karcher16_dots_onednn) run the same instructions in its chunks
(ops/onednn_dot.py says which kernel and its chunks).

Not on the lane: CPUs without AVX2/FMA kernels in torch, tensors of more than 4096 elements on
AVX-512 CPUs where oneDNN's dot is not one reproduced (onednn_dot.why()), tensors of fewer than
8 or not a multiple of 8 elements (the fp32 2-norm's tail order), and where ops.lane_math has no
torch acos/sin/cos to give.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

from mergestore import native
from mergestore.ops import alloc, onednn_dot
from mergestore.ops import lane_math as lm
from mergestore.ops.lane16 import _in_two_groups, _run_columns, _splits
from mergestore.ops.lane_formats import FMT, convert, format_of, out_array
from mergestore.threads import ordered_map

f32 = np.float32


@cache
def torch_runs_avx512() -> bool:
    """True if torch picks its AVX-512 kernels here (ATen's compute_cpu_capability), whose bf16
    dot up to 4096 elements has the AVX2 kernel's order (measured; tests check it)."""
    asked = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    flags = lm.cpu_flags()
    return asked in ("", "avx512") and {"avx512vl", "avx512bw", "avx512dq"} <= flags


@cache
def torch_runs_avx2() -> bool:
    """True if torch picks its AVX2 kernels on this CPU (ATen's compute_cpu_capability: AVX-512
    with avx512vl, bw and dq, else AVX2 with avx2 and fma; ATEN_CPU_CAPABILITY can lower it)."""
    flags = lm.cpu_flags()
    asked = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if asked == "default" or not {"avx2", "fma"} <= flags:
        return False
    return asked == "avx2" or not {"avx512vl", "avx512bw", "avx512dq"} <= flags


def knows_torch_dot() -> bool:
    """True if the lane gives torch.dot's bf16 bits here at every size."""
    return (torch_runs_avx2() or torch_runs_avx512()) and onednn_dot.kind() != "unknown"


def reason(numel: int | None) -> str | None:
    """None if the lane computes karcher's bf16 tensor with the torch path's bits, else why."""
    if numel is None or numel < 8 or numel % 8:
        return "karcher: a tensor of fewer than 8, or not a multiple of 8, elements"
    if not torch_runs_avx2() and not torch_runs_avx512():
        return "karcher in bf16 compute: torch's bf16 dot here is not its AVX2/AVX-512 kernel"
    if numel > onednn_dot.ONEDNN_MIN and onednn_dot.kind() == "unknown":
        return f"karcher in bf16 compute: {onednn_dot.why()}"
    why = lm.missing("BF16")  # the step's fp32 cos and sin: lm.bf16_of_func32, at merge time
    return f"karcher: {why}" if why else None


def _r16(x: float) -> f32:
    """x rounded to bf16 as torch rounds a value to it (via fp32), as a float32 scalar."""
    return f32(lm.rounded(x, "BF16"))


def merge(
    inputs: Sequence[np.ndarray], shared: Mapping[str, Any], out_dtype: str | None
) -> np.ndarray | None:
    """One output tensor (reason() is None for it) in out_dtype, else bf16; None where the
    twin takes a branch the lane does not (every input's norm under tol) or lane_math cannot
    give torch's bits."""
    try:
        return _merge(inputs, shared, out_dtype)
    except lm.Untraced:
        return None


def _merge(
    inputs: Sequence[np.ndarray], shared: Mapping[str, Any], out_dtype: str | None
) -> np.ndarray | None:
    kernels = native.kernels
    assert kernels is not None
    max_iter, tol = shared["max_iter"], shared["tol"]
    xs = [_as_bf16(x) for x in inputs]
    k, n = len(xs), xs[0].size
    passes = _Passes(n)
    alphas = [1.0 / k] * k
    norms = [f32(v) for v in passes.each(kernels.karcher16_norm, xs)]
    live = [i for i, v in enumerate(norms) if float(v) > tol]
    if not live:
        return None
    total = sum(alphas[i] for i in live)
    weights = [alphas[i] / total for i in live]
    units = list(_empty(len(live) * n).reshape(len(live), n))  # evenly spaced: AMX's rows
    mean = _empty(n)
    live_norms, live_weights = [float(norms[i]) for i in live], [float(f32(a)) for a in weights]
    mean_norm = f32(
        passes.columns(
            lambda c, norm: kernels.karcher16_first(
                [u[c] for u in units], [xs[i][c] for i in live], live_norms, live_weights,
                mean[c], norm,
            ),
            mean,
        )
    )  # fmt: skip
    pending: float | None = None  # a division of the mean not done yet: the next pass does it
    if float(mean_norm) < tol:
        mean[:] = units[0]
    else:
        pending = float(mean_norm)
    tangent = _empty(n)
    for _ in range(max_iter):
        dots = passes.dots(mean, pending, units)
        pending = None
        chosen, factors, cosines = [], [], []
        for a, u, d in zip(weights, units, dots, strict=True):
            c = min(max(_r16(d), f32(-1.0)), f32(1.0))
            theta = f32(lm.func(lm.ACOS, float(c), "BF16"))
            if float(theta) < tol:
                continue
            with np.errstate(all="ignore"):
                ratio = _r16(theta / f32(lm.func(lm.SIN, float(theta), "BF16")))
                factors.append(float(_r16(f32(a) * ratio)))
            chosen.append(u)
            cosines.append(float(c))
        step = f32(_tangent(passes, tangent, mean, chosen, factors, cosines))
        if float(step) < tol:
            break
        # cos(step) * mean: an fp32 0-d tensor times a bf16 tensor, the 0-d one first, so
        # torch casts it to bf16 (only a second operand keeps its value: / step does)
        cos, sin = (lm.bf16_of_func32(op, float(step)) for op in (lm.COS, lm.SIN))
        size = f32(_update(passes, mean, tangent, cos, sin, float(step)))
        if float(size) > tol:
            pending = float(size)
    if pending is not None:
        passes.scale(mean, pending)
    scale = f32(0.0)  # sum(a * norm): from the int 0, each term an fp32 product
    for a, v in zip(alphas, norms, strict=True):
        scale = scale + f32(a) * v
    out_name = out_dtype or "BF16"
    out = out_array(n, out_name)
    factor = float(_r16(scale))  # scale * mean: rounded to bf16 as cos above
    passes.columns(lambda c, _: kernels.karcher16_out(out[c], FMT[out_name], mean[c], factor))
    return out.reshape(inputs[0].shape)


def _tangent(
    passes: _Passes, tangent: np.ndarray, mean: np.ndarray, chosen: list[np.ndarray],
    factors: list[float], cosines: list[float],
) -> float:  # fmt: skip
    """tangent = the weighted sum of the chosen inputs' log maps; returns |tangent|."""
    kernels = native.kernels
    assert kernels is not None
    return passes.columns(
        lambda c, norm: kernels.karcher16_tangent(
            tangent[c], mean[c], [u[c] for u in chosen], factors, cosines, norm
        ),
        tangent,
    )


def _update(
    passes: _Passes, mean: np.ndarray, tangent: np.ndarray, cos: float, sin: float, step: float
) -> float:
    """mean moved along the geodesic by the step, in place; returns |mean|."""
    kernels = native.kernels
    assert kernels is not None
    return passes.columns(
        lambda c, norm: kernels.karcher16_update(mean[c], tangent[c], cos, sin, step, norm), mean
    )


class _Passes:
    """How one tensor's passes run: whole on the calling thread, or, for a large tensor
    (lane16's threshold), the elementwise work in two column ranges on two threads, each
    ordered sum (a norm, a dot product) whole after it or in two groups of inputs. Each sum
    sees the same values in the same order either way: the same bits."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.split = _splits(n)

    def columns(
        self, fn: Callable[[slice, bool], float | None], norm_of: np.ndarray | None = None
    ) -> float:
        """fn(columns, with_norm) over the tensor; the 2-norm of norm_of after it (fn's own
        norm when whole), else 0."""
        if not self.split:
            return fn(slice(None), norm_of is not None) or 0.0
        _run_columns(lambda r: fn(slice(r.start, r.stop), False), self.n)
        if norm_of is None:
            return 0.0
        kernels = native.kernels
        assert kernels is not None
        return kernels.karcher16_norm(norm_of)

    def each(self, fn: Callable[[np.ndarray], float], arrays: Sequence[np.ndarray]) -> list[float]:
        """fn of each array (a whole ordered sum each): on two threads for a large tensor."""
        workers = 2 if self.split and len(arrays) > 1 else 1
        return list(ordered_map(fn, arrays, workers=workers))

    def dots(self, mean: np.ndarray, pending: float | None, units: list[np.ndarray]) -> list[float]:
        """[torch.dot(mean, u_i)] after mean /= pending (if not None): for a large tensor the
        division in column ranges, then the dot products in two groups of inputs."""
        dots = self._dot_kernel()
        if not self.split or len(units) < 2:
            return dots(mean, pending, units)
        if pending is not None:
            self.scale(mean, pending)
        return _in_two_groups(lambda g: dots(mean, None, g), units)

    def _dot_kernel(self) -> Callable[[np.ndarray, float | None, list[np.ndarray]], list[float]]:
        """The kernel of torch.dot for this tensor's size: ATen's order, or oneDNN's (its kind
        and chunks) above 4096 elements on AVX-512 CPUs (reason() keeps "unknown" off the lane)."""
        kernels = native.kernels
        assert kernels is not None
        kind = onednn_dot.kind() if self.n > onednn_dot.ONEDNN_MIN else "aten"
        if kind not in onednn_dot.ONEDNN_KINDS:
            return kernels.karcher16_dots
        chunk = onednn_dot.chunk(kind, self.n)

        def onednn(mean: np.ndarray, pending: float | None, units: list[np.ndarray]) -> list[float]:
            return kernels.karcher16_dots_onednn(kind, mean, pending, units, chunk)

        return onednn

    def scale(self, x: np.ndarray, d: float) -> None:
        """x = x / d in place, rounded to bf16 (each element on its own: the same bits)."""
        kernels = native.kernels
        assert kernels is not None
        self.columns(lambda c, _: kernels.karcher16_scale(x[c], x[c], d))


def _empty(n: int) -> np.ndarray:
    """An uninitialised bf16 array (pooled: no fresh pages per tensor)."""
    return alloc.empty_bytes(2 * n).view(np.uint16)


def _as_bf16(x: np.ndarray) -> np.ndarray:
    """x flattened as bf16 bits (rounded to bf16 if it is another format, as the twin's inputs
    are converted to the compute dtype)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    return flat if format_of(flat) == "BF16" else convert(flat, "BF16")
