"""Check every fp32 input of the lanes' acos/sin/cos against what torch runs (ops/lane_math.py).

1. csrc/sleef_f32.c (bf16 compute's functions, before rounding) against SLEEF's u10 functions
   as torch ships them (Sleef_{acos,sin,cos}f8_u10avx2, and the f16 AVX512 ones where the CPU
   has AVX512F, called from libtorch_cpu.so through a small shim compiled here with cc): every
   fp32 bit pattern; sin/cos where the C functions cover it (|x| < 125), the rest must say so.
2. lane_math's fp32 functions (MKL's vms* in torch's library, ATen's mode) against torch.acos,
   torch.sin and torch.cos on every fp32 input.
3. Every bf16 and fp16 input through lane_math's rounding against torch.

Usage: python bench/check_trig.py [--step N] [--parts 16,sleef,vml] (N > 1: every N-th bit
pattern only).
Runs on one core; about 5 minutes for everything on the 2-core Xeon VM.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mergestore import native
from mergestore.ops import lane_math as lm

SHIM = r"""
#include <immintrin.h>
#include <dlfcn.h>
static void *h;
int shim_init(const char *path) { h = dlopen(path, RTLD_NOW | RTLD_GLOBAL); return h != 0; }
__attribute__((target("avx2,fma"))) int apply8(const char *name, const float *x, float *y, long n) {
    __m256 (*g)(__m256) = (__m256 (*)(__m256))dlsym(h, name);
    if (!g) return -1;
    for (long i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, g(_mm256_loadu_ps(x + i)));
    return 0;
}
__attribute__((target("avx512f"))) int apply16(const char *name, const float *x, float *y, long n) {
    __m512 (*g)(__m512) = (__m512 (*)(__m512))dlsym(h, name);
    if (!g) return -1;
    for (long i = 0; i < n; i += 16) _mm512_storeu_ps(y + i, g(_mm512_loadu_ps(x + i)));
    return 0;
}
"""
NAMES = ("acos", "sin", "cos")
CHUNK = 1 << 24


def _shim(tmp: Path) -> ctypes.CDLL:
    src, lib = tmp / "shim.c", tmp / "shim.so"
    src.write_text(SHIM)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], check=True)
    shim = ctypes.CDLL(str(lib))
    args = (ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long)
    for fn in (shim.apply8, shim.apply16):
        fn.argtypes, fn.restype = args, ctypes.c_int
    assert shim.shim_init(str(lm._torch_lib()).encode()), "cannot load libtorch_cpu.so"
    return shim


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def _avx512() -> bool:
    return "avx512f" in Path("/proc/cpuinfo").read_text()


def check_sleef(shim: ctypes.CDLL, step: int) -> None:
    kernels = native.kernels
    assert kernels is not None
    wide = _avx512()
    for op, name in enumerate(NAMES):
        t0 = time.time()
        bad = covered = 0
        for start in range(0, 1 << 32, CHUNK * step):
            x = np.arange(start, min(start + CHUNK * step, 1 << 32), step, dtype=np.uint64)
            x = x.astype(np.uint32).view(np.float32)
            x = np.concatenate([x, np.zeros(-x.size % 16, np.float32)])
            ours = np.empty_like(x)
            missed = kernels.sleef_f32_array(op, x, ours)
            inside = np.ones(x.shape, bool) if op == 0 else np.abs(x) < 125
            assert missed == int((~inside).sum())
            refs = []
            for fn, suffix in ((shim.apply8, "f8_u10avx2"), (shim.apply16, "f16_u10avx512f")):
                if suffix.startswith("f16") and not wide:
                    continue
                ref = np.empty_like(x)
                rc = fn(f"Sleef_{name}{suffix}".encode(), x.ctypes.data, ref.ctypes.data, x.size)
                assert rc == 0, suffix
                refs.append(ref)
            for ref in refs:
                bad += int((~_same(ours, ref) & inside).sum())
            covered += int(inside.sum())
        print(
            f"C {name} vs SLEEF u10 ({'AVX2 and AVX512' if wide else 'AVX2'}): "
            f"{covered} inputs covered, {bad} differ ({time.time() - t0:.0f} s)",
            flush=True,
        )


def check_fp32_vml(step: int) -> None:
    vml = lm._load_vml()
    assert vml is not None, "torch's library has no MKL VML"
    torch.set_num_threads(1)
    fns = (torch.acos, torch.sin, torch.cos)
    for op, name in enumerate(NAMES):
        t0 = time.time()
        bad = n = 0
        for start in range(0, 1 << 32, CHUNK * step):
            x = np.arange(start, min(start + CHUNK * step, 1 << 32), step, dtype=np.uint64)
            x = x.astype(np.uint32).view(np.float32)
            ours = np.empty_like(x)
            vml[op](x.size, x.ctypes.data, ours.ctypes.data, lm._VML_MODE)
            bad += int((~_same(ours, fns[op](torch.from_numpy(x)).numpy())).sum())
            n += x.size
        print(f"fp32 {name} (lane_math: MKL VML) vs torch: {n} inputs, {bad} differ "
              f"({time.time() - t0:.0f} s)", flush=True)  # fmt: skip


def check_16_bit() -> None:
    for dtype, compute in ((torch.bfloat16, "BF16"), (torch.float16, None)):
        x16 = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
        x = x16.float().numpy()
        for op, name in enumerate(NAMES):
            ours = np.empty_like(x)
            native.kernels.sleef_f32_array(op, x, ours)
            inside = np.ones(x.shape, bool) if op == 0 else np.abs(x) < 125
            if compute:  # lane_math's own rounding (one element at a time)
                ours = np.array([lm.bf16(float(v)) for v in ours], np.float32)
            else:
                ours = torch.from_numpy(ours).to(dtype).float().numpy()
            ref = getattr(torch, name)(x16).float().numpy()
            bad = int((~_same(ours, ref) & inside).sum())
            print(f"{dtype} {name} vs torch: {int(inside.sum())} inputs covered, {bad} differ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=1, help="check every N-th bit pattern")
    ap.add_argument("--parts", default="16,sleef,vml", help="which checks, in order")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for part in args.parts.split(","):
        if part == "16":
            check_16_bit()
        elif part == "vml":
            check_fp32_vml(args.step)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                check_sleef(_shim(Path(tmp)), args.step)


if __name__ == "__main__":
    main()
