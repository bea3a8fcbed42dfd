"""Hostile safetensors files through `mergestore commit`, fuzzed with hypothesis.

Each input either commits and checks out byte for byte, or is refused with one line
`error: ...` (no traceback, no internal error), leaves the store unchanged and writes nothing
outside it. Examples per test: FUZZ_EXAMPLES (x MERGESTORE_FAULTS_SCALE for a long run).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from faultkit import Ledger, Result, assert_clean_error, cli_inproc, dir_digest, tree_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergestore.api import Store

SCALE = int(os.environ.get("MERGESTORE_FAULTS_SCALE", "1"))
FUZZ_EXAMPLES = 100 * SCALE
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=SCALE == 1,  # CI: the same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL", "F8_E4M3"]
WEIRD_DTYPES = ["", "f32", "F128", "Q4", "complex64", "F32 ", "\u0000"]
INTS = st.one_of(
    st.integers(0, 64),
    st.integers(-(2**63), 2**64 + 7),
    st.sampled_from([-1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64]),
)


class Sandbox:
    """A directory holding a store and the hostile input; checks after each command."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "store"
        self.inputs = root / "in"
        self.inputs.mkdir(parents=True, exist_ok=True)
        if not self.store.exists():
            Store.init(self.store, block_size=4096).close()

    def outside(self) -> set[str]:
        return {
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if self.store not in p.parents and p != self.store
        }

    def commit(self, data: bytes, ledger: Ledger, kind: str) -> Result:
        f = self.inputs / "model.safetensors"
        f.write_bytes(data)
        before, around = dir_digest(self.store), self.outside()
        r = cli_inproc("--store", self.store, "commit", f, "-m", "fuzz", "-b", "fuzz")
        ledger.tried(kind)
        assert self.outside() == around, "wrote outside the store"
        if r.rc == 0:  # a valid file after all: it must come back byte for byte
            out = self.root / "co"
            co = cli_inproc("--store", self.store, "checkout", "fuzz", out)
            assert co.rc == 0, co.err
            assert tree_digest(out) == {"model.safetensors": tree_digest(self.inputs)[f.name]}
            shutil.rmtree(out)
            ledger.tried(kind + " (accepted)")
        else:
            assert_clean_error(r)
            assert dir_digest(self.store) == before, "a refused commit changed the store"
        return r


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def build(header: bytes, data: bytes, declared: int | None = None) -> bytes:
    n = len(header) if declared is None else declared
    return struct.pack("<Q", n % 2**64) + header + data


@st.composite
def tensor_headers(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Plausible headers with hostile fields: shapes, offsets, dtypes, names."""
    n = draw(st.integers(0, 4))
    entries = []
    pos = 0
    for i in range(n):
        dtype = draw(st.sampled_from(DTYPES + WEIRD_DTYPES) if draw(st.booleans()) else
                     st.sampled_from(DTYPES))  # fmt: skip
        shape = draw(st.lists(st.one_of(st.integers(0, 6), INTS), max_size=4))
        size = draw(st.integers(0, 64))
        begin = draw(st.sampled_from([pos, pos, 0, pos + 1, max(0, pos - 4)]))
        end = begin + size
        offsets = [begin, end] if draw(st.booleans()) else [draw(INTS), draw(INTS)]
        name = draw(st.sampled_from([f"t{i}", f"t{max(0, i - 1)}", "../x", "", "a/b", "\u00e9"]))
        entries.append((name, {"dtype": dtype, "shape": shape, "data_offsets": offsets}))
        pos = max(pos, end)
    if draw(st.booleans()):
        entries.append(("__metadata__", {"format": "pt"}))
    # write JSON by hand so duplicate names survive
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in entries) + "}"
    header = text.encode()
    header += b" " * draw(st.integers(0, 8))
    data = bytes(draw(st.integers(0, pos + 8)))
    return header, data


@given(case=tensor_headers(), declared_delta=st.sampled_from([0, 0, 0, 1, 7, -1, 2**40]))
@FUZZ
def test_fuzzed_tensor_headers(sandbox: Sandbox, ledger: Ledger, case, declared_delta) -> None:
    header, data = case
    declared = max(1, len(header) + declared_delta)
    sandbox.commit(build(header, data, declared), ledger, "safetensors: fuzzed header")


@given(raw=st.binary(max_size=200), mangle=st.sampled_from(["raw", "utf8", "truncate"]))
@FUZZ
def test_random_and_non_utf8_headers(sandbox: Sandbox, ledger: Ledger, raw, mangle) -> None:
    if mangle == "utf8":  # starts like JSON, then invalid UTF-8 inside a string
        header = b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"\xff' + raw + b'":1}'
    elif mangle == "truncate":
        full = b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
        header = full[: len(raw) % len(full)] + raw
    else:
        header = raw
    sandbox.commit(build(header, b"\0" * 4), ledger, "safetensors: random bytes")


@given(depth=st.integers(1, 100_000), kind=st.sampled_from(["[", '{"a":']))
@settings(FUZZ, max_examples=max(8, FUZZ_EXAMPLES // 6))
def test_deeply_nested_json(sandbox: Sandbox, ledger: Ledger, depth, kind) -> None:
    close = "]" if kind == "[" else "}"
    body = kind * depth + "1" + close * depth
    header = ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":' + body + "}").encode()
    sandbox.commit(build(header, b"\0" * 4), ledger, "safetensors: nested JSON")


def test_declared_lengths_and_a_100mb_header(sandbox: Sandbox, ledger: Ledger) -> None:
    ok = b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    for declared in (0, len(ok) + 1, 2**31, 2**63, 2**64 - 1, 100 * 2**20 + 1):
        r = sandbox.commit(build(ok, b"\0" * 4, declared), ledger, "safetensors: lengths")
        assert r.rc == 1
    # a real 100 MB header (under the 100 MiB limit): read, then refused as JSON
    n = 100_000_000
    big = build(b"{" + b" " * (n - 2) + b"!", b"")
    r = sandbox.commit(big, ledger, "safetensors: 100 MB header")
    assert r.rc == 1 and "not valid JSON" in r.err
    # a declared 100 MiB + 1 header in a sparse file of that size: refused before reading
    f = sandbox.inputs / "model.safetensors"
    with open(f, "wb") as fh:
        fh.write(struct.pack("<Q", 100 * 2**20 + 1))
        fh.truncate(8 + 100 * 2**20 + 1)
    r = cli_inproc("--store", sandbox.store, "commit", f, "-m", "big", "-b", "big")
    ledger.tried("safetensors: 100 MB header")
    assert_clean_error(r, contains="exceeds")
    f.unlink()


@pytest.mark.parametrize(
    "header",
    [
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',  # duplicate name
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',  # overlapping
        b'{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},'
        b'"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}',  # reversed offsets
        b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',  # negative shape
        b'{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}',
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,40000]}}',  # beyond the file
        b'{"a":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}}',  # unknown dtype
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"k":1}}',
    ],
)
def test_named_hostile_headers(sandbox: Sandbox, ledger: Ledger, header: bytes) -> None:
    r = sandbox.commit(build(header, b"\0" * 8), ledger, "safetensors: named cases")
    assert r.rc == 1
