"""PackAppender.append of a payload given as parts (Encoded.parts): the same pack bytes as the
joined payload, through a short write too."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mergestore.store import codecs, packs


def _parts() -> tuple:
    raw = np.random.default_rng(0).standard_normal(40_000).astype(np.float32)
    enc = codecs.encode_block(raw.view(np.uint8), dtype="F32")
    assert isinstance(enc.parts, tuple) and len(enc.parts) > 2  # header, planes, tail
    assert enc.payload == b"".join(enc.parts) and enc.nbytes == len(enc.payload)
    assert codecs.decode_block(enc.spec, enc.payload) == raw.tobytes()
    return enc.parts


def _write(root: Path, payloads: list) -> bytes:
    root.mkdir()
    app = packs.PackAppender(root)
    where = [app.append(bytes([i]) * 32, p) for i, p in enumerate(payloads)]
    app.sync()
    app.close()
    assert len({pid for pid, _ in where}) == 1
    return packs.pack_path(root, where[0][0]).read_bytes()


def test_parts_are_written_as_their_concatenation(tmp_path: Path) -> None:
    parts = _parts()
    joined = b"".join(parts)
    assert _write(tmp_path / "a", [parts, b"x" * 10, parts]) == _write(
        tmp_path / "b", [joined, b"x" * 10, joined]
    )


def test_a_short_write_of_parts_is_finished(tmp_path: Path, monkeypatch) -> None:
    parts = _parts()
    want = _write(tmp_path / "a", [parts, parts])
    real = os.pwritev

    def short(fd, bufs, offset):  # the disk takes only part of each entry at first
        data = b"".join(bytes(b) for b in bufs)
        return real(fd, [data[: len(data) // 3]], offset)

    monkeypatch.setattr(packs.os, "pwritev", short)
    assert _write(tmp_path / "b", [parts, parts]) == want
