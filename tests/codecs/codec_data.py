"""Synthetic block data for the codec tests (small: the suite must stay fast)."""

from __future__ import annotations

import numpy as np
import torch
import zstandard

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


def frame_blocks(frame: bytes) -> list[str]:
    """A zstd frame's blocks in order, read independently of both codecs (RFC 8878
    3.1.1.2-3.1.1.3.1): "raw", "rle", or a compressed block's literals: "raw-lit", "rle-lit",
    "huf1"/"huf4" (a new table, 1 or 4 streams), "treeless1"/"treeless4" (the previous one's).
    The last block must end the frame."""
    pos, kinds = zstandard.frame_header_size(frame), []
    while True:
        h = int.from_bytes(frame[pos : pos + 3], "little")
        pos += 3
        btype, size = (h >> 1) & 3, h >> 3
        if btype == 0:
            kinds.append("raw")
        elif btype == 1:
            kinds.append("rle")
            size = 1
        else:
            b0 = frame[pos]
            ltype, fmt = b0 & 3, (b0 >> 2) & 3
            names = ("raw-lit", "rle-lit", "huf", "treeless")
            kinds.append(names[ltype] + ("" if ltype < 2 else "1" if fmt == 0 else "4"))
        pos += size
        if h & 1:
            assert pos == len(frame)
            return kinds
