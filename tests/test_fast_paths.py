"""The fast paths a fresh install must have (README quick start): under CI=true these FAIL.

Each fast path below has a slower twin that gives the same result, so nothing else in the suite
notices when one is missing. These tests do: a developer's machine skips with the reason, CI
fails, because CI's timings are the ones the README and docs/benchmarks.md quote.
"""

from __future__ import annotations

import numpy as np
import zstandard
from ci_gate import unavailable

from mergestore import native
from mergestore.store.codecs import huffman


def test_c_kernels_are_built_and_on() -> None:
    if native.kernels is None:
        unavailable(
            "the C kernels (mergestore._native) are off: no C compiler at install time, or "
            "MERGESTORE_NATIVE=0; merges then run in torch, far slower (README)"
        )
    assert native.describe() == "native"
    assert getattr(native.kernels, "HAVE_F16", 0)


def test_literal_only_zstd_encoder_is_on() -> None:
    if not huffman._HAVE_SEQUENCES_API:
        unavailable(
            "zstandard's cffi backend is missing (`cffi` not installed), so byte planes fall "
            "back to regular zstd: ~450 MB/s instead of ~1.5 GB/s (docs/codecs.md)"
        )
    # It really makes literal-only frames: a skewed plane with no repeats compresses, the
    # result is an ordinary zstd frame, and incompressible noise is declined.
    rng = np.random.default_rng(0)
    plane = rng.geometric(0.3, 1 << 16).clip(0, 255).astype(np.uint8)
    padded = np.concatenate([plane, np.zeros(huffman.LITERAL_SLACK, np.uint8)])
    frame = huffman.compress_literals(padded, plane.size)
    assert frame is not None and len(frame) < 0.6 * plane.size
    assert zstandard.ZstdDecompressor().decompress(bytes(frame)) == plane.tobytes()


def test_zstandard_runs_its_c_extension() -> None:
    # python-zstandard can also run on cffi alone (slower); the C extension is the fast one.
    if zstandard.backend != "cext":
        unavailable(f"python-zstandard runs its {zstandard.backend!r} backend, not 'cext'")


def test_lmdb_runs_its_c_extension() -> None:
    # py-lmdb falls back to a cffi binding (or fails over to it with LMDB_FORCE_CFFI) quietly.
    import sys

    import lmdb  # noqa: F401

    if "lmdb.cpython" not in sys.modules:
        unavailable("py-lmdb runs its cffi fallback, not its C extension (lmdb.cpython)")
