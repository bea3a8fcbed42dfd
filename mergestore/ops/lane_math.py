"""torch's scalar math for the lanes' scalar steps, with torch's bits, without importing torch.

What torch 2.13 runs on CPU for acos, sin and cos of a float tensor (measured on this x86-64
build: bench/check_trig.py compares every fp32 input):
- **fp32**: ATen's vml calls MKL's VML (vmsAcos, vmsSin, vmsCos, in high-accuracy mode with
  denormals kept and errors ignored) in builds with MKL. Its algorithms are not published, so
  the lane calls those same functions in torch's own library (libtorch_cpu.so, loaded with
  ctypes: ~0.1 CPU-s, against ~1 CPU-s for `import torch`). Without them (a build without MKL)
  `None`, and the caller uses torch.
- **bf16**: Vectorized<BFloat16> widens to fp32, runs SLEEF's u10 functions and rounds to
  nearest even; csrc/sleef_f32.c reproduces them (on CPUs where torch runs its AVX2 or AVX512
  kernels; sin/cos for |x| < 125). Elsewhere `None`.
- The 2-norm of a short fp32 vector (torch.linalg.vector_norm of the stacked chunk norms in
  slerp): `norm32`, torch's AVX2 reduction order (measured).
Everything else the scalar steps do (add, multiply, divide, clamp, compare) is one IEEE
operation in the compute dtype, done here on numpy fp32 scalars and rounded as torch rounds.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import struct
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from mergestore import native

f32 = np.float32
ACOS, SIN, COS = 0, 1, 2
_VML_NAMES = ("vmsAcos", "vmsSin", "vmsCos")
# mkl_vml_defines.h: VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE, as ATen's vml.h passes them
_VML_MODE = 0x2 | 0x00140000 | 0x100

_lock = threading.Lock()
_vml: list[object] | None = None
_vml_tried = False
_blas: tuple[object, object] | None = None
_blas_tried = False


class Untraced(Exception):
    """A scalar step this module cannot give torch's bits for: the caller uses torch."""


def _torch_lib() -> Path | None:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libtorch_cpu.so"
    return path if path.is_file() else None


def _load_vml() -> list[object] | None:
    """MKL's vms* functions in torch's library, or None (no MKL in this torch build)."""
    global _vml, _vml_tried
    with _lock:
        if not _vml_tried:
            _vml_tried = True
            try:
                path = _torch_lib()
                lib = ctypes.CDLL(str(path)) if path is not None else None
                funcs = [getattr(lib, name) for name in _VML_NAMES] if lib else None
            except (OSError, AttributeError):
                funcs = None
            if funcs:
                for fn in funcs:
                    fn.restype = None
                    fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
            _vml = funcs
    return _vml


def _load_blas() -> tuple[object, object] | None:
    """MKL's sdot_ and MKL_Set_Num_Threads_Local in torch's library, or None."""
    global _blas, _blas_tried
    with _lock:
        if not _blas_tried:
            _blas_tried = True
            try:
                path = _torch_lib()
                lib = ctypes.CDLL(str(path)) if path is not None else None
                found = (lib.sdot_, lib.MKL_Set_Num_Threads_Local) if lib else None
            except (OSError, AttributeError):
                found = None
            if found:
                sdot, local = found
                p_int = ctypes.POINTER(ctypes.c_int)
                sdot.restype = ctypes.c_float
                sdot.argtypes = (p_int, ctypes.c_void_p, p_int, ctypes.c_void_p, p_int)
                local.restype, local.argtypes = ctypes.c_int, (ctypes.c_int,)
            _blas = found
    return _blas


def one_blas_thread() -> None:
    """MKL on one thread in the calling thread, as torch.set_num_threads(1) sets it there
    (mkl_set_num_threads_local): torch.dot's order depends on MKL's threads."""
    blas = _load_blas()
    if blas is None:
        raise Untraced("no MKL BLAS in torch's library")
    blas[1](1)  # type: ignore[operator]


def dot32(x: np.ndarray, y: np.ndarray) -> float:
    """torch.dot of two contiguous fp32 vectors: MKL's sdot, which ATen calls (after
    one_blas_thread() in this thread: torch on one thread, as the engine runs karcher)."""
    blas = _load_blas()
    if blas is None or x.size > 0x7FFFFFFF:
        raise Untraced("no MKL BLAS in torch's library")
    n, one = ctypes.c_int(x.size), ctypes.c_int(1)
    return float(
        blas[0](ctypes.byref(n), x.ctypes.data, ctypes.byref(one), y.ctypes.data, ctypes.byref(one))
    )  # type: ignore[operator]


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's flags as /proc/cpuinfo lists them (none where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        return frozenset(text.split("flags")[1].split("\n")[0].split())
    except (OSError, IndexError):
        return frozenset()


def _sleef_ok() -> bool:
    """torch runs its AVX2/AVX512 kernels (SLEEF's FMA functions) on this CPU."""
    if native.kernels is None or os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default":
        return False
    return {"avx2", "fma"} <= cpu_flags()


_SLEEF_OK: bool | None = None


