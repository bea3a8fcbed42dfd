"""Malformed safetensors files are refused with one-line FormatErrors, never anything else."""

from __future__ import annotations

import json
import os
import struct
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergestore.errors import FormatError
from mergestore.formats.safetensors import (
    MAX_HEADER_BYTES,
    parse_header,
    parse_header_bytes,
    read_header,
)


def _file(header: bytes | str | dict, data: bytes | int = 0, *, length: int | None = None) -> bytes:
    """Hand-build a file: 8-byte length (default: the real one), header, data bytes."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    if isinstance(data, int):
        data = b"\0" * data
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def _entry(dtype: str = "F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _read(raw: bytes) -> object:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bad.safetensors")
        with open(path, "wb") as f:
            f.write(raw)
        return read_header(path)


def _refused(raw: bytes, match: str | None = None) -> FormatError:
    with pytest.raises(FormatError) as info:
        _read(raw)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg
    assert msg.startswith(os.path.join(tempfile.gettempdir(), ""))  # names the file
    if match is not None:
        assert match in msg, msg
    return info.value


def test_valid_hand_built_file_is_accepted():
    # A sanity check for the builder: the same construction, correct, parses.
    header = _read(_file({"a": _entry(), "b": _entry("I8", (3,), (8, 11))}, 11))
    assert [(e.name, e.begin, e.end) for e in header.tensors] == [("a", 0, 8), ("b", 8, 11)]


# ---------------------------------------------------------------- the length prefix


@pytest.mark.parametrize("raw", [b"", b"\x01", b"\x08\0\0\0\0\0\0"])
def test_shorter_than_8_bytes(raw):
    _refused(raw, "shorter than 8 bytes")


def test_header_length_zero():
    _refused(_file(b"", 0, length=0), "header length is 0")


def test_header_length_over_limit():
    _refused(_file(b"{}", 0, length=MAX_HEADER_BYTES + 1), "exceeds")


def test_header_length_beyond_file():
    _refused(_file(b"{}", 0, length=3), "past the end")
    _refused(_file(b"{}", 0, length=2**64 - 1), "exceeds")


def test_parse_header_directly():
    assert parse_header(struct.pack("<Q", 2) + b"{}", 10) == 2
    with pytest.raises(FormatError):
        parse_header(b"\x02\0\0", 10)


# ---------------------------------------------------------------- the JSON itself


@pytest.mark.parametrize(
    "header, match",
    [
        (b"{\xff}", "UTF-8"),
        (b'{"a": "\xc3"}', "UTF-8"),
        (b"{", "not valid JSON"),
        (b'{"a":1,}', "not valid JSON"),
        (b'{"a":NaN}', "not valid JSON"),
        (b'{"a":Infinity}', "not valid JSON"),
        (b"{}x", "not valid JSON"),
        (b"{}\0", "not valid JSON"),
        (b"[]", "start with '{'"),
        (b" {}", "start with '{'"),
        (b'"{}"', "start with '{'"),
        (b"\xef\xbb\xbf{}", "start with '{'"),  # a UTF-8 byte-order mark
    ],
)
def test_bad_json(header, match):
    _refused(_file(header), match)


def test_huge_integer_literal_is_refused():
    _refused(_file('{"a":' + "9" * 5000 + "}"), "not valid JSON")


def test_deep_nesting_is_refused_not_a_recursion_error():
    deep = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
    _refused(_file(deep), "nested too deeply")
    deep_obj = '{"a":' * 100_000 + "1" + "}" * 100_000
    _refused(_file(deep_obj), "nested too deeply")


def test_moderate_nesting_is_refused_by_structure():
    _refused(_file('{"a":' + "[" * 50 + "]" * 50 + "}"), "entry is not an object")


def test_duplicate_tensor_names():
    first, second = json.dumps(_entry()), json.dumps(_entry(offsets=(8, 16)))
    raw = '{"a":' + first + ',"a":' + second + "}"
    _refused(_file(raw, 16), "duplicate key 'a'")


def test_duplicate_metadata_key():
    _refused(_file('{"__metadata__":{"k":"1","k":"2"}}'), "duplicate key 'k'")


def test_duplicate_key_inside_entry():
    raw = '{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    _refused(_file(raw, 8), "duplicate key 'dtype'")


def test_trailing_whitespace_padding_is_accepted_and_kept():
    for pad in [b" " * 7, b"\n", b"\t \r\n"]:
        body = json.dumps({"a": _entry()}).encode() + pad
        header = _read(_file(body, 8))
        assert header.header_bytes == body
        assert header.data_start == 8 + len(body)


# ---------------------------------------------------------------- __metadata__


@pytest.mark.parametrize(
    "meta",
    [None, [], "x", 1, {"k": 1}, {"k": None}, {"k": ["v"]}, {"k": {"x": "y"}}],
)
def test_bad_metadata(meta):
    _refused(_file({"__metadata__": meta}), "__metadata__")


def test_lone_surrogate_in_metadata():
    _refused(_file('{"__metadata__":{"k":"\\ud800"}}'), "__metadata__")


# ---------------------------------------------------------------- entries


@pytest.mark.parametrize(
    "entry, match",
    [
        (1, "not an object"),
        ("x", "not an object"),
        ([], "not an object"),
        (None, "not an object"),
        ({"dtype": "F32", "shape": [2]}, "missing ['data_offsets']"),
        ({**_entry(), "extra": 1}, "unexpected keys"),
        ({}, "missing"),
        (_entry(dtype="F4"), "unknown dtype"),
        (_entry(dtype="f32"), "unknown dtype"),
        (_entry(dtype="__proto__"), "unknown dtype"),
        ({**_entry(), "dtype": 4}, "unknown dtype"),
        ({**_entry(), "dtype": None}, "unknown dtype"),
        ({**_entry(), "shape": 2}, "shape"),
        ({**_entry(), "shape": None}, "shape"),
        ({**_entry(), "shape": [-2]}, "shape"),
        ({**_entry(), "shape": [2.0]}, "shape"),
        ({**_entry(), "shape": ["2"]}, "shape"),
        ({**_entry(), "shape": [True, 2]}, "shape"),  # bool is not an int
        ({**_entry(), "shape": [2**40, 2**40]}, "too large"),
        ({**_entry(), "shape": [2**70, 0]}, "too large"),
        ({**_entry(), "data_offsets": [0]}, "data_offsets"),
        ({**_entry(), "data_offsets": [0, 8, 8]}, "data_offsets"),
        ({**_entry(), "data_offsets": [8, 0]}, "data_offsets"),
        ({**_entry(), "data_offsets": [-8, 0]}, "data_offsets"),
        ({**_entry(), "data_offsets": [0.0, 8]}, "data_offsets"),
        ({**_entry(), "data_offsets": [False, 8]}, "data_offsets"),
        ({**_entry(), "data_offsets": "0,8"}, "data_offsets"),
        ({**_entry(), "data_offsets": {"0": 8}}, "data_offsets"),
        (_entry(shape=(3,)), "needs 12"),  # 8 bytes given, 3 x F32 need 12
        (_entry(dtype="F16"), "needs 4"),
        (_entry(shape=()), "needs 4"),  # 0-d is one element, not zero
        (_entry(shape=(0,)), "needs 0"),
    ],
)
def test_bad_entries(entry, match):
    _refused(_file({"a": entry}, 8), match)


def test_lone_surrogate_in_tensor_name():
    raw = '{"\\udc80":' + json.dumps(_entry()) + "}"
    _refused(_file(raw, 8), "not valid Unicode")


def test_names_with_newlines_keep_the_message_on_one_line():
    err = _refused(_file({"a\nb": _entry(dtype="XX")}, 8), "unknown dtype")
    assert "'a\\nb'" in str(err)


def test_huge_names_are_shortened_in_messages():
    err = _refused(_file({"n" * 10_000: _entry(dtype="XX")}, 8), "unknown dtype")
    assert len(str(err)) < 400


# ---------------------------------------------------------------- layout of the data region


def test_overlapping_offsets():
    h = {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}
    _refused(_file(h, 12), "overlaps")


def test_hole_between_tensors():
    h = {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(9, 17))}
    _refused(_file(h, 17), "leaves a hole")


def test_hole_at_start():
    _refused(_file({"a": _entry(offsets=(4, 12))}, 12), "leaves a hole")


def test_same_region_twice():
    h = {"a": _entry(), "b": _entry()}
    _refused(_file(h, 8), "overlaps")


def test_data_region_too_short_or_too_long():
    _refused(_file({"a": _entry()}, 7), "file has")
    _refused(_file({"a": _entry()}, 9), "file has")
    _refused(_file({}, 1), "file has")


def test_empty_tensor_inside_another_tensor_is_refused():
    h = {"a": _entry(offsets=(0, 8)), "e": _entry(shape=(0,), offsets=(4, 4))}
    _refused(_file(h, 8), "overlaps")


def test_empty_tensors_may_share_offsets():
    h = {
        "e0": _entry(shape=(0,), offsets=(0, 0)),
        "a": _entry(offsets=(0, 8)),
        "e1": _entry(shape=(3, 0), offsets=(8, 8)),
        "e2": _entry(dtype="BF16", shape=(0,), offsets=(8, 8)),
        "b": _entry(offsets=(8, 16)),
        "e3": _entry(shape=(0, 0), offsets=(16, 16)),
    }
    header = _read(_file(h, 16))
    assert [e.name for e in header.tensors] == ["e0", "a", "e1", "e2", "b", "e3"]
    assert header.data_size == 16
    assert [e.nbytes for e in header.tensors] == [0, 8, 0, 0, 8, 0]


def test_only_empty_tensors():
    h = {"e": _entry(shape=(0, 4), offsets=(0, 0)), "f": _entry(shape=(0,), offsets=(0, 0))}
    header = _read(_file(h, 0))
    assert header.data_size == 0 and len(header.tensors) == 2


def test_scalar_tensor():
    header = _read(_file({"s": _entry(dtype="F64", shape=(), offsets=(0, 8))}, 8))
    (entry,) = header.tensors
    assert entry.shape == () and entry.numel == 1 and entry.nbytes == 8


def test_parse_header_bytes_without_source():
    with pytest.raises(FormatError, match="^safetensors header: "):
        parse_header_bytes(b"[]", 10)


def test_missing_file_and_directory_are_format_errors(tmp_path):
    with pytest.raises(FormatError, match="cannot read"):
        read_header(tmp_path / "nope.safetensors")
    with pytest.raises(FormatError, match="cannot read"):
        read_header(tmp_path)


def test_source_overrides_the_path_in_messages(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\0\0")
    with pytest.raises(FormatError, match="^shard-1: "):
        read_header(path, source="shard-1")


def test_control_characters_in_the_source_are_escaped():
    with pytest.raises(FormatError) as info:
        parse_header_bytes(b"[]", 10, source="evil\nname\x1b")
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


# ---------------------------------------------------------------- fuzzing


_FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_VALID = _file(
    {
        "__metadata__": {"format": "pt"},
        "w": _entry("BF16", (2, 3), (0, 12)),
        "b": _entry("F32", (3,), (12, 24)),
        "e": _entry("I8", (0,), (24, 24)),
        "s": _entry("I64", (), (24, 32)),
    },
    32,
)


def _parse_or_refuse(raw: bytes) -> None:
    """Anything but a FormatError (or success) fails the test."""
    try:
        _read(raw)
    except FormatError as exc:
        assert "\n" not in str(exc)


def test_fuzz_base_file_is_valid():
    assert len(_read(_VALID).tensors) == 4


@_FUZZ
@given(st.binary(max_size=256))
def test_fuzz_random_bytes(raw):
    _parse_or_refuse(raw)


@_FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_header_with_correct_length(body):
    _parse_or_refuse(_file(body, 0))


@_FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6))
def test_fuzz_byte_flips(flips):
    raw = bytearray(_VALID)
    for pos, value in flips:
        raw[pos] = value
    _parse_or_refuse(bytes(raw))


@_FUZZ
@given(st.integers(0, len(_VALID)), st.binary(max_size=16))
def test_fuzz_truncate_or_extend(cut, tail):
    _parse_or_refuse(_VALID[:cut] + tail)


@_FUZZ
@given(st.integers(0, 2**64 - 1))
def test_fuzz_length_prefix(n):
    _parse_or_refuse(struct.pack("<Q", n) + _VALID[8:])


_json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text()
_json = st.recursive(
    _json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "BF16", "I8", "BOOL", "F4", "XX"]) | _json,
        "shape": st.lists(st.integers(-2, 4), max_size=3) | _json,
        "data_offsets": st.lists(st.integers(-2, 40), min_size=0, max_size=3) | _json,
        "other": _json,
    },
)


@_FUZZ
@given(
    st.dictionaries(st.sampled_from(["a", "b", "__metadata__", ""]), _fields | _json, max_size=4),
    st.integers(0, 48),
)
def test_fuzz_structured_json(obj, data_len):
    # allow_nan: Python's json.dumps writes NaN literals, which we must refuse cleanly.
    _parse_or_refuse(_file(json.dumps(obj, allow_nan=True), data_len))
