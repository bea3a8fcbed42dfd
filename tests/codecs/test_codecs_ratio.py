"""Compression ratios that must hold with a clear margin (no timings here: see bench/)."""

from __future__ import annotations

from codec_data import finetune_bf16, weights

from mergestore.store.codecs import encode_block

N = 1 << 17  # 256 KiB of bf16
REF_ID = b"\x02" * 32


def ratio(raw: bytes, **kw) -> float:
    return len(encode_block(raw, **kw).payload) / len(raw)


def test_byteplanes_beat_plain_zstd_on_bf16():
    raw = weights("BF16", N)
    planes = ratio(raw, dtype="BF16", allowed=frozenset({"bplane"}))
    plain = ratio(raw, dtype="BF16", allowed=frozenset({"zstd"}))
    assert planes < 0.72
    assert planes < plain - 0.05
    assert encode_block(raw, dtype="BF16").spec.startswith("bplane:")


def test_byteplanes_help_fp16_and_fp32():
    for dtype in ("F16", "F32"):
        raw = weights(dtype, N // 2)
        planes = ratio(raw, dtype=dtype, allowed=frozenset({"bplane"}))
        plain = ratio(raw, dtype=dtype, allowed=frozenset({"zstd"}))
        assert planes < plain - 0.02, dtype


def test_fp32_holding_bf16_values_drops_its_zero_planes():
    bf16 = weights("BF16", N // 2)
    as_f32 = b"".join(b"\0\0" + bf16[i : i + 2] for i in range(0, len(bf16), 2))
    # half the words are zero bytes; the sign bit rotated into plane 0 costs ~1/32 more
    assert ratio(as_f32, dtype="F32") < 0.40


def test_xor_delta_on_small_finetune():
    base = weights("BF16", N)
    small = finetune_bf16(base, 1e-3)
    assert ratio(small, dtype="BF16", reference=base, reference_id=REF_ID) < 0.25
    large = finetune_bf16(base, 2e-2)
    delta = ratio(large, dtype="BF16", reference=base, reference_id=REF_ID)
    assert delta < ratio(large, dtype="BF16") - 0.1