def bf16(x: float) -> float:
    """x (an fp32 value) rounded to bf16, nearest even, as torch rounds."""
    (u,) = struct.unpack("<I", struct.pack("<f", x))
    if (u & 0x7F800000) == 0x7F800000 and u & 0x007FFFFF:
        return x  # NaN stays NaN
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return struct.unpack("<f", struct.pack("<I", u & 0xFFFFFFFF))[0]


def rounded(x: float, compute: str) -> float:
    """x (a Python float) as torch stores it in the compute dtype (via fp32 for bf16)."""
    v = float(f32(x))
    return bf16(v) if compute == "BF16" else v


def func(op: int, x: float, compute: str) -> float:
    """torch's acos/sin/cos (op) of x, a value of the compute dtype; Untraced if not known."""
    if compute == "F32":
        vml = _load_vml()
        if vml is None:
            raise Untraced("no MKL VML in torch's library")
        a = np.array([x], dtype=np.float32)
        r = np.empty(1, dtype=np.float32)
        vml[op](1, a.ctypes.data, r.ctypes.data, _VML_MODE)  # type: ignore[operator]
        return float(r[0])
    global _SLEEF_OK
    if _SLEEF_OK is None:
        _SLEEF_OK = _sleef_ok()
    if compute != "BF16" or not _SLEEF_OK:
        raise Untraced(f"acos/sin/cos in {compute} on this CPU")
    assert native.kernels is not None
    r = native.kernels.sleef_f32(op, x)
    if r is None:
        raise Untraced("sin/cos beyond SLEEF's first reduction range")
    return bf16(r)


# How far (in fp32 ulps) MKL's VML may be from the exact value for bf16_of_func32 to trust the
# exact value's rounding instead: its HA mode is documented within 1 ulp; 8 leaves room.
_MARGIN_ULPS = 8


def bf16_of_func32(op: int, x: float) -> float:
    """bf16(torch's fp32 acos/sin/cos (op) of x), x an fp32 value: what a bf16 lane needs where
    torch rounds an fp32 result to bf16. Without loading MKL where the answer is certain: if
    every fp32 value within _MARGIN_ULPS of the exact value's rounding (math's, in double:
    far inside an fp32 ulp) rounds to the same bf16, MKL's result does too. Near a bf16
    rounding boundary (about one value in 4000), or outside the plain range, MKL's own
    function decides (func: torch's library loaded then; Untraced without MKL)."""
    sure = _certain_bf16(op, x)
    return sure if sure is not None else bf16(func(op, x, "F32"))


def _certain_bf16(op: int, x: float) -> float | None:
    """The bf16 that every fp32 value near op(x) rounds to, or None (see bf16_of_func32)."""
    if not math.isfinite(x) or abs(x) > 1024.0:
        return None
    try:
        exact = (math.acos, math.sin, math.cos)[op](x)
    except ValueError:  # acos outside [-1, 1]: NaN
        return None
    lo = hi = f32(exact)
    for _ in range(_MARGIN_ULPS):
        lo, hi = np.nextafter(lo, f32(-np.inf)), np.nextafter(hi, f32(np.inf))
    tiny = 2.0**-126  # subnormal results, and the sign change at zero: MKL decides
    if min(abs(float(lo)), abs(float(hi))) < tiny or (lo > 0) != (hi > 0):
        return None
    low, high = bf16(float(lo)), bf16(float(hi))
    return low if low == high else None


def missing(compute: str, dot: bool = False) -> str | None:
    """Why func (and dot32 with dot) cannot give torch's bits in this compute dtype, or None
    (for merge --json: such tensors go through torch)."""
    global _SLEEF_OK
    if compute == "F32":
        if _load_vml() is None or (dot and _load_blas() is None):
            return "torch's fp32 acos/sin/cos/dot are MKL's, and its library has none here"
        return None
    if _SLEEF_OK is None:
        _SLEEF_OK = _sleef_ok()
    if compute != "BF16" or not _SLEEF_OK:
        return f"torch's {compute} acos/sin/cos on this CPU are not SLEEF's FMA functions"
    return None


def _fma(a: float, b: float, c: float) -> float:
    """fp32 fma(a, b, c), exact then rounded once."""
    from fractions import Fraction  # loaded with the first call: not by every merge

    return float(f32(float(Fraction(a) * Fraction(b) + Fraction(c))))


def norm32(values: Sequence[float]) -> float:
    """torch.linalg.vector_norm of a short contiguous fp32 vector: eight lanes of plain
    multiply-adds, their sum in order, then the tail: groups of four plain, the rest fused
    (torch's AVX2 kernel; measured on 4000 random vectors of 1-79 elements)."""
    v = [f32(x) for x in values]
    n = len(v)
    whole = n - n % 8
    acc = [f32(0.0)] * 8
    for j in range(0, whole, 8):
        acc = [acc[lane] + v[j + lane] * v[j + lane] for lane in range(8)]
    s = acc[0]
    for lane in range(1, 8):
        s = s + acc[lane]
    plain = whole + 4 * ((n - whole) // 4)
    for j in range(whole, plain):
        s = s + v[j] * v[j]
    out = float(s)
    for j in range(plain, n):
        out = _fma(float(v[j]), float(v[j]), out)
    return float(np.sqrt(f32(out)))
