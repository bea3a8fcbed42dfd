"""Commit and checkout data paths: parallel in-place checkout, cleanup on failure, writeback."""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest

from mergestore.api import Store
from mergestore.errors import CorruptionError
from mergestore.store import packs
from mergestore.threads import one_torch_thread


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("threads", ["1", "3"])
def test_checkout_in_place_is_byte_identical(
    tiny_family, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: str
) -> None:
    monkeypatch.setenv("MERGESTORE_THREADS", threads)
    store.commit(tiny_family.base, message="base", branch="main")
    store.commit(tiny_family.experts["frozen"], message="f", branch="f", base="main")
    for ref, src in (("main", tiny_family.base), ("f", tiny_family.experts["frozen"])):
        out = tmp_path / f"out-{ref}"
        res = store.checkout(ref, out)
        assert _files(out) == _files(src)
        assert res.bytes_written == sum(len(b) for b in _files(src).values())


def test_failed_checkout_leaves_no_partial_files(tiny_family, store: Store, tmp_path: Path) -> None:
    store.commit(tiny_family.base, message="base", branch="main")
    # Corrupt the last block appended (it belongs to the last tensor file committed).
    pack = max(store.repo.pack_dir.glob("pack-*.pack"))
    offsets = list(packs.walk_pack(pack))
    off, _bid, length = offsets[-1]
    with open(pack, "r+b") as f:
        f.seek(off + length // 2)
        b = f.read(1)
        f.seek(off + length // 2)
        f.write(bytes([b[0] ^ 0x01]))
    store.repo.packs.close()
    out = tmp_path / "out"
    with pytest.raises(CorruptionError):
        store.checkout("main", out)
    left = [p.name for p in out.rglob("*") if p.is_file()]
    assert not [n for n in left if n.endswith(".mergestore-tmp")]
    # whatever was renamed into place is complete and correct
    src = _files(tiny_family.base)
    for rel, data in _files(out).items():
        assert src[rel] == data


def test_tensor_subset_checkout_matches_source_tensors(
    tiny_family, store: Store, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    store.commit(tiny_family.base, message="base", branch="main")
    out = tmp_path / "sub"
    store.checkout("main", out, tensors=["*.0.self_attn.*"])
    got = load_file(out / "model.safetensors")
    assert got and all(".0.self_attn." in k for k in got)
    want = {}
    for shard in tiny_family.base.glob("*.safetensors"):
        want.update({k: v for k, v in load_file(shard).items() if k in got})
    assert sorted(got) == sorted(want)
    for k in got:
        assert torch.equal(got[k].view(torch.int16), want[k].view(torch.int16))


def test_pack_background_syncs_keep_appended_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = packs.sync_in_background

    def recording(fd: int) -> Future[None] | None:
        calls.append(os.fstat(fd).st_size)
        fut = real(fd)
        assert fut is not None  # Linux: the flusher thread ran it
        fut.result()  # done before the next append: every window gets its own sync
        return fut

    monkeypatch.setattr(packs, "SYNC_EVERY_BYTES", 1000)
    monkeypatch.setattr(packs, "sync_in_background", recording)
    app = packs.PackAppender(tmp_path)
    payloads = [os.urandom(300 + i) for i in range(10)]
    where = [app.append(bytes([i]) * 32, p) for i, p in enumerate(payloads)]
    app.sync()
    app.close()
    # one sync per 1000 bytes appended, each asked once the window was full
    assert len(calls) == 3
    assert all(b - a >= 1000 for a, b in zip([len(packs.PACK_MAGIC), *calls], calls, strict=False))
    reader = packs.PackReader(tmp_path)
    assert [
        reader.read(pid, off, len(p)) for (pid, off), p in zip(where, payloads, strict=True)
    ] == payloads
    reader.close()


def test_pack_background_sync_is_never_queued_behind_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk: while one background sync runs, appends past the window ask for none."""
    pending: Future[None] = Future()
    calls: list[int] = []

    def slow(fd: int) -> Future[None]:
        calls.append(fd)
        return pending

    monkeypatch.setattr(packs, "SYNC_EVERY_BYTES", 1000)
    monkeypatch.setattr(packs, "sync_in_background", slow)
    app = packs.PackAppender(tmp_path)
    for i in range(10):
        app.append(bytes([i]) * 32, os.urandom(500))
    assert len(calls) == 1
    pending.set_result(None)
    app.append(b"\xff" * 32, os.urandom(1500))
    assert len(calls) == 2
    app.sync()
    app.close()


def test_one_torch_thread_restores_the_thread_count() -> None:
    torch = pytest.importorskip("torch")
    assert "torch" in sys.modules
    before = torch.get_num_threads()
    with one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
