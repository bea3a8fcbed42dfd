"""Many merges at once: merge_many and `merge --config a.yml --config b.yml` on Ray and
locally; results in input order, one commit and branch per config, failures per config."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.api import Store

WEIGHTS = [0.1, 0.3, 0.5, 0.7, 0.9]


def _sweep(root: Path) -> list[Path]:
    root.mkdir()
    paths = []
    for i, w in enumerate(WEIGHTS):
        p = root / f"w{i}.yml"
        p.write_text(
            "merge_method: task_arithmetic\nbase_model: main\nmodels:\n"
            f"  - model: dense_small\n    parameters: {{weight: {w}}}\n"
            "  - model: lowrank_attn\n    parameters: {weight: 0.4}\n"
        )
        paths.append(p)
    return paths


@pytest.fixture
def sweep_store(tmp_path: Path) -> tuple[Store, list[Path]]:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    yield store, _sweep(tmp_path / "sweep")
    store.close()


def test_merge_many_on_ray_equals_local_merges(ray_session, sweep_store) -> None:
    store, paths = sweep_store
    bad = paths[0].parent / "bad.yml"
    bad.write_text("merge_method: task_arithmetic\nbase_model: main\nmodels:\n  - model: nope\n")
    configs = [*paths[:2], bad, *paths[2:]]
    read: list[int] = []
    done: list[str] = []
    res = store.merge_many(
        configs, executor="ray", on_bytes=read.append, on_merge=lambda r: done.append(r.label)
    )
    assert [r.label for r in res] == [str(p) for p in configs]  # input order
    assert [r.ok for r in res] == [True, True, False, True, True, True]
    assert "nope" in res[2].error and "\n" not in res[2].error
    assert sorted(done) == sorted(str(p) for p in configs)  # every config reported once
    local = store.merge_many(paths, branches=[f"local-{p.stem}" for p in paths], force=True)
    assert all(r.ok and r.result.run["identical"] for r in local)  # recomputed: same blocks
    for p, lr in zip(paths, local, strict=True):
        ray_commit = store.get_commit(p.stem)  # the branch is the file's stem
        assert ray_commit.tree == store.get_commit(lr.result.commit).tree
        assert store.replay(p.stem)["identical"]
    # the merges shared tasks: blocks they all read were read from the packs once per task
    per_merge = sum(r.result.run["expert_bytes_read"] + r.result.run["base_bytes_read"]
                    for r in res if r.ok)  # fmt: skip
    assert 0 < sum(read) < per_merge


def test_merge_many_local_runs_one_by_one(sweep_store) -> None:
    store, paths = sweep_store
    res = store.merge_many(paths[:2])
    assert [r.branch for r in res] == ["w0", "w1"] and all(r.ok for r in res)
    single = store.merge(config=paths[0], branch="single")
    assert store.get_commit("single").tree == store.get_commit("w0").tree
    assert single.plan == res[0].result.plan


def test_merge_many_needs_branch_names_for_config_objects(sweep_store) -> None:
    from mergestore.merge.config import load_config

    store, paths = sweep_store
    res = store.merge_many([load_config(paths[0]), paths[1]])
    assert not res[0].ok and "branch" in res[0].error
    assert res[1].ok


def test_cli_several_configs_on_ray(ray_session, sweep_store, cli) -> None:
    store, paths = sweep_store
    root = store.repo.path
    store.close()
    # repeated --config, and a shell glob after --config (the rest arrive as arguments)
    r = cli("--store", root, "merge", "--config", paths[0], "--config", paths[1],
            "--executor", "ray", "--json")  # fmt: skip
    assert r.code == 0, r.err
    out = r.json()
    assert [m["branch"] for m in out["merges"]] == ["w0", "w1"] and out["failed"] == 0
    r = cli("--store", root, "merge", "--config", *paths[2:], "--executor", "ray")
    assert r.code == 0, r.err
    assert "3 of 3 merges done" in r.err
    for p in paths:
        assert cli("--store", root, "show", p.stem).code == 0
    r = cli("--store", root, "merge", "--config", *paths[:2], "-b", "x")
    assert r.code == 1 and r.err.strip().count("\n") == 0
