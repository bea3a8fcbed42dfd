"""karcher on the lane in fp32 compute: the Python half of csrc/merge_karcher.c (the torch twin
is ops/karcher.py; tests/ops/test_lane_karcher.py checks that both give the same bits).

The twin's steps in its order, on fp32 arrays: the unit vectors, the mean and the tangent are
materialised as in the twin, because its dot products are torch.dot, i.e. MKL's sdot (whose
order is not reproduced): the lane calls that same sdot in torch's library (ops.lane_math,
without importing torch), on one MKL thread as torch sets it, over arrays allocated 64-byte
aligned as torch allocates (BLAS kernels may split a sum by alignment). The scalar steps
(clamp, arccos, sin, cos, the factors) are the twin's fp32 operations, with torch's
arccos/sin/cos bits from ops.lane_math (MKL's VML). The C kernels fuse the elementwise work of
each step with the 2-norm the next step needs: one pass where the twin makes three to six,
each into a fresh tensor. Where lane_math has no MKL to call, the twin runs.

Where MKL runs its generic x86 sdot kernel (on CPUs it has no AVX2/AVX-512 kernel for, AMD's
among them), whose order csrc/merge_karcher.c reproduces, the dot products are summed in C
instead, checked against MKL's own sdot once per process (`own_dots()`): the unit vectors are
then made tile by tile from the inputs in every pass, never materialised, and the dot products
are fused into the pass that scales the mean (three passes per iteration over the mean, the
tangent and the inputs, where the MKL calls need the fp32 units and k more passes). Where the
check fails the lane calls MKL's sdot as above (merge --json's "lanes" says which).

Not on the lane: fp16 compute (the twin's unit vectors are rounded to it; bf16 compute has its
own lane, ops/lane_karcher16.py), tensors of fewer than 8 or not a multiple of 8 elements (the
2-norm's tail order, as for model_stock).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mergestore import native
from mergestore.ops import alloc
from mergestore.ops import lane_math as lm
from mergestore.ops.lane_formats import FMT, format_of, out_array

f32 = np.float32


def reason(compute: str, numel: int | None) -> str | None:
    """None if the lane computes karcher's tensor with the torch path's bits, else why."""
    if compute != "F32":
        return f"karcher in {compute} compute: unit vectors rounded to it (no C kernel)"
    if numel is None or numel < 8 or numel % 8:
        return "karcher: a tensor of fewer than 8, or not a multiple of 8, elements"
    why = lm.missing("F32", dot=True)
    return f"karcher: {why}" if why else None


_own: bool | None = None
_own_lock = threading.Lock()


def own_dots() -> bool:
    """True if the C sum in MKL's generic sdot order gives MKL's sdot bits here: checked once
    per process against MKL's own sdot on vectors whose sum depends on its order (every
    length 1-100 and larger ones up to 2^20 + 37 elements, every residue mod 32 among them)."""
    global _own
    with _own_lock:
        if _own is None:
            _own = _check_own()
        return _own


def _check_own() -> bool:
    kernels = native.kernels
    if kernels is None or not hasattr(kernels, "mkl_def_sdot") or lm.missing("F32", dot=True):
        return False
    lm.one_blas_thread()
    rng = np.random.default_rng(14)
    for n in [*range(1, 101), 1000, 4099, 65536 + 37, (1 << 20) + 37]:
        x, y = _aligned(n), _aligned(n)
        scale = np.exp2(rng.integers(-12, 12, n)).astype(np.float32)
        x[:] = rng.standard_normal(n).astype(np.float32) * scale
        y[:] = rng.standard_normal(n).astype(np.float32)
        if f32(lm.dot32(x, y)).view(np.uint32) != f32(kernels.mkl_def_sdot(x, y)).view(np.uint32):
            return False
    return True


def dot_note() -> str:
    """How the lane takes karcher's dot products here (merge --json's "lanes")."""
    if own_dots():
        return "summed in MKL's generic sdot order (checked against MKL's sdot in this process)"
    return "MKL's sdot called per input (its kernel on this CPU is not one the lane reproduces)"


def _aligned(n: int) -> np.ndarray:
    """An uninitialised fp32 array of n elements at a 64-byte boundary."""
    raw = alloc.empty_bytes(4 * n + 64)
    skip = -raw.ctypes.data % 64
    return raw[skip : skip + 4 * n].view(np.float32)


def merge(
    inputs: Sequence[np.ndarray], shared: Mapping[str, Any], out_dtype: str | None
) -> np.ndarray | None:
    """One output tensor (reason() is None for it) in out_dtype, else fp32; None where the
    twin takes a branch the lane does not (every input's norm under tol), or where lane_math
    cannot give torch's bits (no MKL in torch's library)."""
    try:
        return _merge(inputs, shared, out_dtype)
    except lm.Untraced:
        return None


def _merge(
    inputs: Sequence[np.ndarray], shared: Mapping[str, Any], out_dtype: str | None
) -> np.ndarray | None:
    kernels = native.kernels
    assert kernels is not None
    lm.one_blas_thread()
    max_iter, tol = shared["max_iter"], shared["tol"]
    xs = [np.ascontiguousarray(x).reshape(-1) for x in inputs]
    fmts = [FMT[format_of(x)] for x in xs]
    k, n = len(xs), xs[0].size
    alphas = [1.0 / k] * k
    norms = [  # sphere_norms takes up to 4 vectors a call; each norm is its own reduction
        f32(v)
        for q in range(0, k, 4)
        for v in kernels.sphere_norms(xs[q : q + 4], fmts[q : q + 4], False, 2)
    ]
    live = [i for i, v in enumerate(norms) if float(v) > tol]
    if not live:
        return None
    total = sum(alphas[i] for i in live)
    weights = [alphas[i] / total for i in live]
    if own_dots():
        mean = _fused(
            [xs[i] for i in live], [fmts[i] for i in live], [float(norms[i]) for i in live],
            weights, max_iter, tol,
        )  # fmt: skip
    else:
        mean = _with_mkl(xs, fmts, norms, live, weights, max_iter, tol)
    scale = f32(0.0)  # sum(a * norm): from the int 0, each term an fp32 product
    for a, v in zip(alphas, norms, strict=True):
        scale = scale + f32(a) * v
    out_name = out_dtype or "F32"
    out = out_array(n, out_name)
    kernels.karcher_out(out, FMT[out_name], mean, float(scale))
    return out.reshape(inputs[0].shape)


def _steps(
    weights: Sequence[float], dots: Sequence[float], tol: float
) -> tuple[list[int], list[float], list[float]]:
    """The inputs whose angle to the mean is at least tol, their factors a * (theta /
    sin(theta)) and cosines: torch.clamp(torch.dot(mean, u), -1, 1), arccos, in fp32, a Python
    factor taken in fp32."""
    chosen, factors, cosines = [], [], []
    for i, (a, d) in enumerate(zip(weights, dots, strict=True)):
        c = min(max(f32(d), f32(-1.0)), f32(1.0))
        theta = f32(lm.func(lm.ACOS, float(c), "F32"))
        if float(theta) < tol:
            continue
        chosen.append(i)
        with np.errstate(all="ignore"):
            factors.append(float(f32(a) * (theta / f32(lm.func(lm.SIN, float(theta), "F32")))))
        cosines.append(float(c))
    return chosen, factors, cosines


def _fused(
    xs: list[np.ndarray], fmts: list[int], norms: list[float], weights: list[float],
    max_iter: int, tol: float,
) -> np.ndarray:  # fmt: skip
    """The normalised mean, the dot products in C (own_dots()), the units made per tile."""
    kernels = native.kernels
    assert kernels is not None
    n = xs[0].size
    mean = alloc.empty_bytes(4 * n).view(np.float32)
    mean_norm = kernels.karcher_x_first_mean(mean, xs, fmts, norms, weights)
    if mean_norm < tol:
        kernels.karcher_scale(mean, xs[0], fmts[0], norms[0])
        dots = kernels.karcher_x_dots(mean, None, xs, fmts, norms, True)
    else:
        dots = kernels.karcher_x_dots(mean, mean_norm, xs, fmts, norms, True)
    tangent = alloc.empty_bytes(4 * n).view(np.float32)
    for it in range(max_iter):
        chosen, factors, cosines = _steps(weights, dots, tol)
        step = f32(
            kernels.karcher_x_tangent(
                tangent, mean, [xs[i] for i in chosen], [fmts[i] for i in chosen],
                [norms[i] for i in chosen], factors, cosines,
            )
        )  # fmt: skip
        if float(step) < tol:
            break
        cos, sin = (lm.func(op, float(step), "F32") for op in (lm.COS, lm.SIN))
        size = kernels.karcher_update(mean, tangent, cos, sin, float(step))
        # the next iteration's dot products with the scaling (none after the last)
        last = it == max_iter - 1
        if size > tol or not last:
            dots = kernels.karcher_x_dots(
                mean, size if size > tol else None, xs, fmts, norms, not last
            )
    return mean


def _with_mkl(
    xs: list[np.ndarray], fmts: list[int], norms: list[np.float32], live: list[int],
    weights: list[float], max_iter: int, tol: float,
) -> np.ndarray:  # fmt: skip
    """The normalised mean, the dot products MKL's sdot on fp32 unit arrays."""
    kernels = native.kernels
    assert kernels is not None
    n = xs[0].size
    units = []
    for i in live:  # a live norm is above tol > 0: the twin divides
        u = _aligned(n)
        kernels.karcher_scale(u, xs[i], fmts[i], float(norms[i]))
        units.append(u)

    mean = _aligned(n)
    mean_norm = kernels.karcher_first_mean(mean, units, weights)
    if mean_norm < tol:
        mean[:] = units[0]
    else:
        kernels.karcher_scale(mean, mean, 2, mean_norm)
    tangent = _aligned(n)
    for _ in range(max_iter):
        dots = [lm.dot32(mean, u) for u in units]
        chosen, factors, cosines = _steps(weights, dots, tol)
        step = f32(
            kernels.karcher_tangent(tangent, mean, [units[i] for i in chosen], factors, cosines)
        )
        if float(step) < tol:
            break
        cos, sin = (lm.func(op, float(step), "F32") for op in (lm.COS, lm.SIN))
        size = kernels.karcher_update(mean, tangent, cos, sin, float(step))
        if size > tol:
            kernels.karcher_scale(mean, mean, 2, size)
    return mean
