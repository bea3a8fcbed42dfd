"""The lane arrays' formats: dtype names, views, conversions rounded as torch rounds, and the
small helpers every lane module shares (lanes.py dispatches; lane_random, lane_sphere and the
rest take these from here, below the dispatcher)."""

from __future__ import annotations

from collections.abc import Sequence

from mergestore import native
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.ops import alloc, lane16
from mergestore.ops.lane16 import f32, round16, sum_f32

FMT = {"BF16": 0, "F16": 1, "F32": 2}
NUMPY = {"BF16": "uint16", "F16": "float16", "F32": "float32"}  # numpy dtype names
_NAME = {"uint16": "BF16", "float16": "F16", "float32": "F32"}


def format_of(a: np.ndarray) -> str:
    """The safetensors dtype name of a lane array ("BF16", "F16" or "F32")."""
    return _NAME[a.dtype.name]


def view(data: np.ndarray, dtype: str) -> np.ndarray:
    """Bytes (or any array) as a lane array of the given safetensors dtype."""
    return data.view(NUMPY[dtype])


def promoted(dtypes: Sequence[str]) -> str:
    """torch.promote_types over the inputs' dtypes (bf16 with fp16 -> fp32)."""
    kinds = set(dtypes)
    return kinds.pop() if len(kinds) == 1 else "F32"


def convert(x: np.ndarray, dtype: str) -> np.ndarray:
    """x in another float format, rounded as torch's .to() rounds; x itself if it has it."""
    if format_of(x) == dtype:
        return x
    assert native.kernels is not None
    out = alloc.empty_bytes(x.size * np.dtype(NUMPY[dtype]).itemsize).view(NUMPY[dtype])
    src = np.ascontiguousarray(x).reshape(-1)
    native.kernels.convert(out, FMT[dtype], src, FMT[format_of(x)])
    return out.reshape(x.shape)


def flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(-1)


def out_array(n: int, dtype: str) -> np.ndarray:
    return alloc.empty_bytes(n * np.dtype(NUMPY[dtype]).itemsize).view(NUMPY[dtype])


def all_finite(x: np.ndarray) -> bool:
    """No infinity or NaN in x (a lane array: bf16 or fp16 bits, or fp32): one C scan, no
    whole-array temporaries (ops.lane16.finite)."""
    return lane16.finite(flat(x), FMT[format_of(x)])


def gta_divisor32(weights: Sequence[float]) -> float:
    """GTA's no-consensus divisor in fp32: the weights' sum in order from 0, replaced by 1
    below 1e-8 in magnitude (torch compares an fp32 tensor with 1e-8 rounded to fp32)."""
    divisor = sum_f32(weights)
    return 1.0 if abs(divisor) < f32([1e-8])[0] else divisor


def rounded(values: Sequence[float], compute: str) -> list[float]:
    """Python floats as torch rounds them to a tensor of the compute dtype ("F32", "BF16" or
    "F16")."""
    return f32(values) if compute == "F32" else round16(values, compute == "F16")
