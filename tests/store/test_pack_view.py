"""PackReader.view: large pack ranges as views of the page cache, with read()'s checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mergestore import iotally
from mergestore.errors import CorruptionError
from mergestore.store import packs


def _pack(tmp_path: Path, sizes: list[int]) -> list[tuple[int, int, bytes]]:
    app = packs.PackAppender(tmp_path)
    out = []
    for i, n in enumerate(sizes):
        payload = os.urandom(n)
        pid, off = app.append(bytes([i]) * 32, payload)
        out.append((pid, off, payload))
    app.sync()
    app.close()
    return out


def test_view_gives_the_bytes_read_gives(tmp_path: Path) -> None:
    entries = _pack(tmp_path, [1000, packs.MAP_MIN_BYTES + 12345, 3 * packs.MAP_MIN_BYTES])
    reader = packs.PackReader(tmp_path)
    for pid, off, payload in entries:
        read0 = iotally.totals()[0]
        got = reader.view(pid, off, len(payload))
        assert iotally.totals()[0] - read0 == len(payload)  # counted as a read's bytes
        assert bytes(got) == payload == reader.read(pid, off, len(payload))
    # a range across entries, starting at an offset that is not page-aligned
    pid, off, first = entries[1]
    span = reader.view(pid, off + 7, len(first) - 7 + 40 + 100)
    assert bytes(span)[: len(first) - 7] == first[7:]
    assert isinstance(span, memoryview) and span.readonly
    reader.close()
    assert bytes(span)[-100:] == entries[2][2][:100]  # still valid after close


def test_view_past_the_end_of_a_truncated_pack_is_corruption(tmp_path: Path) -> None:
    entries = _pack(tmp_path, [2 * packs.MAP_MIN_BYTES])
    pid, off, payload = entries[0]
    os.truncate(packs.pack_path(tmp_path, pid), off + len(payload) // 2)
    reader = packs.PackReader(tmp_path)
    with pytest.raises(CorruptionError, match="truncated"):
        reader.view(pid, off, len(payload))
    reader.close()


def test_blocks_read_through_mapped_spans_are_verified(tmp_path: Path) -> None:
    """A checkout reads spans of several MiB (mapped, not copied): the same tensors back."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    from mergestore.api import Store

    src = tmp_path / "model"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    tensors = {f"w{i}": torch.randn(700, 1024, generator=g).to(torch.bfloat16) for i in range(3)}
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    store = Store.init(tmp_path / "store", block_size=1 << 20)
    try:
        store.commit(src, message="m", branch="main")
        store.checkout("main", tmp_path / "out")
    finally:
        store.close()
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(got[name].view(torch.int16), t.view(torch.int16)), name
