"""Spec strings: canonical round trip, codec names, reference detection; plus a property test."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mergestore.store.codecs import (
    decode_block,
    encode_block,
    parse_spec,
    spec_codec_names,
    spec_uses_reference,
)
from mergestore.store.codecs.registry import chain_to_spec

SPECS = [
    ("raw", ["raw"], False),
    ("zstd:1", ["zstd"], False),
    ("zstd:19", ["zstd"], False),
    ("bplane:w=2,rot=1,planes=r.z3", ["bplane"], False),
    ("bplane:w=4,rot=1,planes=r.r.z1.z1", ["bplane"], False),
    ("xor|bplane:w=2,rot=1,planes=z3.z3", ["xor", "bplane"], True),
    ("xor|zstd:3", ["xor", "zstd"], True),
    ("xor", ["xor"], True),
]


@pytest.mark.parametrize("spec,names,uses_ref", SPECS)
def test_spec_queries(spec, names, uses_ref):
    assert chain_to_spec(parse_spec(spec)) == spec
    assert spec_codec_names(spec) == names
    assert spec_uses_reference(spec) is uses_ref


def test_fixed_chain_decodes_hand_made_payload():
    """A hand-built bplane payload (checked independently of the encoder)."""
    # two bf16 words 0x3f80 (1.0) and 0xbf80 (-1.0), rotated left by 1: 0x7f00, 0x7f01
    raw = bytes([0x80, 0x3F, 0x80, 0xBF, 0x55])  # plus one tail byte
    payload = (
        (5).to_bytes(8, "little")
        + (2).to_bytes(4, "little")
        + (2).to_bytes(4, "little")
        + bytes([0x00, 0x01])  # low plane
        + bytes([0x7F, 0x7F])  # high plane (exponent)
        + b"\x55"
    )
    assert decode_block("bplane:w=2,rot=1,planes=r.r", payload) == raw
    stage = parse_spec("bplane:w=2,rot=1,planes=r.r")[0]
    assert stage.encode(raw) == payload


DTYPES = st.sampled_from(["BF16", "F16", "F32", "F64", "I8", "I64", "BOOL", None])
ALLOWED = st.sampled_from(
    [None, frozenset({"bplane", "raw"}), frozenset({"zstd"}), frozenset({"raw", "zstd"})]
)


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=600), dtype=DTYPES, allowed=ALLOWED, level=st.integers(1, 5))
def test_property_roundtrip(raw, dtype, allowed, level):
    if allowed == frozenset({"bplane", "raw"}) and dtype not in ("BF16", "F16", "F32", "F64"):
        allowed = None
    enc = encode_block(raw, dtype=dtype, level=level, allowed=allowed)
    assert decode_block(enc.spec, enc.payload) == raw


@settings(max_examples=100, deadline=None)
@given(data=st.data(), dtype=DTYPES)
def test_property_roundtrip_with_reference(data, dtype):
    base = data.draw(st.binary(min_size=1, max_size=600))
    # a "fine-tune": same length, a few bytes changed
    ft = bytearray(base)
    for i in data.draw(st.lists(st.integers(0, len(base) - 1), max_size=20)):
        ft[i] ^= data.draw(st.integers(1, 255))
    enc = encode_block(bytes(ft), dtype=dtype, reference=base, reference_id=b"\x07" * 32)
    ref = base if spec_uses_reference(enc.spec) else None
    assert decode_block(enc.spec, enc.payload, reference=ref) == bytes(ft)
