"""Faults on Ray: a worker killed mid-task is retried and the commit is still right; a driver
killed mid-merge publishes nothing and gc removes the workers' orphan packs; a corrupt or
missing block fails the merge with one line naming the tensor and the block."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.merge.config import config_from_cli
from mergestore.merge.ray_executor import RayExecutor
from mergestore.store.packs import list_pack_ids, pack_path

X = ["dense_small", "frozen", "lowrank_attn"]


def _cfg(method: str = "ties") -> object:
    return config_from_cli(method, "main", X, [0.5, 0.3, 0.2], {"density": 0.5}, None, None, 5)


def test_worker_killed_mid_task_is_retried(ray_session, tmp_path: Path, cli) -> None:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    packs_before = set(list_pack_ids(store.repo.pack_dir))
    marker = tmp_path / "killed-once"
    ex = RayExecutor(fault=f"kill-once:{marker}")
    r = store.merge(config=_cfg(), branch="ray", executor=ex)
    assert marker.exists()  # a worker did die mid-task
    assert store.merge(config=_cfg(), branch="local", force=True).run["identical"]
    assert store.get_commit("ray").tree == store.get_commit("local").tree
    assert store.replay("ray")["identical"]
    assert r.run["bytes_written"] > 0
    orphans = set(list_pack_ids(store.repo.pack_dir)) - packs_before
    root = store.repo.path
    store.close()
    assert cli("--store", root, "fsck", "--full").code == 0
    assert cli("--store", root, "gc").code == 0
    assert cli("--store", root, "fsck", "--full").code == 0
    left = set(list_pack_ids(root / "packs"))
    # the killed attempt's pack named nothing the index keeps: gc took it away
    assert orphans - left, (orphans, left)


def _wait_for_settled_packs(pack_dir: Path, timeout: float = 60.0) -> None:
    """Wait until no pack appears or grows for two seconds: Ray lets the tasks of a killed
    driver finish, and their packs are still being written for a moment after it died."""
    deadline = time.monotonic() + timeout
    last: dict[int, int] | None = None
    stable = 0
    while time.monotonic() < deadline:
        now = {p: pack_path(pack_dir, p).stat().st_size for p in list_pack_ids(pack_dir)}
        stable = stable + 1 if now == last else 0
        if stable >= 4:
            return
        last = now
        time.sleep(0.5)


def test_driver_killed_mid_merge_publishes_nothing(ray_session, tmp_path: Path, cli) -> None:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    root = store.repo.path
    store.close()
    refs_before = cli("--store", root, "log", "--all", "--json").out
    packs_before = set(list_pack_ids(root / "packs"))
    address = ray_session.get_runtime_context().gcs_address
    env = dict(os.environ, MERGESTORE_FAULT="ray-task-done@2", MERGESTORE_PROGRESS="0")
    p = subprocess.run(
        [sys.executable, "-m", "mergestore.cli.main", "--store", str(root), "merge",
         "--method", "ties", "--base", "main", *X, "-w", "0.5", "-w", "0.3", "-w", "0.2",
         "--param", "density=0.5", "-b", "doomed", "--executor", "ray",
         "--ray-address", address],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode == 137, p.stderr[-2000:]
    assert cli("--store", root, "log", "--all", "--json").out == refs_before
    assert cli("--store", root, "show", "doomed").code != 0
    _wait_for_settled_packs(root / "packs")  # the dead driver's running tasks may still write
    orphans = set(list_pack_ids(root / "packs")) - packs_before
    assert orphans  # the finished tasks' packs, never adopted
    assert cli("--store", root, "gc").code == 0  # the default grace period
    left = {p for p in orphans if pack_path(root / "packs", p).exists()}
    assert all(pack_path(root / "packs", p).stat().st_size <= 8 for p in left)  # emptied
    assert cli("--store", root, "fsck", "--full").code == 0


def test_corrupt_block_names_tensor_and_block(ray_session, tmp_path: Path, cli) -> None:
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
            "dense_small", "-w", "0.5", "-b", "merged", "--executor", "ray")  # fmt: skip
    assert r.code == 1
    assert r.err.strip().count("\n") == 0, r.err
    assert name in r.err and victim.hex()[:12] in r.err and "corrupt" in r.err, r.err
    assert cli("--store", root, "show", "merged").code != 0


def test_missing_block_names_tensor_and_block(ray_session, tmp_path: Path, cli) -> None:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    name = next(t.name for t in store.tensors("main") if t.name.endswith("mlp.up_proj.weight"))
    base_rec = store.tensor_record(store.resolve("main"), name)
    expert_rec = store.tensor_record(store.resolve("dense_small"), name)
    victim = next(b for b, a in zip(expert_rec.blocks, base_rec.blocks, strict=True) if b != a)
    with store.repo.index.write() as txn:  # the index loses the block (as a bad repair might)
        assert txn.delete(victim, db=store.repo.index.db("blocks"))
    root = store.repo.path
    store.close()
    r = cli("--store", root, "merge", "--method", "task_arithmetic", "--base", "main",
            "dense_small", "-w", "0.5", "-b", "merged", "--executor", "ray")  # fmt: skip
    assert r.code == 1 and r.err.strip().count("\n") == 0, r.err
    assert name in r.err and victim.hex()[:12] in r.err and "missing" in r.err, r.err
    assert cli("--store", root, "show", "merged").code != 0
