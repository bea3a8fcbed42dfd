"""The C encoder of literal-only zstd frames (csrc/huffman_encode.c) against zstd itself.

Its frames must be plain zstd frames (zstd's decoder gives the plane back) whatever counts the
table is built from, write the table once, and stay within a few percent of zstd's own size."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from codec_data import finetune_bf16, frame_blocks, weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergestore import native
from mergestore.store.codecs import huffman
from mergestore.store.codecs.byteplane import split_planes

ENCODE = getattr(native.kernels, "huf_encode", None)
pytestmark = [
    pytest.mark.needs(ENCODE is not None, "the C kernels (huf_encode) are not built"),
    pytest.mark.needs(huffman._HAVE_SEQUENCES_API, "zstandard's cffi backend (cffi) is missing"),
]
ZSTD = zstandard.ZstdDecompressor()


def encode(plane: np.ndarray, counts: np.ndarray | None = None) -> bytes | None:
    """huf_encode's frame of `plane` (table from `counts`, else the plane's sample); None if
    it declined."""
    out = np.empty(native.kernels.huf_bound(plane.size), np.uint8)
    c = huffman.sample_counts(plane) if counts is None else counts
    size = ENCODE(out, plane, c)
    return None if size < 0 else out[:size].tobytes()


def store_planes(n: int, seed: int) -> list[np.ndarray]:
    """Planes the store codes `h`: a bf16 exponent plane and a fine-tune's XOR-delta planes."""
    base = weights("BF16", n, seed=seed)
    tuned = finetune_bf16(base, 3e-2, seed=seed)
    rows = split_planes(base, 2, 1)
    xor = split_planes(tuned, 2, 1, reference=base)
    return [rows[1, :n].copy(), xor[0, :n].copy(), xor[1, :n].copy()]


