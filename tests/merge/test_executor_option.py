"""`--executor`: the local executor by default; Ray, when missing, says how to install it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.merge.executor import LocalExecutor, get_executor


def test_get_executor() -> None:
    assert isinstance(get_executor(None), LocalExecutor)
    assert isinstance(get_executor("local"), LocalExecutor)
    ex = LocalExecutor()
    assert get_executor(ex) is ex


def test_ray_missing_says_how_to_install(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    root = store.repo.path
    store.close()
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = cli("--store", root, "merge", "--method", "task_arithmetic", "--base", "main",
            "dense_small", "-w", "0.5", "-b", "m", "--executor", "ray")  # fmt: skip
    assert r.code == 1
    assert r.err.strip().count("\n") == 0 and 'pip install "mergestore[ray]"' in r.err, r.err
    assert cli("--store", root, "show", "m").code != 0
    r = cli("--store", root, "merge", "--method", "task_arithmetic", "--base", "main",
            "dense_small", "-b", "m", "--executor", "ray", "--json")  # fmt: skip
    assert r.code == 1


def test_local_corrupt_block_names_the_tensor(tmp_path: Path, cli) -> None:
    from mergestore.store.packs import pack_path

    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    name = next(t.name for t in store.tensors("main") if t.name.endswith("mlp.up_proj.weight"))
    base_rec = store.tensor_record(store.resolve("main"), name)
    expert_rec = store.tensor_record(store.resolve("dense_small"), name)
    victim = next(b for b, a in zip(expert_rec.blocks, base_rec.blocks, strict=True) if b != a)
    loc = store.repo.block_location(victim)
    root = store.repo.path
    store.close()
    pack = pack_path(root / "packs", loc.pack)
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x5A
    pack.write_bytes(bytes(data))
    r = cli("--store", root, "merge", "--method", "task_arithmetic", "--base", "main",
            "dense_small", "-w", "0.5", "-b", "m")  # fmt: skip
    assert r.code == 1 and r.err.strip().count("\n") == 0, r.err
    assert name in r.err and victim.hex()[:12] in r.err and "corrupt" in r.err, r.err
