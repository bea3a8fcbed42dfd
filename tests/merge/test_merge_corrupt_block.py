"""A merge that meets a corrupt block stops with a one-line error and publishes nothing.

Blocks are decoded straight into the tensors being merged (Repository.read_block_into), so
the check against the block id happens on the tensor's own memory: it must still refuse.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.store.packs import pack_path


@pytest.mark.parametrize("which", ["expert", "base"])
def test_merge_refuses_a_corrupt_block(tmp_path: Path, cli, which: str) -> None:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    name = next(t.name for t in store.tensors("main") if t.name.endswith("mlp.up_proj.weight"))
    base_rec = store.tensor_record(store.resolve("main"), name)
    expert_rec = store.tensor_record(store.resolve("dense_small"), name)
    if which == "base":
        victim = base_rec.blocks[0]
    else:  # a block the expert changed: the merge reads it
        victim = next(b for b, a in zip(expert_rec.blocks, base_rec.blocks, strict=True) if b != a)
    loc = store.repo.block_location(victim)
    store.close()
    pack = pack_path(tmp_path / "store" / "packs", loc.pack)
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x5A
    pack.write_bytes(bytes(data))

    st = ("--store", str(tmp_path / "store"))
    refs_before = cli(*st, "log", "--all", "--json").out
    r = cli(*st, "merge", "--method", "task_arithmetic", "--base", "main", "dense_small",
            "frozen", "-w", "0.5", "-w", "0.5", "-b", "merged")  # fmt: skip
    assert r.code != 0
    assert r.err.strip().count("\n") == 0 and "corrupt" in r.err, r.err
    assert cli(*st, "log", "--all", "--json").out == refs_before
    assert cli(*st, "show", "merged").code != 0


def test_merge_refuses_a_block_missing_from_the_index(tmp_path: Path, cli) -> None:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    name = next(t.name for t in store.tensors("main") if t.name.endswith("mlp.up_proj.weight"))
    base_rec = store.tensor_record(store.resolve("main"), name)
    expert_rec = store.tensor_record(store.resolve("dense_small"), name)
    victim = next(b for b, a in zip(expert_rec.blocks, base_rec.blocks, strict=True) if b != a)
    with store.repo.index.write() as txn:  # the index loses the block (as a bad repair might)
        assert txn.delete(victim, db=store.repo.index.db("blocks"))
    store.close()
    st = ("--store", str(tmp_path / "store"))
    r = cli(*st, "merge", "--method", "task_arithmetic", "--base", "main", "dense_small",
            "-w", "0.5", "-b", "merged")  # fmt: skip
    assert r.code != 0
    assert "missing from the store" in r.err and r.err.strip().count("\n") == 0, r.err
    assert cli(*st, "show", "merged").code != 0
