"""Ray gets ready while the driver plans: joining the cluster and starting workers that import
the engine run on a background thread (merge/ray_warm.py), and the merge takes them over."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.merge import ray_warm


@pytest.fixture
def fresh_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_warm, "_thread", None)
    monkeypatch.setattr(ray_warm, "_pending", [])


def test_warm_only_joins_a_running_cluster(fresh_warm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_warm.warm(None) is False  # would start a local instance: not in the background
    ray_warm.warm_for("local", "auto")
    assert ray_warm._thread is None
    ray_warm.wait()  # nothing to wait for


def test_warm_starts_a_worker_per_cpu_that_imports_the_engine(
    ray_session, fresh_warm, tmp_path: Path, cli
) -> None:
    address = ray_session.get_runtime_context().gcs_address
    assert ray_warm.warm(address) is True
    ray_warm.wait()
    cpus = int(ray_session.cluster_resources()["CPU"])
    pids = ray_session.get(ray_warm._pending, timeout=120)
    assert len(pids) == cpus and all(isinstance(p, int) and p > 0 for p in pids)
    # a merge from the CLI with --ray-address warms, then computes on the same cluster
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    root = store.repo.path
    local = store.merge(method="task_arithmetic", base="main", models=["dense_small"],
                        weights=[0.5], branch="l")  # fmt: skip
    store.close()
    r = cli("--store", root, "merge", "--method", "task_arithmetic", "--base", "main",
            "dense_small", "-w", "0.5", "-b", "r", "--executor", "ray", "--ray-address",
            address, "--force", "--json")  # fmt: skip
    assert r.code == 0, r.err
    out = r.json()
    assert out["executor"]["name"] == "ray" and out["commit"] == local.commit.hex()
