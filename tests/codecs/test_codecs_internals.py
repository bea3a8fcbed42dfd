"""Thread safety, the literal-only fallback, and per-plane decisions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from codec_data import finetune_bf16, weights

from mergestore.store.codecs import decode_block, encode_block, huffman, zstd
from mergestore.store.codecs.byteplane import BytePlane, join_planes, split_planes

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
    assert enc.spec == "bplane:w=2,rot=1,planes=r.h"
    assert len(enc.payload) < 0.72 * len(raw)
    assert decode_block(enc.spec, enc.payload) == raw


def test_plane_decisions_on_bf16():
    base = weights("BF16", 1 << 16)
    # dense weights: mantissa+sign plane is noise (raw), exponent plane literal-only
    assert encode_block(base, dtype="BF16").spec == "bplane:w=2,rot=1,planes=r.h"
    # a light fine-tune's XOR: exponent plane is almost all zero -> zstd
    small = finetune_bf16(base, 1e-3)
    enc = encode_block(small, dtype="BF16", level=1, reference=base, reference_id=REF_ID)
    assert enc.spec == "xor|bplane:w=2,rot=1,planes=h.z1"


def test_split_join_by_hand():
    # bf16 1.0 = 0x3f80, -2.0 = 0xc000; rotated left by 1: 0x7f00, 0x8001
    raw = bytes([0x80, 0x3F, 0x00, 0xC0])
    rows = split_planes(raw, 2, 1)
    assert rows[0, :2].tolist() == [0x00, 0x01]
    assert rows[1, :2].tolist() == [0x7F, 0x80]
    assert join_planes([rows[0, :2], rows[1, :2]], 2, 1).tobytes() == raw
    # fp32 1.0 = 0x3f800000 -> rotated 0x7f000000: exponent in the top plane
    rows = split_planes(np.array([1.0], "<f4").tobytes(), 4, 1)
    assert rows[:, 0].tolist() == [0, 0, 0, 0x7F]


def test_fixed_plan_encode_matches_decoder():
    raw = weights("F32", 5000)[:-1]
    stage = BytePlane(4, 1, ("r", "z1", "h", "h"))
    payload = stage.encode(raw)
    assert stage.decode(payload) == raw
