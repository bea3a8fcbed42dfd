"""Synthetic block data for the codec tests (small: the suite must stay fast)."""

from __future__ import annotations

import numpy as np
import torch

DTYPES = ["BF16", "F16", "F32", "F64", "I8", "I64", "BOOL", None]


def weights(dtype: str | None, n: int, seed: int = 0, std: float = 0.02) -> bytes:
    """Raw little-endian bytes of `n` N(0, std) values (or ints/bools) in safetensors `dtype`."""
    rng = np.random.default_rng(seed)
    if dtype == "BF16":
        t = torch.from_numpy(rng.normal(0, std, n).astype(np.float32)).to(torch.bfloat16)
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if dtype in ("F16", "F32", "F64"):
        np_dtype = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype]
        return rng.normal(0, std, n).astype(np_dtype).tobytes()
    if dtype == "I8":
        return rng.integers(-5, 5, n, dtype=np.int8).tobytes()
    if dtype == "I64":
        return rng.integers(0, 50_000, n, dtype="<i8").tobytes()
    if dtype == "BOOL":
        return (rng.random(n) < 0.1).astype(np.bool_).tobytes()
    # blob: some text-like bytes
    return (b'{"dtype":"BF16","shape":[%d,%d]}' % (seed, n)) * (n // 32 + 1)


def finetune_bf16(base: bytes, rel: float, seed: int = 1) -> bytes:
    """bf16 base + N(0, rel * std(base)) noise, rounded back to bf16."""
    b = torch.frombuffer(bytearray(base), dtype=torch.bfloat16).float()
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.normal(0, rel * float(b.std()), b.numel()).astype(np.float32))
    return (b + noise).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
