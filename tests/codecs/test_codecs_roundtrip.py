"""decode(encode(x)) == x for every codec, chain and dtype, including awkward lengths."""

from __future__ import annotations

import os

import numpy as np
import pytest
from codec_data import DTYPES, finetune_bf16, weights

from mergestore import native
from mergestore.store.codecs import (
    decode_block,
    decode_block_into,
    encode_block,
    spec_codec_names,
    spec_uses_reference,
)

REF_ID = bytes(range(32))
CODEC_SETS = [
    frozenset({"raw"}),
    frozenset({"zstd"}),
    frozenset({"bplane"}),
    frozenset({"zstd", "raw"}),
    frozenset({"bplane", "zstd", "raw"}),
    None,
]


def roundtrip(raw: bytes, **kw) -> str:
    enc = encode_block(raw, **kw)
    ref = kw.get("reference") if spec_uses_reference(enc.spec) else None
    assert decode_block(enc.spec, bytes(enc.payload), reference=ref) == raw
    # decode also accepts a memoryview payload
    assert decode_block(enc.spec, memoryview(bytes(enc.payload)), reference=ref) == raw
    # and decodes into the caller's memory (16-bit byte planes: the C kernels' path)
    out = np.full(len(raw), 0xA5, dtype=np.uint8)
    decode_block_into(enc.spec, bytes(enc.payload), out, reference=ref)
    assert out.tobytes() == raw
    assert (enc.ref is not None) == spec_uses_reference(enc.spec)
    return enc.spec


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("allowed", CODEC_SETS)
def test_roundtrip_dtypes(dtype, allowed):
    raw = weights(dtype, 3000)
    if allowed == frozenset({"bplane"}) and dtype not in ("BF16", "F16", "F32", "F64"):
        with pytest.raises(ValueError):
            encode_block(raw, dtype=dtype, allowed=allowed)
        return
    spec = roundtrip(raw, dtype=dtype, allowed=allowed)
    if allowed is not None:
        assert set(spec_codec_names(spec)) <= allowed


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64"])
@pytest.mark.parametrize("trim", [0, 1, 3, 7])
def test_odd_lengths_keep_their_tail(dtype, trim):
    raw = weights(dtype, 1001)
    raw = raw[: len(raw) - trim]
    for allowed in (frozenset({"bplane"}), None):
        spec = roundtrip(raw, dtype=dtype, allowed=allowed)
        if allowed is not None:
            assert spec.startswith("bplane:")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 17])
