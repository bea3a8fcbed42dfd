"""Thread safety, the literal-only fallback, and per-plane decisions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from codec_data import finetune_bf16, weights

from mergestore.store.codecs import decode_block, encode_block, huffman, zstd
from mergestore.store.codecs.byteplane import BytePlane, estimate_ratio, join_planes, split_planes

REF_ID = b"\x03" * 32


def test_thread_pool_matches_serial():
    base = [weights("BF16", 30_000, seed=s) for s in range(6)]
    jobs = [(b, None, "BF16") for b in base] + [(finetune_bf16(b, 1e-2), b, "BF16") for b in base]
    jobs += [(weights(dt, 9000, seed=3), None, dt) for dt in ("F32", "F16", "I64", None)]

    def enc(job):
        raw, ref, dtype = job
        kw = {"reference": ref, "reference_id": REF_ID} if ref is not None else {}
        return encode_block(raw, dtype=dtype, **kw)

    serial = [enc(j) for j in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(enc, jobs * 4))
        decoded = list(
            pool.map(
                lambda pair: decode_block(pair[0].spec, pair[0].payload, reference=pair[1][1]),
                zip(parallel, jobs * 4, strict=True),
            )
        )
    for i, e in enumerate(parallel):
        s = serial[i % len(jobs)]
        assert (e.spec, bytes(e.payload), e.ref) == (s.spec, bytes(s.payload), s.ref)
        assert decoded[i] == jobs[i % len(jobs)][0]


@pytest.mark.needs(huffman._HAVE_SEQUENCES_API, "zstandard's cffi backend (cffi) is missing")
def test_literal_only_frames_are_plain_zstd():
    rows = split_planes(weights("BF16", 50_000), 2, 1)
    frame = huffman.compress_literals(rows[1], 50_000)
    assert frame is not None and len(frame) < 0.4 * 50_000
    assert zstd.decompress(frame, expected_size=50_000) == rows[1, :50_000].tobytes()
    # incompressible bytes: literal-only coding declines
    noise = np.random.default_rng(0).integers(0, 256, 70_000, dtype=np.uint8)
    padded = np.concatenate([noise, np.zeros(huffman.LITERAL_SLACK, np.uint8)])
    assert huffman.compress_literals(padded, 70_000) is None


def test_fallback_without_the_sequences_api(monkeypatch):
    monkeypatch.setattr(huffman, "_HAVE_SEQUENCES_API", False)
    monkeypatch.setattr(huffman._tls, "fallback", None, raising=False)
    raw = weights("BF16", 1 << 16)
    enc = encode_block(raw, dtype="BF16")
    assert enc.spec == "bplane:w=2,rot=0,planes=r.h"
    assert len(enc.payload) < 0.72 * len(raw)
    assert decode_block(enc.spec, enc.payload) == raw


def test_plane_decisions_on_bf16():
    base = weights("BF16", 1 << 16)
    # dense weights: mantissa+sign plane is noise (raw), exponent plane literal-only
    assert encode_block(base, dtype="BF16").spec == "bplane:w=2,rot=0,planes=r.h"
    # a light fine-tune's XOR: exponent plane is almost all zero -> sparse ("s"), or zstd at
    # a level above the fast ones
    small = finetune_bf16(base, 1e-3)
    enc = encode_block(small, dtype="BF16", level=1, reference=base, reference_id=REF_ID)
    assert enc.spec == "xor|bplane:w=2,rot=0,planes=h.s"
    assert decode_block(enc.spec, enc.payload, reference=base) == small
    enc = encode_block(small, dtype="BF16", level=9, reference=base, reference_id=REF_ID)
    assert enc.spec == "xor|bplane:w=2,rot=0,planes=h.z9"


def test_split_join_by_hand():
    # bf16 1.0 = 0x3f80, -2.0 = 0xc000; rotated left by 1: 0x7f00, 0x8001
    raw = bytes([0x80, 0x3F, 0x00, 0xC0])
    rows = split_planes(raw, 2, 1)
    assert rows[0, :2].tolist() == [0x00, 0x01]
    assert rows[1, :2].tolist() == [0x7F, 0x80]
    assert join_planes([rows[0, :2], rows[1, :2]], 2, 1).tobytes() == raw
    # no rotation: planes are the low and the high byte
    rows = split_planes(raw, 2, 0)
    assert rows[0, :2].tolist() == [0x80, 0x00]
    assert rows[1, :2].tolist() == [0x3F, 0xC0]
    assert join_planes([rows[0, :2], rows[1, :2]], 2, 0).tobytes() == raw
    # fp32 1.0 = 0x3f800000 -> rotated 0x7f000000: exponent in the top plane
    rows = split_planes(np.array([1.0], "<f4").tobytes(), 4, 1)
    assert rows[:, 0].tolist() == [0, 0, 0, 0x7F]


def test_fixed_plan_encode_matches_decoder():
    raw = weights("F32", 5000)[:-1]
    stage = BytePlane(4, 1, ("r", "z1", "h", "h"))
    payload = stage.encode(raw)
    assert bytes(stage.decode(payload)) == raw


@pytest.mark.parametrize("rot", range(16))
def test_split_join_every_rotation_of_2_byte_words(rot):
    raw = np.random.default_rng(rot).integers(0, 1 << 16, 999, dtype=np.uint16)
    rows = split_planes(raw.tobytes(), 2, rot)
    rotated = (raw << rot) | (raw >> (16 - rot)) if rot else raw  # independent reference
    assert rows[0, :999].tolist() == (rotated & 0xFF).tolist()
    assert rows[1, :999].tolist() == (rotated >> 8).tolist()
    assert join_planes([rows[0, :999], rows[1, :999]], 2, rot).tobytes() == raw.tobytes()


def test_blocks_written_with_the_old_rotation_stay_readable():
    raw = weights("BF16", 40_000)
    stage, payload = BytePlane.encode_adaptive(raw, 2, 1, 3)
    assert stage.to_spec() == "bplane:w=2,rot=1,planes=r.h"
    assert decode_block(stage.to_spec(), payload) == raw


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_estimate_ratio_is_close_to_the_real_encoding(dtype):
    raw = weights(dtype, 200_000)
    width, rot = {"BF16": (2, 0), "F16": (2, 0), "F32": (4, 1)}[dtype]
    _stage, payload = BytePlane.encode_adaptive(raw, width, rot, 3)
    real = len(payload) / len(raw)
    assert abs(estimate_ratio(raw, width, rot) - real) < 0.03


def test_delta_choice_without_trial_encode_is_near_the_best():
    base = weights("BF16", 1 << 18)
    for rel in (1e-3, 2e-2, 1e-1, 1.0):
        ft = finetune_bf16(base, rel)
        enc = encode_block(ft, dtype="BF16", reference=base, reference_id=REF_ID)
        delta = encode_block(
            ft, dtype="BF16", reference=base, reference_id=REF_ID, allowed={"xor", "bplane"}
        )
        plain = encode_block(ft, dtype="BF16", allowed={"bplane"})
        best = min(len(delta.payload), len(plain.payload))
        assert len(enc.payload) <= 1.06 * best, rel
        assert decode_block(enc.spec, enc.payload, reference=base if enc.ref else None) == ft


@pytest.mark.parametrize("rot", [0, 1, 7, 8, 15])
@pytest.mark.parametrize("n", [1, 999, 4096])
def test_split_with_reference_is_the_split_of_the_xor(rot, n):
    # the encoder's fused XOR + split (C split2, or numpy) against an XOR made first
    rng = np.random.default_rng(n + rot)
    raw = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    ref = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    rows = split_planes(raw.tobytes(), 2, rot, ref.tobytes())
    x = raw ^ ref
    rotated = (x << rot) | (x >> (16 - rot)) if rot else x  # independent reference
    assert rows[0, :n].tolist() == (rotated & 0xFF).tolist()
    assert rows[1, :n].tolist() == (rotated >> 8).tolist()


@pytest.mark.parametrize("rot", [0, 1, 8, 9, 31])
@pytest.mark.parametrize("n", [1, 999, 4096])
@pytest.mark.parametrize("kernels", [True, False])
def test_split_of_32_bit_words_and_its_join(rot, n, kernels, monkeypatch):
    """split_planes and join_planes of 32-bit words (C split4 and join4, or numpy) against an
    independent rotation; the split XORs the reference in."""
    from mergestore import native

    if kernels and native.kernels is None:
        pytest.skip("the C kernels are not built")
    if not kernels:
        monkeypatch.setattr(native, "kernels", None)
    rng = np.random.default_rng(n + rot)
    raw = rng.integers(0, 1 << 32, n, dtype=np.uint32)
    ref = rng.integers(0, 1 << 32, n, dtype=np.uint32)
    x = raw ^ ref
    rotated = ((x << np.uint32(rot)) | (x >> np.uint32(32 - rot))) if rot else x
    rows = split_planes(raw.tobytes(), 4, rot, ref.tobytes())
    for i in range(4):
        assert rows[i, :n].tolist() == ((rotated >> np.uint32(8 * i)) & 0xFF).tolist()
    planes = [rows[i, :n].copy() for i in range(4)]
    assert np.array_equal(join_planes(planes, 4, rot), x)


@pytest.mark.parametrize(("width", "rot"), [(2, 0), (2, 1), (2, 9), (4, 0), (4, 1), (4, 17)])
@pytest.mark.parametrize("n", [1, 3001, 1 << 18])
def test_estimate_ratio_kernel_matches_numpy(width, rot, n):
    """The C estimate_ratio gives the numpy twin's guess (to rounding: its entropy sums in byte
    order) on random, constant and float-like words, every sample step, a tail ignored."""
    from mergestore import native
    from mergestore.store.codecs import byteplane

    if native.kernels is None:
        pytest.skip("the C kernels are not built")
    rng = np.random.default_rng(n + rot)
    floats = rng.standard_normal(n).astype(np.float32)
    words = {
        "random": rng.integers(0, 256, n * width, dtype=np.uint8).tobytes(),
        "zeros": bytes(n * width),
        "floats": (floats if width == 4 else floats.view(np.uint32) >> 16)
        .astype(np.float32 if width == 4 else np.uint16)
        .tobytes(),
    }
    for kind, data in words.items():
        data += b"\x01" * (width - 1)  # a partial word: not sampled
        for sample_words in (8192, 100, 1):
            view = memoryview(data)
            step = max(1, n // sample_words)
            got = byteplane.estimate_ratio(data, width, rot, sample_words)
            want = byteplane._estimate_ratio_numpy(view, width, rot, step)
            assert got == pytest.approx(want, abs=1e-12), (kind, sample_words)


def _joined(payload) -> bytes:
    """A candidate's payload as bytes: a byte-plane payload is a tuple of parts (Encoded.parts)."""
    return b"".join(payload) if isinstance(payload, tuple) else bytes(payload)


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("n", [4097, 1 << 16])  # odd byte counts leave a tail to XOR
def test_delta_candidate_is_the_plain_chain_of_the_xor(dtype, n):
    # encode_block's delta candidate splits block XOR reference without making it first: its
    # stored bytes are those of the plain chain run on the XOR stage's output
    from mergestore.store.codecs import choose
    from mergestore.store.codecs.registry import CODECS

    base = weights(dtype, n // 2) + b"\x22"
    for flip in (1, 3, 255):  # a light, a heavier and a dense change
        ft = bytearray(base)
        ft[::flip] = bytes((b ^ 0x5A) for b in ft[::flip])
        ft = bytes(ft)
        x = (np.frombuffer(ft, np.uint8) ^ np.frombuffer(base, np.uint8)).tobytes()
        for allow in (frozenset(CODECS), frozenset({"bplane"})):
            fused = choose._plain(ft, dtype, 3, allow, base)
            plain = choose._plain(x, dtype, 3, allow)
            assert fused is not None and plain is not None
            assert [s.to_spec() for s in fused[0]] == [s.to_spec() for s in plain[0]]
            assert _joined(fused[1]) == _joined(plain[1])
        enc = encode_block(ft, dtype=dtype, reference=base, reference_id=REF_ID)
        assert decode_block(enc.spec, enc.payload, reference=base if enc.ref else None) == ft


def test_plane_sample_counts_match_bincount():
    from mergestore import native

    if native.kernels is None:
        pytest.skip("the C kernels are not built")
    rng = np.random.default_rng(5)
    for n in (1, 3, 8191, 8192, 100_003):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        data[: n // 2] = 0  # a run of one value
        for step in (1, 2, 3, 5, 64, n):
            counts = np.zeros(256, dtype=np.int64)
            native.kernels.hist8(data, step, counts)
            assert counts.tolist() == np.bincount(data[::step], minlength=256).tolist()
    with pytest.raises(ValueError):
        native.kernels.hist8(data, 0, np.zeros(256, dtype=np.int64))
    with pytest.raises(ValueError):
        native.kernels.hist8(data, 1, np.zeros(255, dtype=np.int64))


def test_plane_plan_kernel_picks_the_numpy_twins_codes():
    """plane_plan (C) decides every plane as _plan_plane_numpy does, with the same counts:
    planes whose sampled entropy falls on both sides of RAW_ENTROPY_BITS, and whose zero
    share falls on both sides of SPARSE_ZERO_FRACTION."""
    from mergestore import native
    from mergestore.store.codecs import byteplane

    if native.kernels is None:
        pytest.skip("the C kernels are not built")
    rng = np.random.default_rng(11)
    seen = set()
    for n in (1, 7, 8192, 65_536, 524_288):
        planes = [rng.integers(0, k, n, dtype=np.uint16).astype(np.uint8) for k in (2, 200, 256)]
        planes += [rng.integers(0, k, n, dtype=np.uint16).astype(np.uint8) for k in (220, 223, 226)]
        for zeros in (0.95, 0.969, 0.975, 1.0):
            p = rng.integers(1, 256, n, dtype=np.uint16).astype(np.uint8)
            p[rng.random(n) < zeros] = 0
            planes.append(p)
        for plane in planes:
            for level in (1, 3, 9):
                code, counts = byteplane._plan_plane(plane, level)
                want, want_counts = byteplane._plan_plane_numpy(plane, level)
                assert code == want
                assert counts.tolist() == want_counts.tolist()
                seen.add(code)
    assert seen == {"r", "h", "s", "z9"}  # every branch of the plan was taken
    with pytest.raises(ValueError):
        native.kernels.plane_plan(planes[0], 0, 0.97, 7.8, np.zeros(256, dtype=np.int64))
    with pytest.raises(ValueError):
        native.kernels.plane_plan(planes[0], 1, 0.97, 7.8, np.zeros(255, dtype=np.int64))


WHOLE_CODES = [
    *[(2, c) for c in [("r", "h"), ("h", "h"), ("h", "s"), ("s", "h"), ("s", "s")]],
    *[(4, c) for c in [("r", "r", "h", "h"), ("h", "h", "h", "s"), ("s", "s", "s", "s")]],
    (4, ("r", "h", "s", "h")),
]


@pytest.mark.parametrize(("width", "codes"), WHOLE_CODES)
@pytest.mark.parametrize("n", [4, 4097, 4099, 200_000])  # not a multiple of the width: a tail
@pytest.mark.parametrize("with_reference", [False, True])
def test_whole_block_decode_kernel_matches_the_python_path(width, codes, n, with_reference):
    """bplane16_into and bplane32_into (one C call per block) decode every r/h/s plane
    combination, a tail and an XOR reference into the bytes the per-plane Python path gives;
    a damaged payload makes them decline, and the Python path then raises its error."""
    from mergestore import native
    from mergestore.store.codecs.base import corrupt

    if native.kernels is None:
        pytest.skip("the C kernels are not built")
    whole = getattr(native.kernels, {2: "bplane16_into", 4: "bplane32_into"}[width])
    rng = np.random.default_rng(n)
    data = rng.integers(0, 256, n, dtype=np.uint8)
    body = (n // width) * width
    data[:body:width][rng.random(n // width) < 0.98] = 0  # mostly-zero low bytes
    data[width - 1 : body : width][rng.random(n // width) < 0.5] = 0x3C
    ref = rng.integers(0, 256, n, dtype=np.uint8) if with_reference else None
    stored = data if ref is None else data ^ ref
    stage = BytePlane(width, 0, codes)
    payload = stage.encode(stored.tobytes())
    out = np.empty(n, dtype=np.uint8)
    scratch = [np.empty(n, np.uint8) for _ in range(width)]
    assert whole(out, payload, 0, "".join(codes), ref, *scratch)
    assert out.tobytes() == data.tobytes()
    out[:] = 0
    stage.decode_into(payload, out, ref)  # through the kernel
    assert out.tobytes() == data.tobytes()
    assert bytes(decode_block(stage.to_spec(), payload)) == stored.tobytes()
    damaged = bytearray(payload)
    damaged[8] ^= 0xFF  # the first segment's length
    assert not whole(out, bytes(damaged), 0, "".join(codes), ref, *scratch)
    with pytest.raises(type(corrupt("x"))):
        stage.decode_into(bytes(damaged), out, ref)
    other = "hz" if width == 2 else "hhhz"
    assert not whole(out, payload, 0, other, ref, *scratch)  # not its code


@pytest.mark.parametrize("n", [4, 1001, 4096])
def test_a_32_bit_block_with_a_zstd_plane_decodes_into_the_callers_memory(n):
    """A plane the whole-block kernel does not take (zstd) sends decode_into to the per-plane
    path: planes decoded one by one, then join4 with the reference, and the tail."""
    from mergestore import native

    if native.kernels is None:
        pytest.skip("the C kernels are not built")
    rng = np.random.default_rng(n)
    data = rng.integers(0, 256, n + 3, dtype=np.uint8)
    ref = rng.integers(0, 256, n + 3, dtype=np.uint8)
    stage = BytePlane(4, 1, ("r", "z1", "h", "s"))
    payload = stage.encode((data ^ ref).tobytes())
    out = np.empty(n + 3, dtype=np.uint8)
    stage.decode_into(payload, out, ref)
    assert out.tobytes() == data.tobytes()


def test_whole_block_decode_declines_zstd_frames_and_the_python_path_decodes_them():
    """A plane coded "h" may be an ordinary zstd frame with matches (BytePlane.encode's
    fallback when literal-only coding declines): the kernel declines it, and decode_into
    still decodes it with zstd."""
    import struct

    from mergestore import native

    if native.kernels is None:
        pytest.skip("the C kernels are not built")
    rng = np.random.default_rng(3)
    data = np.tile(rng.integers(0, 256, 1000, dtype=np.uint8), 100)  # long repeats: matches
    lo, hi = data[0::2].tobytes(), data[1::2].tobytes()
    frames = [zstd.compress(np.frombuffer(p, np.uint8), 3) for p in (lo, hi)]
    sizes = [memoryview(f).nbytes for f in frames]
    payload = struct.pack("<Q2I", len(data), *sizes) + b"".join(bytes(f) for f in frames)
    out = np.empty(len(data), dtype=np.uint8)
    scratch = np.empty(len(data), np.uint8), np.empty(len(data), np.uint8)
    assert not native.kernels.bplane16_into(out, payload, 0, "hh", None, *scratch)
    BytePlane(2, 0, ("h", "h")).decode_into(payload, out, None)
    assert out.tobytes() == data.tobytes()
