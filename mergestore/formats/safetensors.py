"""Reading, validating and writing the safetensors container format.

A safetensors file is: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object
mapping tensor names to {dtype, shape, data_offsets}, plus an optional "__metadata__" str->str
map), then a flat data region. We distrust every file: the header is parsed and checked in full
(dtypes, shapes, offsets, exact coverage of the data region) before any data byte is used, and
every problem is reported as one FormatError line. The header bytes are kept verbatim so the
store can reproduce the file byte for byte.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.errors import FormatError
from mergestore.fast_dataclass import dataclass

if TYPE_CHECKING:  # imported where used: reading and validating headers needs no torch
    import torch

__all__ = [
    "DTYPE_SIZES",
    "MAX_HEADER_BYTES",
    "SafetensorsHeader",
    "TensorEntry",
    "dtype_name",
    "name_of_torch_dtype",
    "encode_header",
    "parse_header",
    "parse_header_bytes",
    "read_header",
    "torch_dtype",
    "write_safetensors",
]

# Byte-aligned dtypes of the safetensors spec. Sub-byte types (F4, F6_*) are not supported: their
# sizes are not whole bytes per element, and such files are refused as "unknown dtype".
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "C64": 8,
}

# safetensors dtype name -> torch attribute name (looked up lazily: older torch may lack some).
_TORCH_NAMES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "U64": "uint64",
    "C64": "complex64",
}

MAX_HEADER_BYTES = 100 * 1024 * 1024
# Bound on a tensor's element count; keeps all offset arithmetic far from any 64-bit limit.
MAX_NUMEL = 2**62
_METADATA_KEY = "__metadata__"
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_PREFIX = struct.Struct("<Q")
_MAX_QUOTE = 80


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a safetensors dtype name ("BF16" -> torch.bfloat16)."""
    import torch

    attr = _TORCH_NAMES.get(name)
    dt = getattr(torch, attr, None) if attr is not None else None
    if not isinstance(dt, torch.dtype):
        raise FormatError(f"dtype {_quote(name)} is not supported by this torch build")
    return dt


def name_of_torch_dtype(attr: str) -> str:
    """The safetensors dtype name for a torch dtype's name ("bfloat16" -> "BF16"), without
    importing torch."""
    for name, torch_attr in _TORCH_NAMES.items():
        if torch_attr == attr:
            return name
    raise FormatError(f"torch dtype {attr} has no safetensors name")


