"""Coverage-guided fuzzing of the safetensors reader with atheris (not part of pytest).

    python tests/faults/fuzz_atheris.py -runs=200000 [-max_len=4096] [corpus_dir]

Each input is a whole file: the 8-byte length, the header, the data. The reader must accept it
or raise FormatError; any other exception is a crash (atheris stops and saves the input).
Accepted files are committed to a scratch store and checked out byte for byte. Every 250
inputs the counts (tried, accepted, refused, round trips) so far, plus those of earlier runs,
are written to bench/out/atheris.json.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from mergestore.errors import FormatError
    from mergestore.formats.safetensors import parse_header, parse_header_bytes

from mergestore.api import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench/out/atheris.json"
COUNTS = {"inputs": 0, "accepted": 0, "refused": 0, "round_trips": 0}
TMP = Path(tempfile.mkdtemp(prefix="ms-atheris-"))
STORE = Store.init(TMP / "store", block_size=4096)


def one(data: bytes) -> None:
    COUNTS["inputs"] += 1
    if COUNTS["inputs"] % 250 == 0:  # libFuzzer ends the process without atexit handlers
        _save()
    try:
        n = parse_header(data[:8], len(data))
        parse_header_bytes(data[8 : 8 + n], len(data))
    except FormatError:
        COUNTS["refused"] += 1
        return
    COUNTS["accepted"] += 1
    f = TMP / "in" / "model.safetensors"
    f.parent.mkdir(exist_ok=True)
    f.write_bytes(data)
    cid = STORE.commit(f, message="fuzz", branch="fuzz").commit
    out = TMP / "out"
    STORE.checkout(cid.hex(), out)
    assert (out / "model.safetensors").read_bytes() == data, "round trip differs"
    (out / "model.safetensors").unlink()
    out.rmdir()
    COUNTS["round_trips"] += 1


PREVIOUS = json.loads(OUT.read_text()) if OUT.exists() else {}


def _save() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    total = {k: PREVIOUS.get(k, 0) + v for k, v in COUNTS.items()}
    OUT.write_text(json.dumps(total, indent=2) + "\n")


def _seed(corpus: Path) -> None:
    """A few valid files to start from (atheris mutates them)."""
    corpus.mkdir(parents=True, exist_ok=True)
    for i, hdr in enumerate(
        [
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            {
                "__metadata__": {"format": "pt"},
                "b": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [0, 4]},
            },  # fmt: skip
            {"e": {"dtype": "I8", "shape": [0], "data_offsets": [0, 0]}},
        ]
    ):
        h = json.dumps(hdr).encode()
        size = max(t["data_offsets"][1] for k, t in hdr.items() if k != "__metadata__")
        (corpus / f"seed{i}").write_bytes(struct.pack("<Q", len(h)) + h + bytes(size))


if __name__ == "__main__":
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = ROOT / "bench/out/atheris-corpus"
        _seed(corpus)
        args.append(str(corpus))
    os.environ.setdefault("MERGESTORE_PROGRESS", "0")
    atheris.Setup(args, one)
    atheris.Fuzz()
