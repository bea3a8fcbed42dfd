"""zstd stage, plus the thread-local zstd contexts and strict frame decoding used by other stages.

zstandard releases the GIL while it (de)compresses, so the store runs codecs in a thread pool.
A ZstdCompressor/ZstdDecompressor must never be used by two threads at once, hence one set of
contexts per thread (`threading.local`).
"""

from __future__ import annotations

import threading
from typing import ClassVar

import zstandard

from mergestore.fast_dataclass import dataclass

from .base import MAX_DECODED_BYTES, Buffer, Stage, corrupt, parse_int

MIN_LEVEL = 1
MAX_LEVEL = 22

_tls = threading.local()


def compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for `level` (created on first use)."""
    cache = getattr(_tls, "compressors", None)
    if cache is None:
        cache = _tls.compressors = {}
    c = cache.get(level)
    if c is None:
        # Content size in the frame lets the decoder check lengths before allocating.
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor."""
    d = getattr(_tls, "decompressor", None)
    if d is None:
        d = _tls.decompressor = zstandard.ZstdDecompressor()
    return d


def compress(data: Buffer, level: int) -> bytes:
    return compressor(level).compress(data)


def _frame_end(data: memoryview) -> int:
    """Offset just past the first zstd frame in `data`, walking its block headers.

    zstandard's one-shot decompress ignores bytes after the frame; walking the headers
    (about 8 per MiB) lets us reject trailing garbage cheaply.
    """
    pos = zstandard.frame_header_size(data)
    has_checksum = bool(data[4] & 0x04)
    n = len(data)
    while True:
        if pos + 3 > n:
            raise corrupt("truncated zstd frame")
        header = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16)
        block_type = (header >> 1) & 3
        pos += 3 + (1 if block_type == 1 else header >> 3)
        if block_type == 3:
            raise corrupt("reserved zstd block type")
        if header & 1:
            break
    return pos + (4 if has_checksum else 0)


def decompress(data: Buffer, expected_size: int | None = None) -> bytes:
    """Decompress exactly one zstd frame that fills `data`; CorruptionError on anything else."""
    view = memoryview(data).cast("B")
    try:
        size = zstandard.frame_content_size(view)
        if size < 0:  # CONTENTSIZE_UNKNOWN / ERROR: our frames always record it
            raise corrupt("zstd frame without content size")
        if size > MAX_DECODED_BYTES or (expected_size is not None and size != expected_size):
            raise corrupt(f"zstd frame claims {size} bytes, expected {expected_size}")
        if _frame_end(view) != len(view):
            raise corrupt("zstd frame does not fill the payload exactly")
        out = decompressor().decompress(view)
    except (zstandard.ZstdError, IndexError) as e:
        raise corrupt(f"zstd: {e}") from None
    if len(out) != size:
        raise corrupt("zstd frame decoded to the wrong length")
    return out


@dataclass(frozen=True)
class Zstd(Stage):
    """Plain zstd over the whole buffer. The level is recorded for provenance only."""

    level: int = 3
    name: ClassVar[str] = "zstd"

    def __post_init__(self) -> None:
        if not MIN_LEVEL <= self.level <= MAX_LEVEL:
            raise ValueError(f"zstd level {self.level} outside [{MIN_LEVEL}, {MAX_LEVEL}]")

    def encode(self, data: Buffer) -> bytes:
        return compress(data, self.level)

    def decode(self, data: Buffer) -> bytes:
        return decompress(data)

    def to_spec(self) -> str:
        return f"{self.name}:{self.level}"

    @classmethod
    def from_spec(cls, params: str | None) -> Zstd:
        if params is None:
            raise ValueError("zstd needs a level, e.g. zstd:3")
        return cls(parse_int(params, MIN_LEVEL, MAX_LEVEL))