def dtype_name(dt: torch.dtype) -> str:
    """The safetensors dtype name for a torch dtype (torch.bfloat16 -> "BF16")."""
    import torch

    for name, attr in _TORCH_NAMES.items():
        if getattr(torch, attr, None) == dt:
            return name
    raise FormatError(f"torch dtype {dt} has no safetensors name")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header entry; offsets are relative to the start of the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header. `header_bytes` is exactly what the file holds, padding included."""

    header_bytes: bytes
    metadata: dict[str, str] | None
    tensors: tuple[TensorEntry, ...]  # data-region order

    @property
    def data_start(self) -> int:
        return 8 + len(self.header_bytes)

    @property
    def data_size(self) -> int:
        return sum(t.nbytes for t in self.tensors)


# ---------------------------------------------------------------- message helpers


def _quote(value: object) -> str:
    """repr() of a value from a file, shortened: keeps error messages one short line."""
    text = repr(value)
    if len(text) > _MAX_QUOTE:
        text = text[: _MAX_QUOTE - 3] + "..."
    return text


def _clean_source(source: str) -> str:
    """A file name for a message: control characters escaped so the message stays one line."""
    if not source:
        return "safetensors header"
    if source.isprintable():
        return source
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in source)


def _fail(source: str, problem: str) -> FormatError:
    return FormatError(f"{_clean_source(source)}: {problem}")


# ---------------------------------------------------------------- parsing


def parse_header(prefix: bytes, file_size: int, *, source: str = "") -> int:
    """Validate the 8-byte length prefix against the file size; return the header length."""
    if len(prefix) < 8 or file_size < 8:
        raise _fail(source, "not a safetensors file (shorter than 8 bytes)")
    (n,) = _PREFIX.unpack_from(prefix, 0)
    if n == 0:
        raise _fail(source, "header length is 0")
    if n > MAX_HEADER_BYTES:
        raise _fail(source, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        raise _fail(source, f"header length {n} runs past the end of the {file_size}-byte file")
    return n


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last of duplicate keys; a file that names a tensor twice
    # is ambiguous, so refuse it.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are not JSON; Python accepts them by default, other readers do not.
    raise ValueError(f"non-standard JSON constant {name}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_utf8_str(value: object) -> bool:
    # JSON escapes can produce lone surrogates, which cannot be written back as UTF-8.
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode_json(header_bytes: bytes, source: str) -> dict[str, Any]:
    if not header_bytes.startswith(b"{"):
        raise _fail(source, "header does not start with '{'")
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(source, f"header is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_pairs_to_dict, parse_constant=_reject_constant)
    except _DuplicateKey as exc:
        raise _fail(source, f"header has duplicate key {_quote(exc.key)}") from None
    except RecursionError:
        raise _fail(source, "header JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, over-long integer literals, NaN/Infinity
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(source, f"header is not valid JSON: {detail[:_MAX_QUOTE]}") from None
    if not isinstance(obj, dict):
        raise _fail(source, "header is not a JSON object")
    return obj


def _parse_metadata(value: object, source: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _fail(source, f"{_METADATA_KEY} is not an object of strings")
    for key, item in value.items():
        if not _is_utf8_str(key) or not _is_utf8_str(item):
            raise _fail(source, f"{_METADATA_KEY} entry {_quote(key)} is not a string")
    return dict(value)


def _parse_entry(name: str, value: object, source: str) -> TensorEntry:
    where = f"tensor {_quote(name)}"
    if not _is_utf8_str(name):
        raise _fail(source, f"{where}: name is not valid Unicode")
    if not isinstance(value, dict):
        raise _fail(source, f"{where}: entry is not an object")
    if set(value) != _ENTRY_KEYS:
        extra = sorted(set(value) - _ENTRY_KEYS)
        missing = sorted(_ENTRY_KEYS - set(value))
        problem = f"missing {missing}" if missing else f"unexpected keys {_quote(extra)}"
        raise _fail(source, f"{where}: entry needs exactly dtype, shape, data_offsets; {problem}")

    dtype = value["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _fail(source, f"{where}: unknown dtype {_quote(dtype)}")

    shape = value["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _fail(source, f"{where}: shape {_quote(shape)} is not a list of non-negative ints")
    # Bound every dimension and the product of the non-zero ones, so that no shape can name
    # an absurd element count even when a zero dimension makes the tensor empty.
    count = 1
    for d in shape:
        if d > MAX_NUMEL:
            raise _fail(source, f"{where}: shape {_quote(shape)} is too large")
        if d:
            count *= d
            if count > MAX_NUMEL:
                raise _fail(source, f"{where}: shape {_quote(shape)} is too large")

    offsets = value["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _fail(source, f"{where}: data_offsets {_quote(offsets)} are not [begin, end]")
    begin, end = offsets

    numel = math.prod(shape)
    expected = numel * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise _fail(
            source,
            f"{where}: data_offsets span {end - begin} bytes but {dtype}{_quote(tuple(shape))} "
            f"needs {expected}",
        )
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def parse_header_bytes(
    header_bytes: bytes, file_size: int, *, source: str = ""
) -> SafetensorsHeader:
    """Parse and fully validate header JSON; `file_size` is the whole file's size in bytes."""
    header_bytes = bytes(header_bytes)
    obj = _decode_json(header_bytes, source)

    metadata: dict[str, str] | None = None
    entries: list[TensorEntry] = []
    for key, value in obj.items():
        if key == _METADATA_KEY:
            metadata = _parse_metadata(value, source)
        else:
            entries.append(_parse_entry(key, value, source))

    # Data-region order. Empty tensors (begin == end) may share an offset with a neighbour; sort
    # them before the tensor that starts there, and by name among themselves, so order is total.
    entries.sort(key=lambda e: (e.begin, e.end, e.name))
    cursor = 0
    for entry in entries:
        if entry.begin != cursor:
            kind = "overlaps the previous tensor" if entry.begin < cursor else "leaves a hole"
            raise _fail(
                source,
                f"tensor {_quote(entry.name)}: data_offsets [{entry.begin}, {entry.end}] "
                f"{kind} (expected begin {cursor})",
            )
        cursor = entry.end

    data_start = 8 + len(header_bytes)
    if data_start + cursor != file_size:
        raise _fail(
            source,
            f"tensor data ends at byte {data_start + cursor} but the file has {file_size} bytes",
        )
    return SafetensorsHeader(header_bytes=header_bytes, metadata=metadata, tensors=tuple(entries))


