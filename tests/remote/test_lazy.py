"""Lazy clones: no blocks at clone time; commands fetch exactly the blocks they read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergestore.api import Store
from mergestore.fsck import fsck
from mergestore.usage import iter_commit_blocks


@pytest.fixture
def lazy(tmp_path: Path, tiny_family, remote_url: str) -> Store:
    src = Store.init(tmp_path / "src", block_size=4096)
    src.commit(tiny_family.base, message="base")
    src.commit(tiny_family.experts["dense_small"], message="ds", branch="ds", base="main")
    src.commit(tiny_family.experts["lowrank_attn"], message="la", branch="la", base="main")
    src.analyze("ds", "main")
    src.add_remote("origin", remote_url)
    assert src.push("origin", "main", "ds", "la").ok
    src.close()
    s = Store.clone(remote_url, tmp_path / "lazy", lazy=True)
    yield s
    s.close()


def _local_blocks(store: Store) -> int:
    return sum(1 for _ in store.repo.iter_blocks())


def _stored(store: Store, ids) -> int:
    total = 0
    seen: set[bytes] = set()
    for bid in ids:
        if bid in seen:
            continue
        seen.add(bid)
        loc = store.repo.block_location(bid)
        total += loc.length
        if loc.ref is not None and loc.ref not in seen:
            seen.add(loc.ref)
            total += store.repo.block_location(loc.ref).length
    return total


def _file_blocks(store: Store, ref: str) -> list[bytes]:
    """Blocks of a commit's non-tensor files and safetensors headers."""
    from mergestore.store.objects import BlobFile, TensorFile

    out: list[bytes] = []
    for e in store.tree(ref).entries:
        obj = store.repo.get_file(e.object)
        if isinstance(obj, TensorFile):
            obj = store.repo.get_file(obj.header)
        assert isinstance(obj, BlobFile)
        out.extend(obj.blocks)
    return out


def test_lazy_clone_fetches_metadata_only(lazy: Store):
    assert _local_blocks(lazy) == 0
    assert {e.commit.message for e in lazy.log(all_refs=True)} == {"base", "ds", "la"}
    assert lazy.files("origin/ds")  # trees and file objects are here
    assert lazy.tensors("origin/la")
    # kept statistics came along: diff needs no block for the blocks it has figures for
    assert any(
        True
        for _ in lazy.repo.stats_of_blocks(iter_commit_blocks(lazy.repo, lazy.resolve("origin/ds")))
    )
    assert lazy.bytes_fetched == 0


def test_read_tensor_and_checkout_tensor_fetch_only_that_tensor(lazy: Store, tmp_path, tiny_family):
    rec = max(lazy.tensors("origin/ds"), key=lambda t: t.nbytes)
    want = _stored(lazy, rec.blocks)
    t = lazy.read_tensor("origin/ds", rec.name)
    assert lazy.bytes_fetched <= 1.2 * want
    ref = None
    for f in sorted(Path(tiny_family.experts["dense_small"]).glob("*.safetensors")):
        d = load_file(f)
        if rec.name in d:
            ref = d[rec.name]
    assert ref is not None and torch.equal(t, ref)
    # Kept locally: reading it again fetches nothing.
    before = lazy.bytes_fetched
    lazy.read_tensor("origin/ds", rec.name)
    assert lazy.bytes_fetched == before

    base = {t.name: t.blocks for t in lazy.tensors("main")}
    changed = [t for t in lazy.tensors("origin/la") if t.blocks != base.get(t.name)]
    rec2 = max(changed, key=lambda t: t.nbytes)
    before = lazy.bytes_fetched
    lazy.checkout("origin/la", tmp_path / "one", tensors=[rec2.name])
    fetched = lazy.bytes_fetched - before
    assert 0 < fetched <= 1.2 * _stored(lazy, rec2.blocks) + 8192  # + the file's header block


def test_checkout_diff_replay_and_fsck_in_a_lazy_clone(lazy: Store, tmp_path, tiny_family):
    lazy.checkout("origin/ds", tmp_path / "out")
    for f in Path(tiny_family.experts["dense_small"]).iterdir():
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()
    d = lazy.diff("main", "origin/la")
    assert d is not None
    rep = fsck(lazy.repo, full=True)
    assert rep.ok, rep.to_json()
    # The blocks it fetched are kept (published when the store closes): a fresh process
    # reads them locally.
    path = lazy.path
    lazy.close()
    again = Store.open(path)
    try:
        assert _local_blocks(again) > 0
        assert fsck(again.repo).ok
        again.checkout("origin/ds", tmp_path / "out2")
        assert again.bytes_fetched == 0
    finally:
        again.close()


def test_budgeted_merge_in_a_lazy_clone_fetches_what_its_plan_reads(lazy: Store, cli, tmp_path):
    path = lazy.path
    lazy.close()
    r = cli(
        "--store", path, "merge", "--method", "task_arithmetic", "--base", "main",
        "origin/ds", "origin/la", "-w", "0.5", "-w", "0.5", "--budget", "10%", "-b", "m", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    out = r.json()
    assert "bytes_fetched" in out
    read = out["expert_bytes_read"] + out["base_bytes_read"]
    again = Store.open(path)
    try:  # besides tensor blocks the merge copies the base's other files and headers
        files = _stored(again, _file_blocks(again, "main"))
    finally:
        again.close()
    assert 0 < out["bytes_fetched"] <= read + files
    assert out["expert_bytes_read"] < out["expert_bytes_full"]
    r = cli("--store", path, "replay", "m", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["identical"] is True


def test_a_lazy_clone_keeps_the_remote_it_still_needs(lazy: Store, cli):
    path = lazy.path
    lazy.close()
    r = cli("--store", path, "remote", "remove", "origin")
    assert r.code == 1 and "has not fetched" in r.err
    assert cli("--store", path, "fsck", "--full").code == 0  # reads (so fetches) every block
    assert cli("--store", path, "remote", "remove", "origin").code == 0
    r = cli("--store", path, "checkout", "origin/ds", path.parent / "x")
    assert r.code == 1  # the remote-tracking refs went with the remote
    assert cli("--store", path, "checkout", "main", path.parent / "y").code == 0
