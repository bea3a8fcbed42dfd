"""The C decoder of literal-only zstd frames (csrc/huffman_literals.c) against zstd itself.

Every frame is decoded twice: by the kernel into an array, and by python-zstandard. The kernel
must give zstd's bytes, and it must decode the frames our encoder makes by itself (declining
is allowed only for other frames, which the caller then hands to zstd)."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from codec_data import finetune_bf16, frame_blocks, weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergestore import native
from mergestore.store.codecs import decode_block, encode_block, huffman
from mergestore.store.codecs.byteplane import BytePlane, split_planes

KERNEL = getattr(native.kernels, "huf_literals", None)
pytestmark = [
    pytest.mark.needs(KERNEL is not None, "the C kernels (huf_literals) are not built"),
    pytest.mark.needs(huffman._HAVE_SEQUENCES_API, "zstandard's cffi backend (cffi) is missing"),
]
ZSTD = zstandard.ZstdDecompressor()


# The store's two makers of literal-only frames: its own C encoder (one table per plane, in
# front of treeless blocks; zstd where it declines) and zstd's (a table per block).
ENCODERS = {"ours": huffman.compress_literals, "zstd": huffman.zstd_literals}


def literal_frame(plane: np.ndarray, encoder: str = "ours") -> bytes | None:
    """A literal-only frame of a uint8 plane (None: the encoder declined the plane)."""
    padded = np.concatenate([plane, np.zeros(huffman.LITERAL_SLACK, np.uint8)])
    frame = ENCODERS[encoder](padded, plane.size)
    return None if frame is None else bytes(frame)


def kernel_decode(frame: bytes, n: int) -> bytes | None:
    out = np.full(n, 0xA5, np.uint8)
    return out.tobytes() if KERNEL(out, frame) else None


def literal_kinds(frame: bytes) -> set[str]:
    """Kinds of blocks in a frame (codec_data.frame_blocks)."""
    return set(frame_blocks(frame))


def planes_of(n: int, seed: int) -> list[np.ndarray]:
    """Byte planes of the kinds the store codes `h`: bf16 exponent planes, XOR-delta planes of
    fine-tunes (both bytes), and skewed synthetic distributions."""
    rng = np.random.default_rng(seed)
    base = weights("BF16", n, seed=seed)
    tuned = finetune_bf16(base, 3e-2, seed=seed)
    rows = split_planes(base, 2, 0)
    xor = split_planes(tuned, 2, 0, reference=base)
    return [
        rows[1, :n].copy(),
        xor[0, :n].copy(),
        xor[1, :n].copy(),
        rng.geometric(0.3, n).clip(0, 255).astype(np.uint8),
        rng.geometric(0.05, n).clip(0, 255).astype(np.uint8),
        (rng.normal(128, 4, n).clip(0, 255)).astype(np.uint8),
    ]


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize("n", [6, 7, 64, 1023, 1024, 5000, 131071, 131072, 131073, 300_001])
def test_our_frames_decode_to_zstds_bytes(n, encoder):
    decoded = 0
    for plane in planes_of(n, seed=n):
        frame = literal_frame(plane, encoder)
        if frame is None:
            continue
        want = ZSTD.decompress(frame)
        assert want == plane.tobytes()
        got = kernel_decode(frame, n)
        assert got is not None, f"the kernel declined one of our frames ({literal_kinds(frame)})"
        assert got == want
        decoded += 1
    assert decoded >= (3 if n >= 1000 else 0)  # tiny planes may not compress at all


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_the_frames_cover_every_block_kind_the_encoders_write(encoder):
    # So the comparisons above reach new tables, reused (treeless) ones, 1 and 4 streams.
    kinds: set[str] = set()
    for n in (300, 1000, 131072 * 3 + 17):
        for plane in planes_of(n, seed=7):
            frame = literal_frame(plane, encoder)
            if frame is not None:
                kinds |= literal_kinds(frame)
                assert kernel_decode(frame, n) == ZSTD.decompress(frame)
    # small planes (one stream), and blocks whose literals reuse the previous block's table:
    # a plane of three alike blocks, and a short last block after a long one
    rng = np.random.default_rng(1)
    for plane in (
        rng.geometric(0.2, 200).clip(0, 255).astype(np.uint8),
        np.tile(rng.geometric(0.2, 1 << 17).clip(0, 255).astype(np.uint8), 3),
        rng.geometric(0.2, (1 << 17) + 200).clip(0, 255).astype(np.uint8),
    ):
        frame = literal_frame(plane, encoder)
        kinds |= literal_kinds(frame)
        assert kernel_decode(frame, plane.size) == plane.tobytes()
    # ours: one table, in the first block, the rest treeless; planes under 1 KiB go to zstd,
    # and a last block under 1 KiB is stored raw
    want = {"huf1", "huf4", "treeless4", "raw"} if encoder == "ours" else {
        "huf1", "huf4", "treeless1", "treeless4"}  # fmt: skip
    assert want <= kinds, kinds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 400_000),
    n_sym=st.integers(1, 256),
    skew=st.floats(0.01, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_distributions_fuzzed_against_zstd(n, n_sym, skew, seed):
    rng = np.random.default_rng(seed)
    symbols = rng.permutation(256)[:n_sym].astype(np.uint8)
    plane = symbols[rng.geometric(skew, n).clip(1, n_sym) - 1]
    for encoder in ENCODERS:
        frame = literal_frame(plane, encoder)
        if frame is None:
            continue  # not compressible as literals: the store keeps the plane raw
        got = kernel_decode(frame, n)
        assert got is not None, literal_kinds(frame)
        assert got == ZSTD.decompress(frame) == plane.tobytes()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_frames_decode_as_zstd_or_are_declined(data):
    # A damaged frame is either declined (zstd then decides) or decoded to zstd's own bytes.
    seed = data.draw(st.integers(0, 2**32 - 1))
    n = data.draw(st.sampled_from([100, 2000, 140_000]))
    plane = planes_of(n, seed % 1000)[data.draw(st.integers(0, 5))]
    frame = literal_frame(plane, data.draw(st.sampled_from(sorted(ENCODERS))))
    if frame is None:
        return
    damaged = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(damaged) - 1))
        damaged[i] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        damaged = damaged[: data.draw(st.integers(0, len(damaged)))]
    got = kernel_decode(bytes(damaged), n)
    if got is None:
        return
    assert got == ZSTD.decompress(bytes(damaged), max_output_size=n)


def test_other_frames_are_declined_or_decoded_exactly():
    rng = np.random.default_rng(3)
    data = rng.geometric(0.3, 200_000).clip(0, 255).astype(np.uint8).tobytes()
    for frame in (
        zstandard.ZstdCompressor(level=1, write_content_size=True).compress(data),
        zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data),
        zstandard.ZstdCompressor(level=1, write_content_size=False).compress(data),
        zstandard.ZstdCompressor(level=1).compress(b"\x00" * 200_000),
    ):
        n = 200_000
        got = kernel_decode(frame, n)
        assert got is None or got == ZSTD.decompress(frame, max_output_size=n)
    # a frame with matches: the kernel declines (it decodes literal-only blocks only)
    assert kernel_decode(zstandard.ZstdCompressor(level=1).compress(data), len(data)) is None
    # the wrong output size: declined, whatever the frame
    frame = literal_frame(np.frombuffer(data, np.uint8))
    assert kernel_decode(frame, len(data) - 1) is None
    assert kernel_decode(frame, len(data)) == data


def test_byte_plane_blocks_decode_the_same_with_and_without_the_kernel(monkeypatch):
    base = weights("BF16", 300_000, seed=5)
    blocks = [(base, None), (finetune_bf16(base, 1e-1, seed=5), base)]
    for raw, ref in blocks:
        kw = {"reference": ref, "reference_id": b"\x01" * 32} if ref is not None else {}
        enc = encode_block(raw, dtype="BF16", **kw)
        assert ".h" in enc.spec or "h." in enc.spec, enc.spec
        stage = BytePlane.from_spec(enc.spec.split("|")[-1].split(":", 1)[1])
        fast = decode_block(enc.spec, enc.payload, reference=ref)
        out = np.empty(len(raw), np.uint8)
        if "|" not in enc.spec:
            stage.decode_into(memoryview(enc.payload), out, None)
            assert out.tobytes() == raw
        monkeypatch.setattr(huffman, "decompress_literals_into", lambda frame, out: False)
        monkeypatch.setattr(
            "mergestore.store.codecs.byteplane.decompress_literals_into", lambda f, o: False
        )
        slow = decode_block(enc.spec, enc.payload, reference=ref)
        monkeypatch.undo()
        assert fast == slow == raw


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_blocks_decoded_two_at_a_time_whatever_lies_between(encoder):
    # The kernel decodes a frame's 4-stream blocks in pairs, 8 streams at once where the two
    # share a table. Ours: one table, raw blocks (noise) between, an odd count of Huffman
    # blocks. zstd's: a new table in every block (distributions that change every 128 KiB),
    # an odd count. Both must decode as zstd decodes them.
    rng = np.random.default_rng(11)
    seg = 1 << 17
    skewed = [rng.geometric(0.3, seg), rng.geometric(0.05, seg), rng.normal(128, 4, seg)]
    noise = rng.integers(0, 256, seg)
    if encoder == "ours":
        parts = [skewed[0], skewed[0], noise, skewed[1], skewed[2], noise, skewed[0], skewed[1]]
        parts.append(rng.geometric(0.3, 5000))
    else:
        parts = [skewed[0], skewed[1], skewed[2], skewed[0], rng.geometric(0.02, 70_000)]
    plane = np.concatenate([np.asarray(p).clip(0, 255).astype(np.uint8) for p in parts])
    frame = literal_frame(plane, encoder)
    assert frame is not None
    kinds = frame_blocks(frame)
    huffman_blocks = [k for k in kinds if k.endswith("4")]
    assert len(huffman_blocks) % 2 == 1, kinds
    if encoder == "ours":
        assert kinds.count("raw") == 2 and kinds[0] == "huf4", kinds
    else:
        assert kinds.count("huf4") >= 3, kinds
    assert kernel_decode(frame, plane.size) == ZSTD.decompress(frame) == plane.tobytes()


def _blocks(frame: bytes) -> list[tuple[int, bytes]]:
    """A frame's blocks as (block type, body): the body as it lies after its 3-byte header."""
    pos, out = zstandard.frame_header_size(frame), []
    while True:
        h = int.from_bytes(frame[pos : pos + 3], "little")
        btype, size = (h >> 1) & 3, h >> 3
        body = frame[pos + 3 : pos + 3 + (1 if btype == 1 else size)]
        out.append((btype, body))
        pos += 3 + len(body)
        if h & 1:
            return out


