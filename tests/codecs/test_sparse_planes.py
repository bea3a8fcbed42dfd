"""Sparse byte planes ("s"): the C kernels and their numpy twin make the same segments, both
decode them, every malformed segment is refused, and the chooser uses them where it used zstd-1."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from codec_data import finetune_bf16, weights
from hypothesis import given, settings
from hypothesis import strategies as st

from mergestore import native
from mergestore.api import Store
from mergestore.errors import CorruptionError
from mergestore.store.codecs import (
    byteplane,
    decode_block,
    decode_block_into,
    encode_block,
    huffman,
    sparse,
)
from mergestore.store.repo import FORMAT_VERSION

REF_ID = b"\x05" * 32
KERNELS = native.kernels is not None


def _plane(n: int, positions: list[int], values: list[int]) -> np.ndarray:
    plane = np.zeros(n, dtype=np.uint8)
    for p, v in zip(positions, values, strict=False):
        plane[p % n] = v
    return plane


def _decoders():
    return [sparse.decode_numpy] + ([_decode_c, _decode_joined] if KERNELS else [])


def _decode_c(segment, out) -> None:
    if not native.kernels.sparse_decode(out, segment):
        raise CorruptionError("malformed sparse plane")


def _decode_joined(segment, out) -> None:
    """The plane through join2_sparse: the high bytes of words joined with a zero low plane."""
    words = np.full(len(out), 0xAAAA, dtype=np.uint16)
    sparse.join_into(words, np.zeros(len(out), dtype=np.uint8), False, segment, 0, None)
    out[:] = (words >> 8).astype(np.uint8)


@pytest.mark.skipif(not KERNELS, reason="the fused kernel is C only")
@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 3000),
    positions=st.lists(st.integers(0, 10**6), max_size=100),
    seed=st.integers(0, 2**32 - 1),
    rot=st.integers(0, 15),
    dense_hi=st.booleans(),
    with_ref=st.booleans(),
)
def test_the_fused_join_gives_the_words_of_decode_then_join2(
    n, positions, seed, rot, dense_hi, with_ref
):
    rng = np.random.default_rng(seed)
    plane = (
        _plane(n, positions, list(rng.integers(1, 256, size=100))) if n else np.zeros(0, np.uint8)
    )
    dense = rng.integers(0, 256, size=n, dtype=np.uint8)
    ref = rng.integers(0, 2**16, size=n, dtype=np.uint16) if with_ref else None
    lo, hi = (plane, dense) if dense_hi else (dense, plane)
    want = np.empty(n, dtype=np.uint16)
    native.kernels.join2(want, lo, hi, rot, ref)
    got = np.full(n, 0x5555, dtype=np.uint16)
    sparse.join_into(got, dense, dense_hi, sparse.encode_numpy(plane), rot, ref)
    assert np.array_equal(got, want)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 5000),
    positions=st.lists(st.integers(0, 10**6), max_size=200),
    values=st.lists(st.integers(1, 255), min_size=200, max_size=200),
)
def test_the_kernel_and_the_twin_make_the_same_segment_and_both_decode_it(n, positions, values):
    plane = _plane(n, positions, values) if n else np.zeros(0, dtype=np.uint8)
    twin = sparse.encode_numpy(plane)
    assert bytes(sparse.encode(plane, sparse.bound(n))) == twin
    (count,) = struct.unpack_from("<I", twin)
    assert count == np.count_nonzero(plane)
    for decode in _decoders():
        out = np.full(n, 0xAA, dtype=np.uint8)
        decode(twin, out)
        assert np.array_equal(out, plane)


@pytest.mark.parametrize("gap", [0, 127, 128, 2**14 - 1, 2**14, 2**21, 2**28 + 5])
def test_gaps_of_every_varint_length(gap):
    n = gap + 2
    plane = np.zeros(n, dtype=np.uint8)
    plane[gap] = 9
    plane[-1] = 200
    seg = sparse.encode_numpy(plane)
    assert bytes(sparse.encode(plane, sparse.bound(n))) == seg
    for decode in _decoders():
        out = np.empty(n, dtype=np.uint8)
        decode(seg, out)
        assert np.array_equal(out, plane)


def test_a_segment_over_its_cap_is_declined():
    plane = np.arange(1, 101, dtype=np.uint8)  # 100 non-zero bytes: 4 + 200 bytes
    assert sparse.encode(plane, 203) is None
    assert len(bytes(sparse.encode(plane, 204))) == 204


def _malformed() -> list[tuple[str, bytes, int]]:
    ok = sparse.encode_numpy(_plane(300, [3, 10, 299], [1, 2, 3]))
    return [
        ("shorter than its count", ok[:3], 300),
        ("more entries than the plane", struct.pack("<I", 301) + bytes(602), 300),
        ("more entries than its bytes", ok[:4] + ok[4:9], 300),
        ("a listed zero byte", ok[:4] + b"\x00" + ok[5:], 300),
        ("a position past the plane", ok, 299),
        ("a truncated varint", ok[:-1] + b"\x80", 300),
        ("a varint of six bytes", struct.pack("<I", 1) + b"\x01" + b"\x80" * 5 + b"\x00", 10),
        ("trailing bytes", ok + b"\x00", 300),
        ("too few gaps", struct.pack("<I", 2) + b"\x01\x02" + b"\x00", 300),
    ]


@pytest.mark.parametrize("what,segment,n", _malformed(), ids=[m[0] for m in _malformed()])
def test_every_malformed_segment_is_refused(what, segment, n):
    for decode in _decoders():
        with pytest.raises(CorruptionError):
            decode(segment, np.empty(n, dtype=np.uint8))


def test_a_light_fine_tune_is_stored_sparse_and_decodes_to_its_bytes():
    base = weights("BF16", 1 << 18)
    small = finetune_bf16(base, 1e-3)
    enc = encode_block(small, dtype="BF16", reference=base, reference_id=REF_ID)
    assert enc.spec == "xor|bplane:w=2,rot=0,planes=h.s"
    assert decode_block(enc.spec, enc.payload, reference=base) == small
    # no larger than the zstd-1 frame it replaces, within a few percent of the plane
    z1 = byteplane.BytePlane(2, 0, ("h", "z1"))
    zpayload = z1._encode(small, z1.planes, reference=base)[1]
    assert len(enc.payload) <= 1.05 * sum(memoryview(p).nbytes for p in zpayload)


def test_a_sparse_xor_block_decodes_in_place_to_its_bytes():
    """decode_block_into (the engine's and the reader's path) joins the sparse plane straight
    into the block: the same bytes as decode_block, a damaged segment refused."""
    base = weights("BF16", 1 << 16)
    small = finetune_bf16(base, 1e-3)
    enc = encode_block(small, dtype="BF16", reference=base, reference_id=REF_ID)
    assert enc.spec.endswith("planes=h.s")
    out = np.empty(len(small), dtype=np.uint8)
    decode_block_into(enc.spec, enc.payload, out, reference=base)
    assert out.tobytes() == small
    payload = bytearray(b"".join(bytes(b) for b in enc.buffers))
    payload[-1] ^= 0x80  # the last gap's varint now runs past the segment
    with pytest.raises(CorruptionError):
        decode_block_into(enc.spec, bytes(payload), out, reference=base)


def test_a_plane_denser_than_its_sample_falls_back_to_zstd():
    # the sample (every step-th byte, step even) sees only zero bytes; the plane has a
    # non-zero byte at every odd position: 2 bytes each as "s", far over its cap
    n = 1 << 16
    step = max(1, n // huffman.SAMPLE_BYTES)
    assert step > 1 and step % 2 == 0
    plane = np.zeros(n, dtype=np.uint8)
    plane[1::2] = 7
    words = (plane.astype(np.uint16) << 8).tobytes()  # the plane as the high bytes
    stage, parts = byteplane.BytePlane(2, 0, ("r", "r"))._encode(words, None)
    assert stage.planes == ("s", "z1")
    payload = b"".join(bytes(memoryview(p)) for p in parts)
    assert stage.decode(payload).tobytes() == words


def _folder_bytes(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_a_fine_tune_committed_from_the_cli_uses_sparse_planes_and_checks_out_exactly(
    cli, tiny_family, tmp_path: Path
) -> None:
    path = tmp_path / "s"
    assert cli("--store", path, "init").code == 0
    assert cli("--store", path, "commit", tiny_family.base, "-m", "base", "-b", "main").code == 0
    expert = tiny_family.experts["dense_small"]
    r = cli("--store", path, "commit", expert, "-m", "ds", "-b", "ds", "--base", "main")
    assert r.code == 0
    with Store.open(path) as s:
        specs = {s.repo.codec_spec(loc.codec) for _, loc in s.repo.iter_blocks()}
        assert s.repo.config.format == FORMAT_VERSION == 3
    assert any(spec.endswith((".s", "=s.h", "=s.s")) for spec in specs), specs
    assert cli("--store", path, "checkout", "ds", tmp_path / "out").code == 0
    assert _folder_bytes(tmp_path / "out") == _folder_bytes(Path(expert))
    fsck = cli("--store", path, "fsck", "--full", "--json")
    assert fsck.code == 0 and fsck.json()["ok"]
