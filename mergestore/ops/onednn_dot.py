"""torch.dot of two bf16 vectors as torch runs it on CPUs with AVX-512: which kernel, and how
it cuts the sum into chunks (the C kernels are karcher16_dots_onednn in
csrc/merge_karcher16.c; ops/lane_karcher16.py uses both).

Up to 4096 elements torch.dot is ATen's own kernel. Above, on CPUs with AVX-512 (bw, vl, dq:
torch's mkldnn_bf16_device_check), it is oneDNN's matmul, 1 x n by n x 1 (ATen's
mkldnn_matmul), whose kernel depends on the CPU (torch 2.13, oneDNN 3.12, names from
ONEDNN_VERBOSE):
- with AMX usable by the process: brg_matmul on AMX tiles. The sum in chunks whose size follows
  the L2 cache per core (chunk()), each chunk from zeroed tiles by tdpbf16ps, 32 elements a
  step, the chunk sums added in fp32. Measured on an Intel Xeon with AMX on 41 sizes.
- with AVX-512 BF16 and no AMX: brg_matmul:avx512_core_bf16. Chunks of 512 elements, each from
  zero by vdpbf16ps a pair at a time, the chunk sums added in fp32 (one torch thread; with more
  oneDNN splits a power-of-two n over threads). Measured on the same Xeon with
  ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, not on such a CPU itself, so the lane checks it against
  torch.dot once per process there before it takes a tensor (the_same_as_torch()).
- otherwise (AVX-512 without BF16): a jit gemm, not reproduced.
Each instruction's own rounding is part of the result (no fp32 loop gives it), so the C kernels
run those instructions.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from mergestore import native
from mergestore.ops import lane_math as lm
from mergestore.ops.lane_formats import convert

ONEDNN_MIN = 4096  # ATen's mkldnn_gemm_min_size: torch.dot of more elements goes to oneDNN
TORCH_CHECKED = ("2.13.",)  # torch releases whose oneDNN these rules describe
ONEDNN_KINDS = ("amx", "avx512_bf16")
_ISA_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
_WHY = "torch.dot of more than 4096 bf16 elements runs in oneDNN"


def kind() -> str:
    """How torch.dot sums more than 4096 bf16 elements here: "aten" (no oneDNN: ATen's kernel
    at every size), "amx" or "avx512_bf16" (oneDNN's kernels the C code reproduces), or
    "unknown" (why() says why)."""
    return verdict()[0]


def why() -> str:
    """Why kind() is "unknown" ("" otherwise)."""
    return verdict()[1]


@cache
def verdict() -> tuple[str, str]:
    """(kind, why), once per process."""
    if not {"avx512bw", "avx512vl", "avx512dq"} <= lm.cpu_flags():
        return "aten", ""
    kernels = native.kernels
    kinds = kernels.onednn_dot_kinds() if kernels is not None else []
    var = next((v for v in _ISA_VARS if os.environ.get(v)), None)
    capped = os.environ[var].strip().upper() if var else None
    if capped == "AVX512_CORE_BF16":
        kinds = [k for k in kinds if k != "amx"]
    elif capped not in (None, "ALL"):
        return "unknown", f"{_WHY}, capped by {var}={capped} (not reproduced)"
    if not kinds and {"amx_bf16", "avx512_bf16"} & lm.cpu_flags() and capped is None:
        return "unknown", f"{_WHY}, and the C kernels were built without AMX/AVX-512 BF16 code"
    if not kinds:
        return "unknown", f"{_WHY}, without BF16 instructions here (not reproduced)"
    torch_version = _torch_version()
    if not torch_version.startswith(TORCH_CHECKED):
        return "unknown", f"{_WHY}, checked for torch 2.13 only (torch {torch_version})"
    found = kinds[0]
    if found == "amx" and _l2_per_core() is None:
        return "unknown", f"{_WHY}, on AMX in chunks that follow the L2 size, unknown here"
    if found == "avx512_bf16" and not the_same_as_torch(found):
        return "unknown", f"{_WHY}, whose avx512_core_bf16 sum here is not the lane's (checked)"
    return found, ""


def chunk(kind: str, n: int, l2: int | None = None) -> int:
    """The chunk (elements, a multiple of 32: at least n for one chunk) in which oneDNN sums a
    bf16 dot of n > 4096 elements on one thread, for kind "amx" or "avx512_bf16".

    avx512_bf16 (brgemm_matmul_utils.cpp, compute_blocking_heuristic_avx512): blocks of 512.
    amx (amx_blocking_heuristics.cpp, matmul_amx_blocking_params_micro_t): n in blocks of 32,
    all in one chunk unless a chunk's bytes (the source, the weights and their copy, 2 bytes
    each per element, the output, and an fp32 buffer when n has a tail) pass 3/4 of the L2 per
    core; then the chunk count is that ratio rounded down or up, whichever leaves the smaller
    tail of blocks (a power-of-two n of at least 4096 splits only above twice the limit)."""
    if kind == "avx512_bf16":
        return 512
    l2 = l2 if l2 is not None else _l2_per_core()
    assert kind == "amx" and l2 is not None
    limit, blk = 3 * l2 // 4, 32
    blocks = -(-n // blk)
    size = 6 * blk * blocks + 2 + (4 if n % blk else 0)
    low, high = size // limit, -(-size // limit)
    pow2 = n >= 4096 and n & (n - 1) == 0
    per = blocks
    if low > (2 if pow2 else 0) and blocks > 1:
        down, up = max(blocks // low, 1), -(-blocks // high)
        tail_down, tail_up = blocks % down, blocks % up
        per = up if (tail_down != 0 and tail_up >= tail_down) or tail_up == 0 else down
    return blk * per


CHECK_SIZES = (4104, 8192, 100008, 1 << 20)
_check_lock = threading.Lock()


def the_same_as_torch(kind: str) -> bool:
    """True if karcher16_dots_onednn(kind) gives torch.dot's bits on vectors whose sum shows
    its order (pairs that cancel exactly: the result is all rounding), at CHECK_SIZES, with
    torch on one thread as the engine runs it. Imports torch (~1.5 s)."""
    import torch

    kernels = native.kernels
    assert kernels is not None
    rng = np.random.default_rng(14)
    with _check_lock:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for n in CHECK_SIZES:
                x, units = _cancelling(n, rng)
                size = chunk(kind, n)
                got = kernels.karcher16_dots_onednn(kind, x.copy(), None, list(units), size)
                for u, v in zip(units, got, strict=True):
                    want = torch.dot(_torch_bf16(torch, x), _torch_bf16(torch, u)).float().item()
                    if lm.bf16(v) != want:
                        return False
        finally:
            torch.set_num_threads(threads)
    return True


def _cancelling(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """bf16 bits of x and two units whose exact dot products with x are 0."""
    half = rng.standard_normal((3, n // 2)).astype(np.float32)
    perm = rng.permutation(n)
    sign = np.where(perm < n // 2, 1.0, -1.0).astype(np.float32)
    x = np.concatenate([half[0], half[0]])[perm]
    units = np.stack([np.concatenate([h, h])[perm] * sign for h in half[1:]])
    return convert(x, "BF16"), convert(units, "BF16")  # rounding keeps -v = -(v)


def _torch_bf16(torch, bits: np.ndarray):  # noqa: ANN001, ANN202 (torch is imported lazily)
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)


@cache
def _l2_per_core() -> int | None:
    """Bytes of level-2 cache per core (oneDNN's get_per_core_cache_size(2)), from sysfs."""
    base = Path("/sys/devices/system/cpu/cpu0")
    try:
        siblings = _cpu_count((base / "topology/thread_siblings_list").read_text())
        for index in sorted((base / "cache").glob("index*")):
            if (index / "level").read_text().strip() != "2":
                continue
            if (index / "type").read_text().strip() not in ("Unified", "Data"):
                continue
            size = (index / "size").read_text().strip()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            total = int(size.rstrip("KM")) * scale
            cores = max(_cpu_count((index / "shared_cpu_list").read_text()) // siblings, 1)
            return total // cores
    except (OSError, ValueError):
        return None
    return None


def _cpu_count(cpu_list: str) -> int:
    """How many CPUs a sysfs list ("0-3,8") names."""
    count = 0
    for part in cpu_list.strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def _torch_version() -> str:
    """torch's version from its version.py, without importing torch or importlib.metadata
    (which pulls in email and socket: start-up time)."""
    try:
        spec = find_spec("torch")
        origin = spec.origin if spec else None
        text = Path(origin).with_name("version.py").read_text() if origin else ""
    except (OSError, ImportError, ValueError):
        text = ""
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("'\"")
    return "unknown"