def test_tiny_and_empty(dtype, n):
    raw = os.urandom(n)
    spec = roundtrip(raw, dtype=dtype)
    if n == 0:
        assert spec == "raw"
    for allowed in (frozenset({"zstd"}), frozenset({"bplane"})):
        if "bplane" in allowed and dtype not in ("BF16", "F16", "F32", "F64"):
            continue
        roundtrip(raw, dtype=dtype, allowed=allowed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_zero_compresses_to_almost_nothing(dtype):
    raw = bytes(1 << 16)
    enc = encode_block(raw, dtype=dtype)
    assert len(enc.payload) < 200
    roundtrip(raw, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_bytes_stored_raw(dtype):
    raw = os.urandom(50_000)
    enc = encode_block(raw, dtype=dtype)
    assert enc.spec == "raw"
    assert bytes(enc.payload) == raw


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64", "I64", None])
@pytest.mark.parametrize("trim", [0, 1])
def test_xor_delta_roundtrip(dtype, trim):
    base = weights(dtype, 4096, seed=3)
    if dtype == "BF16":
        ft = finetune_bf16(base, 1e-2)
    else:
        ft = bytearray(base)
        for i in range(0, len(ft), 97):
            ft[i] ^= 0x01
        ft = bytes(ft)
    base, ft = base[: len(base) - trim], ft[: len(ft) - trim]
    spec = roundtrip(ft, dtype=dtype, reference=base, reference_id=REF_ID)
    assert spec_uses_reference(spec)
    assert spec_codec_names(spec)[0] == "xor"
    enc = encode_block(ft, dtype=dtype, reference=base, reference_id=REF_ID)
    assert enc.ref == REF_ID


def test_without_raw_something_else_is_returned_even_if_it_does_not_pay():
    base, other = os.urandom(5000), os.urandom(5000)
    allowed = frozenset({"xor", "zstd"})
    spec = roundtrip(other, dtype="BF16", reference=base, reference_id=REF_ID, allowed=allowed)
    assert spec in ("zstd:3", "xor|zstd:3")


def test_unrelated_reference_is_not_used():
    base, other = weights("BF16", 4096, seed=1), weights("BF16", 4096, seed=2)
    spec = roundtrip(other, dtype="BF16", reference=base, reference_id=REF_ID)
    assert not spec_uses_reference(spec)


def test_identical_to_reference():
    base = weights("BF16", 4096, seed=1)
    enc = encode_block(base, dtype="BF16", reference=base, reference_id=REF_ID)
    assert spec_uses_reference(enc.spec)
    assert len(enc.payload) < 200
    assert decode_block(enc.spec, enc.payload, reference=base) == base


@pytest.mark.parametrize("level", [1, 3, 9])
def test_levels_are_recorded(level):
    # level applies to plain zstd, and to sparse planes (dense ones are literal-only "h")
    # from level 4 up; levels 1-3 code sparse planes as "s" (zstd was no smaller at 2-3)
    raw = bytearray(8192)
    raw[::100] = bytes(range(82))
    raw = bytes(raw)
    enc = encode_block(raw, dtype="BF16", level=level)
    plane = "s" if level <= 3 else f"z{level}"
    assert enc.spec == f"bplane:w=2,rot=0,planes={plane}.{plane}"
    assert decode_block(enc.spec, enc.payload) == raw
    enc = encode_block(raw, dtype=None, level=level, allowed=frozenset({"zstd"}))
    assert enc.spec == f"zstd:{level}"


def test_bad_arguments():
    raw = weights("BF16", 100)
    with pytest.raises(ValueError):
        encode_block(raw, dtype="BF16", allowed=frozenset({"lz4"}))
    with pytest.raises(ValueError):  # reference without its id
        encode_block(raw, dtype="BF16", reference=raw)
    with pytest.raises(ValueError):  # reference of another length
        encode_block(raw, dtype="BF16", reference=raw[:-2], reference_id=REF_ID)
    enc = encode_block(raw, dtype="BF16", reference=raw, reference_id=REF_ID)
    with pytest.raises(ValueError):  # decoding a delta without its reference
        decode_block(enc.spec, enc.payload)


def test_decode_into_without_the_c_kernels(monkeypatch):
    """The same bytes where the extension is not built (the generic decode, then a copy)."""
    base = weights("BF16", 4097, seed=4)
    ft = finetune_bf16(base, 1e-2)
    monkeypatch.setattr(native, "kernels", None)
    for raw, ref in ((base, None), (ft, base)):
        enc = encode_block(raw, dtype="BF16", reference=ref, reference_id=REF_ID if ref else None)
        out = np.empty(len(raw), dtype=np.uint8)
        decode_block_into(enc.spec, bytes(enc.payload), out, reference=ref)
        assert out.tobytes() == raw


def test_decode_into_refuses_a_wrong_size_or_a_corrupt_payload():
    from mergestore.errors import CorruptionError

    raw = weights("BF16", 4096, seed=5)
    enc = encode_block(raw, dtype="BF16", allowed=frozenset({"bplane"}))
    with pytest.raises(CorruptionError):
        decode_block_into(enc.spec, bytes(enc.payload), np.empty(len(raw) - 2, np.uint8))
    bad = bytearray(enc.payload)
    bad[len(bad) // 2] ^= 0xFF
    bad = bytes(bad[:-3])
    with pytest.raises(CorruptionError):
        decode_block_into(enc.spec, bad, np.empty(len(raw), np.uint8))


@pytest.mark.needs(native.kernels is not None, "the C kernels are not built")
def test_decode_of_16_bit_planes_matches_the_generic_path(monkeypatch):
    """decode_block of 16-bit byte planes (a merge's base blocks, read as delta references)
    runs the whole-block C kernel into a fresh array: the same bytes as the generic path for
    dense, sparse and odd-length blocks, and a damaged payload still raises CorruptionError."""
    from mergestore.errors import CorruptionError

    base = weights("BF16", 4097, seed=6)  # an odd length: a tail byte
    sparse_raw = bytearray(8192)
    sparse_raw[::100] = bytes(range(82))
    payloads = []
    for raw in (base, bytes(sparse_raw), finetune_bf16(base, 1e-2)):
        enc = encode_block(raw, dtype="BF16", allowed=frozenset({"bplane"}))
        assert enc.spec.startswith("bplane:w=2")
        payloads.append((enc.spec, bytes(enc.payload), raw))
    kernels = native.kernels
    whole, calls = kernels.bplane16_into, []
    monkeypatch.setattr(kernels, "bplane16_into", lambda *a: calls.append(1) or whole(*a))
    for spec, payload, raw in payloads:
        fast = decode_block(spec, payload)
        monkeypatch.setattr(native, "kernels", None)
        slow = decode_block(spec, payload)
        monkeypatch.setattr(native, "kernels", kernels)
        assert bytes(fast) == bytes(slow) == raw
    assert len(calls) == len(payloads)  # one C call a block
    spec, payload, raw = payloads[0]
    for bad in (payload[:-3], payload[:5], b"\xff" * 8 + payload[8:]):
        with pytest.raises(CorruptionError):
            decode_block(spec, bad)
