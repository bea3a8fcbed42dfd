"""Literal-only ("Huffman-only") zstd frames, for skewed but match-free byte planes.

The exponent plane of float weights has ~2.5 bits of entropy per byte but almost no repeats,
so zstd's match finder burns most of the encode time (~300 MB/s at level 1) for nothing. zstd
1.5.7's ZSTD_compressSequencesAndLiterals lets us hand it every byte as a literal, one block
per 128 KiB: the output is an ordinary zstd frame whose literals are Huffman coded, made at
~1.5 GB/s and decoded by any zstd decoder. python-zstandard exposes that function only through
its cffi backend; if that backend is missing we fall back to tuned-down regular zstd (same
frame format, slower).

With the C kernels, frames are made by our own encoder instead (csrc/huffman_encode.c): one
table per plane, from the strided sample its plan counted, in the first block, the rest
treeless. That skips zstd's per-block histogram and table, ~45% of its time: 1.45-1.7 GB/s
against zstd's 0.8-1.05 on one core, frames ~1% larger. They too are plain zstd frames.
"""

from __future__ import annotations

import threading

import zstandard

from mergestore import native
from mergestore.lazy_numpy import np  # numpy is imported on first use

from .base import Buffer

# zstd reads up to 8 bytes past the literals (wild copies); callers leave this much slack.
LITERAL_SLACK = 8
_BLOCK = 1 << 17  # zstd's maximum block size
SAMPLE_BYTES = 8192  # a plane's sample for its plan and its Huffman table

try:
    from zstandard import _cffi

    _ffi, _lib = _cffi.ffi, _cffi.lib
    _HAVE_SEQUENCES_API = hasattr(_lib, "ZSTD_compressSequencesAndLiterals")
except ImportError:  # pragma: no cover - depends on the installed zstandard build
    _HAVE_SEQUENCES_API = False

_tls = threading.local()


def _cctx():
    """This thread's cffi compression context, set up for explicit-block literal input."""
    cctx = getattr(_tls, "cctx", None)
    if cctx is None:
        cctx = _ffi.gc(_lib.ZSTD_createCCtx(), _lib.ZSTD_freeCCtx)
        for param, value in (
            (_lib.ZSTD_c_blockDelimiters, _lib.ZSTD_sf_explicitBlockDelimiters),
            (_lib.ZSTD_c_literalCompressionMode, 1),  # ZSTD_ps_enable: always Huffman literals
            (_lib.ZSTD_c_compressionLevel, 1),
            (_lib.ZSTD_c_contentSizeFlag, 1),
        ):
            if _lib.ZSTD_isError(_lib.ZSTD_CCtx_setParameter(cctx, param, value)):
                raise RuntimeError("zstd rejected a literal-only compression parameter")
        _tls.cctx = cctx
    return cctx


def _fallback_compressor() -> zstandard.ZstdCompressor:
    c = getattr(_tls, "fallback", None)
    if c is None:
        # Fast strategy with long minimum matches: few matches, so most bytes end up as
        # Huffman-coded literals. ~450 MB/s instead of ~1.5 GB/s, same ratio within ~3%.
        params = zstandard.ZstdCompressionParameters(
            strategy=zstandard.STRATEGY_FAST,
            window_log=17,
            hash_log=12,
            min_match=7,
            target_length=0,
            write_content_size=True,
        )
        c = _tls.fallback = zstandard.ZstdCompressor(compression_params=params)
    return c


def sample_step(n: int) -> int:
    """The stride of a plane's sample of about SAMPLE_BYTES (`n` bytes long)."""
    return max(1, n // SAMPLE_BYTES)


def sample_counts(plane: np.ndarray) -> np.ndarray:
    """Byte counts of a strided sample of about SAMPLE_BYTES of a contiguous uint8 plane (the
    C kernel hist8; ~10 us): what a plane's plan (byteplane._plan_plane) and table are made of."""
    step = sample_step(len(plane))
    hist8 = getattr(native.kernels, "hist8", None)  # None: no kernels, or a build before it
    if hist8 is not None and plane.flags.c_contiguous:
        counts = np.zeros(256, dtype=np.int64)
        hist8(plane, step, counts)
        return counts
    return np.bincount(plane[::step], minlength=256).astype(np.int64)


def compress_literals(
    padded: np.ndarray, n: int, counts: np.ndarray | None = None
) -> Buffer | None:
    """zstd frame holding the first `n` bytes of `padded` as Huffman-coded literals only.

    `padded` must be a contiguous uint8 array with at least n + LITERAL_SLACK bytes; `counts`,
    a sample's byte counts (`sample_counts`; counted here if not given), make the frame's one
    table. Returns None when the bytes do not compress (the caller then stores the plane raw).
    The C encoder (csrc/huffman_encode.c) makes the frame; zstd does where it declines.
    """
    if padded.nbytes < n + LITERAL_SLACK or not padded.flags.c_contiguous:
        raise ValueError("compress_literals needs a contiguous buffer with slack")
    encode = getattr(native.kernels, "huf_encode", None)  # None: no kernels, or an old build
    if encode is not None and n > 0:
        plane = padded[:n]
        out = np.empty(native.kernels.huf_bound(n), dtype=np.uint8)  # no zero fill
        size = encode(out, plane, sample_counts(plane) if counts is None else counts)
        if size >= n:
            return None  # every block stored raw: the plane does not compress
        if size > 0:
            return memoryview(out)[:size]
    return zstd_literals(padded, n)


def zstd_literals(padded: np.ndarray, n: int) -> Buffer | None:
    """`compress_literals` by zstd: a table per 128 KiB block (ZSTD_compressSequencesAndLiterals,
    or regular zstd tuned down where python-zstandard lacks it). None: zstd found a block
    incompressible."""
    if not _HAVE_SEQUENCES_API or n == 0:
        return _fallback_compressor().compress(padded[:n])
    if padded.nbytes < n + LITERAL_SLACK or not padded.flags.c_contiguous:
        raise ValueError("zstd_literals needs a contiguous buffer with slack")
    n_blocks = -(-n // _BLOCK)
    seqs = _ffi.new("ZSTD_Sequence[]", n_blocks)
    for i in range(n_blocks):  # one block-delimiter sequence per block: all literals, no match
        seqs[i].litLength = min(_BLOCK, n - i * _BLOCK)
    capacity = _lib.ZSTD_compressBound(n)
    out = np.empty(capacity, dtype=np.uint8)  # not bytearray: no zero fill of ~n bytes
    size = _lib.ZSTD_compressSequencesAndLiterals(
        _cctx(),
        _ffi.from_buffer(out),
        capacity,
        seqs,
        n_blocks,
        _ffi.from_buffer(padded),
        n,
        padded.nbytes,
        n,
    )
    if _lib.ZSTD_isError(size):
        return None  # typically "cannot produce uncompressed block": incompressible input
    return memoryview(out)[:size]


def decompress_literals_into(frame: Buffer, out: np.ndarray) -> bool:
    """Decode a literal-only frame into `out` (writable uint8, the frame's content size) with
    the C kernel `huf_literals` (csrc/huffman_literals.c: up to 8 symbols per table lookup, no
    fresh output buffer); False if it declined (no kernels, another kind of frame, or a
    damaged one): then decode with zstd, which gives the same bytes or raises its error."""
    kernel = getattr(native.kernels, "huf_literals", None)  # None: no kernels, or an old build
    return kernel is not None and kernel(out, frame)