@pytest.mark.parametrize("n", [1024, 1025, 5000, 131071, 131072, 131073, 131072 + 1023, 600_000])
def test_frames_are_zstd_frames_with_one_table(n):
    for plane in store_planes(n, seed=n):
        frame = encode(plane)
        assert frame is not None
        assert ZSTD.decompress(frame) == plane.tobytes()
        kinds = frame_blocks(frame)
        assert len(kinds) == -(-n // (1 << 17)) and set(kinds) <= {"huf4", "treeless4", "raw"}
        first = kinds.index("huf4")  # the table, once: later blocks reuse it
        assert all(k in ("treeless4", "raw") for k in kinds[first + 1 :]), kinds
        assert "raw" not in kinds[:-1] and (kinds[-1] != "raw" or n % (1 << 17) < 1024)


def test_size_is_close_to_zstds():
    ours = theirs = 0
    for seed in range(4):
        for plane in store_planes(400_000, seed):
            padded = np.concatenate([plane, np.zeros(huffman.LITERAL_SLACK, np.uint8)])
            ours += len(encode(plane))
            theirs += len(huffman.zstd_literals(padded, plane.size))
    assert ours <= 1.04 * theirs, (ours, theirs)


def test_symbols_the_sample_missed_are_coded():
    # Every 16th byte is sampled; the rare symbols sit only between the samples.
    n = 1 << 18
    plane = np.full(n, 7, np.uint8)
    plane[1::16] = np.arange(n // 16) % 256
    counts = huffman.sample_counts(plane)
    assert (counts > 0).sum() < 10
    frame = encode(plane, counts)
    assert frame is not None and len(frame) < n // 2
    assert ZSTD.decompress(frame) == plane.tobytes()


@pytest.mark.parametrize("values", [(7,), (0, 1), (254, 255), (0, 255), (3, 200, 201)])
def test_tiny_alphabets(values):
    # One value (a second symbol is added: a Huffman code needs two), two (weights written
    # 4 bits each: FSE cannot code a single weight), far apart, at the top.
    rng = np.random.default_rng(len(values))
    plane = np.array(values, np.uint8)[rng.integers(0, len(values), 200_000)]
    frame = encode(plane)
    # at most 2 bits a byte: (3, 200, 201) pays for codes of the 195 bytes between 3 and 200
    assert frame is not None and len(frame) <= plane.size // 4 + 100
    assert ZSTD.decompress(frame) == plane.tobytes()
    out = np.empty(plane.size, np.uint8)
    assert native.kernels.huf_literals(out, frame) and out.tobytes() == plane.tobytes()


def test_incompressible_blocks_are_stored_raw():
    noise = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8)
    frame = encode(noise)
    assert frame_blocks(frame) == ["raw", "raw", "raw"]
    assert ZSTD.decompress(frame) == noise.tobytes()
    padded = np.concatenate([noise, np.zeros(huffman.LITERAL_SLACK, np.uint8)])
    assert huffman.compress_literals(padded, noise.size) is None  # the store keeps it raw


def test_declines_and_bad_arguments():
    plane = np.zeros(1023, np.uint8)
    assert encode(plane) is None  # under 1 KiB: zstd's job
    padded = np.zeros(1023 + huffman.LITERAL_SLACK, np.uint8)
    frame = huffman.compress_literals(padded, 1023)  # ... which compress_literals hands it
    assert frame is not None and ZSTD.decompress(bytes(frame)) == bytes(1023)
    counts = np.zeros(256, np.int64)
    with pytest.raises(ValueError):
        ENCODE(np.empty(10, np.uint8), np.zeros(5000, np.uint8), counts)  # dst too small
    with pytest.raises(ValueError):
        ENCODE(np.empty(10_000, np.uint8), np.zeros(5000, np.uint8), counts[:255])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1024, 300_000),
    n_sym=st.integers(1, 256),
    skew=st.floats(0.01, 0.95),
    counts=st.one_of(
        st.none(),
        st.lists(st.integers(-(2**63), 2**63 - 1), min_size=256, max_size=256),
        st.lists(st.integers(0, 10), min_size=256, max_size=256),
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_counts_give_a_frame_of_the_plane(n, n_sym, skew, counts, seed):
    # The table may be built from counts that have nothing to do with the plane (huge,
    # negative, zero): every symbol stays codable, so the frame is still the plane's.
    rng = np.random.default_rng(seed)
    symbols = rng.permutation(256)[:n_sym].astype(np.uint8)
    plane = symbols[rng.geometric(skew, n).clip(1, n_sym) - 1]
    frame = encode(plane, None if counts is None else np.array(counts, np.int64))
    assert frame is not None
    assert ZSTD.decompress(frame) == plane.tobytes()
    out = np.empty(n, np.uint8)
    assert native.kernels.huf_literals(out, frame) and out.tobytes() == plane.tobytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1024, 400_000),
    lo=st.integers(0, 255),
    width=st.integers(0, 255),
    skew=st.floats(0.01, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_pairs_give_the_same_frame(n, lo, width, skew, seed):
    # Two codes a lookup (a table of every pair of the plane's bytes) against one: the same
    # bits, on any range of bytes, any length (odd tails, a short last stream).
    rng = np.random.default_rng(seed)
    hi = min(255, lo + width)
    plane = (lo + (rng.geometric(skew, n) - 1) % (hi - lo + 1)).astype(np.uint8)
    counts = huffman.sample_counts(plane)
    frames = []
    for pairs in (0, 1, -1):
        out = np.empty(native.kernels.huf_bound(n), np.uint8)
        size = ENCODE(out, plane, counts, pairs)
        assert size > 0
        frames.append(out[:size].tobytes())
    assert frames[0] == frames[1] == frames[2]
    assert ZSTD.decompress(frames[1]) == plane.tobytes()


@pytest.mark.parametrize("n", [600_000, 1 << 19])
def test_store_planes_with_pairs(n):
    # The planes a merge writes, coded both ways (the exponent plane takes pairs by itself).
    for plane in store_planes(n, seed=n):
        c = huffman.sample_counts(plane)
        one, two = (np.empty(native.kernels.huf_bound(n), np.uint8) for _ in range(2))
        a, b = ENCODE(one, plane, c, 0), ENCODE(two, plane, c, 1)
        assert a == b > 0 and one[:a].tobytes() == two[:b].tobytes()
        assert ZSTD.decompress(two[:b].tobytes()) == plane.tobytes()