def _spliced(blocks: list[tuple[int, bytes]], n: int) -> bytes:
    """One frame of these blocks (single segment, n bytes of content)."""
    out = bytearray(b"\x28\xb5\x2f\xfd\xa0" + n.to_bytes(4, "little"))
    for i, (btype, body) in enumerate(blocks):
        size = 1 if btype == 1 else len(body)
        h = (i == len(blocks) - 1) | btype << 1 | size << 3
        out += h.to_bytes(3, "little") + body
    return bytes(out)


def test_a_new_table_never_overwrites_the_one_a_waiting_block_needs():
    # A 4-stream block waits for a partner with its table, while a 1-stream block and then
    # another 4-stream block each bring a new table: the second new one must not land where
    # the waiting block's table is. Blocks of three frames spliced into one valid frame.
    rng = np.random.default_rng(5)
    seg = 1 << 17
    planes = [
        rng.geometric(0.3, seg).clip(0, 255).astype(np.uint8),
        rng.geometric(0.1, 200).clip(0, 255).astype(np.uint8),  # one stream
        (rng.normal(128, 6, seg).clip(0, 255)).astype(np.uint8),
        rng.geometric(0.02, seg).clip(0, 255).astype(np.uint8),
    ]
    blocks = []
    for plane in planes:
        frame = literal_frame(plane, "zstd")
        assert frame is not None and len(frame_blocks(frame)) == 1
        blocks += _blocks(frame)
    plane = np.concatenate(planes)
    frame = _spliced(blocks, plane.size)
    assert frame_blocks(frame) == ["huf4", "huf1", "huf4", "huf4"]
    assert ZSTD.decompress(frame) == plane.tobytes()
    assert kernel_decode(frame, plane.size) == plane.tobytes()
