"""Malformed specs and payloads raise CorruptionError (one line), never crash or hang."""

from __future__ import annotations

import random

import pytest
from codec_data import finetune_bf16, weights

from mergestore.errors import CorruptionError
from mergestore.store.codecs import decode_block, encode_block, parse_spec

REF_ID = b"\x01" * 32


def encoded_samples():
    bf16 = weights("BF16", 5000)
    odd = weights("F32", 999)[:-3]
    ft = finetune_bf16(bf16, 1e-2)
    return [
        (encode_block(bf16, dtype="BF16"), None),
        (encode_block(bf16, dtype="BF16", allowed=frozenset({"zstd"})), None),
        (encode_block(odd, dtype="F32"), None),
        (encode_block(weights(None, 5000), dtype=None), None),
        (encode_block(ft, dtype="BF16", reference=bf16, reference_id=REF_ID), bf16),
    ]


def test_samples_cover_the_interesting_chains():
    specs = [enc.spec for enc, _ in encoded_samples()]
    assert specs[0].startswith("bplane:") and specs[1].startswith("zstd:")
    assert specs[4].startswith("xor|bplane:")


@pytest.mark.parametrize("index", range(5))
def test_truncated_and_extended_payloads(index):
    enc, ref = encoded_samples()[index]
    payload = bytes(enc.payload)
    for bad in (payload[:-1], payload[: len(payload) // 2], payload[:3], b"", payload + b"\0"):
        with pytest.raises(CorruptionError):
            decode_block(enc.spec, bad, reference=ref)


@pytest.mark.parametrize("index", range(5))
def test_random_garbage_never_crashes(index):
    """Flipped bytes may decode to wrong data (the store's hash check catches that), but any
    failure must be a CorruptionError."""
    enc, ref = encoded_samples()[index]
    rng = random.Random(index)
    payload = bytes(enc.payload)
    for _ in range(200):
        bad = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            decode_block(enc.spec, bytes(bad), reference=ref)
        except CorruptionError as e:
            assert "\n" not in str(e)


def test_header_claiming_a_huge_size():
    enc = encode_block(weights("BF16", 5000), dtype="BF16")
    bad = bytearray(enc.payload)
    bad[0:8] = (1 << 60).to_bytes(8, "little")
    with pytest.raises(CorruptionError):
        decode_block(enc.spec, bytes(bad))


def test_payload_decoded_with_the_wrong_spec():
    enc = encode_block(weights("BF16", 5000), dtype="BF16")
    with pytest.raises(CorruptionError):
        decode_block("zstd:3", enc.payload)
    with pytest.raises(CorruptionError):
        decode_block(enc.spec.replace("w=2", "w=4").replace("r.z3", "r.r.r.z3"), enc.payload)


def test_xor_with_reference_of_wrong_length():
    base = weights("BF16", 5000)
    ft = finetune_bf16(base, 1e-2)
    enc = encode_block(ft, dtype="BF16", reference=base, reference_id=REF_ID)
    assert enc.spec.startswith("xor|")
    for ref in (base[:-2], base + b"\0\0", b""):
        with pytest.raises(CorruptionError):
            decode_block(enc.spec, enc.payload, reference=ref)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "lz4",
        "zstd",
        "zstd:0",
        "zstd:03",
        "zstd:3:4",
        "raw:1",
        "raw|zstd:3",
        "zstd:3|xor",
        "xor",
        "bplane:w=3,rot=1,planes=r.r.r",
        "bplane:w=2,rot=16,planes=r.z3",
        "bplane:w=2,rot=1,planes=r",
        "bplane:w=2,rot=1,planes=r.q",
        "bplane:rot=1,w=2,planes=r.z3",
        "bplane:w=2,rot=1,planes=r.z3,",
        "zstd:3|",
    ],
)
def test_bad_specs(spec):
    # "xor" alone is a valid chain; everything else here is not.
    if spec == "xor":
        assert parse_spec(spec)
        return
    with pytest.raises(CorruptionError):
        parse_spec(spec)
    with pytest.raises(CorruptionError):
        decode_block(spec, b"")