def read_header(path: str | os.PathLike[str], *, source: str | None = None) -> SafetensorsHeader:
    """Read and validate only the header of the safetensors file at `path`."""
    src = os.fspath(path) if source is None else source
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            n = parse_header(prefix, file_size, source=src)
            header_bytes = f.read(n)
    except OSError as exc:
        raise _fail(src, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(header_bytes) != n:  # the file shrank while we read it
        raise _fail(src, "file is truncated inside the header")
    return parse_header_bytes(header_bytes, file_size, source=src)


# ---------------------------------------------------------------- writing


def encode_header(
    entries: Sequence[tuple[str, str, tuple[int, ...]]],
    metadata: dict[str, str] | None = None,
) -> tuple[bytes, list[TensorEntry]]:
    """Canonical header for a new file: data in the given order, compact JSON, space-padded.

    Returns the header bytes (without the 8-byte length prefix) and the laid-out entries. The
    padding makes the header length, and so the data start, a multiple of 8.
    """
    layout: list[TensorEntry] = []
    obj: dict[str, Any] = {}
    if metadata is not None:
        if not all(_is_utf8_str(k) and _is_utf8_str(v) for k, v in metadata.items()):
            raise FormatError("encode_header: metadata must map strings to strings")
        obj[_METADATA_KEY] = {k: metadata[k] for k in sorted(metadata)}
    cursor = 0
    for name, dtype, shape in entries:
        if not _is_utf8_str(name) or name == _METADATA_KEY or name in obj:
            raise FormatError(f"encode_header: invalid or duplicate tensor name {_quote(name)}")
        if dtype not in DTYPE_SIZES:
            raise FormatError(f"encode_header: unknown dtype {_quote(dtype)}")
        shape = tuple(shape)
        if not all(_is_int(d) and d >= 0 for d in shape):
            raise FormatError(f"encode_header: bad shape {_quote(shape)} for {_quote(name)}")
        nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
        entry = TensorEntry(name, dtype, shape, cursor, cursor + nbytes)
        layout.append(entry)
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [entry.begin, entry.end]}
        cursor = entry.end
    raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER_BYTES:
        raise FormatError(f"encode_header: header of {len(raw)} bytes exceeds the limit")
    return raw, layout


def _tensor_bytes(t: torch.Tensor) -> bytes:
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `tensors` (in mapping order) as a canonical safetensors file. Not streaming."""
    if sys.byteorder != "little":  # safetensors data is little-endian; we copy raw memory
        raise FormatError("write_safetensors: big-endian hosts are not supported")
    specs = [(name, dtype_name(t.dtype), tuple(t.shape)) for name, t in tensors.items()]
    header, layout = encode_header(specs, metadata)
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(_PREFIX.pack(len(header)))
            f.write(header)
            for entry in layout:
                f.write(_tensor_bytes(tensors[entry.name]))
        os.replace(tmp, path)  # never leave a half-written file under the final name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
