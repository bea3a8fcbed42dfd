"""A merge on Ray gives the local executor's commit tree and block ids, for every method and
budget; replay of either is identical; workers read only the blocks they were sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.api import Store
from mergestore.merge.config import config_from_cli
from mergestore.ops.registry import method_names

X = ["dense_small", "frozen", "lowrank_attn"]
# method -> (base, models, weights, params, budget); every registered method is here
CASES: dict[str, tuple] = {
    "task_arithmetic": ("main", X, [0.5, 0.3, 0.2], {}, None),
    "ties": ("main", X, [0.5, 0.3, 0.2], {"density": 0.5}, None),
    "dare_ties": ("main", X, [0.5, 0.3, 0.2], {"density": 0.6}, None),
    "dare_linear": ("main", X, [0.5, 0.3, 0.2], {"density": 0.6}, None),
    "breadcrumbs": ("main", X, [0.5, 0.3, 0.2], {"density": 0.8, "gamma": 0.05}, None),
    "breadcrumbs_ties": ("main", X, [0.5, 0.3, 0.2], {"density": 0.8, "gamma": 0.05}, None),
    "della": ("main", X, [0.5, 0.3, 0.2], {"density": 0.5, "epsilon": 0.1}, None),
    "della_linear": ("main", X, [0.5, 0.3, 0.2], {"density": 0.5, "epsilon": 0.1}, None),
    "linear": (None, X, [0.5, 0.3, 0.2], {}, None),
    "model_stock": ("main", X[:2], None, {}, None),
    "sce": ("main", X, None, {"select_topk": 0.5}, None),
    "slerp": ("main", X[:1], None, {"t": 0.3}, None),
    "nuslerp": (None, X[:2], [0.3, 0.7], {}, None),
    "multislerp": (None, X, [0.5, 0.3, 0.2], {}, None),
    "karcher": (None, X, None, {}, None),
    "nearswap": ("main", X[:1], None, {"t": 0.05}, None),
    "ram": ("main", X, None, {"epsilon": 0.05}, None),
    "ramplus_tl": ("main", X, None, {"epsilon": 0.05}, None),
    "arcee_fusion": ("main", X[:1], None, {}, None),
    "passthrough": (None, X[:1], None, {}, None),
}
BUDGETED = {  # the same merges under an I/O budget (the planner omits expert blocks)
    "task_arithmetic@30%": ("task_arithmetic", "30%"),
    "ties@50%": ("ties", "50%"),
    "dare_ties@20%": ("dare_ties", "20%"),
}


@pytest.fixture(scope="module")
def fam_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store, _fam = family_store(tmp_path_factory.mktemp("rayfam"), PRESETS["tiny"])
    yield store
    store.close()


def test_every_method_is_covered() -> None:
    assert set(CASES) == set(method_names())


def _tree_and_blocks(store: Store, ref: str) -> tuple[bytes, dict[str, tuple[bytes, ...]]]:
    c = store.get_commit(ref)
    return c.tree, {t.name: tuple(t.blocks) for t in store.tensors(ref)}


@pytest.mark.parametrize("case", [*CASES, *BUDGETED])
def test_ray_equals_local(ray_session, fam_store: Store, case: str) -> None:
    method, budget = BUDGETED.get(case, (case, None))
    base, models, weights, params, _ = CASES[method]
    cfg = config_from_cli(method, base, models, weights, params, None, None, 7)
    loc = fam_store.merge(config=cfg, budget=budget, branch=f"local-{case}")
    # the same plan is memoized: --force computes it again on Ray and refuses other blocks
    ray_ = fam_store.merge(
        config=cfg, budget=budget, branch=f"ray-{case}", executor="ray", force=True
    )
    assert ray_.run["forced"] and ray_.run["identical"]
    assert _tree_and_blocks(fam_store, f"local-{case}") == _tree_and_blocks(
        fam_store, f"ray-{case}"
    )
    assert ray_.plan == loc.plan  # the same plan object: the same budget selection
    assert ray_.run["executor"]["name"] == "ray" and ray_.run["executor"]["tasks"] >= 1
    assert ray_.run["tensors_computed"] == len(fam_store.tensors(f"ray-{case}"))
    for key in ("expert_bytes_read", "base_bytes_read", "blocks_from_base", "tensors"):
        assert ray_.run[key] == loc.run[key], key
    assert fam_store.replay(f"ray-{case}")["identical"]
    assert fam_store.replay(f"local-{case}")["identical"]


def test_ray_first_writes_the_blocks(ray_session, tmp_path: Path, cli) -> None:
    """On a fresh store the Ray merge stores every new output block itself (adopted from the
    workers' packs), `fsck --full` finds the store sound, and the same merge run locally
    afterwards has nothing left to write."""
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    cfg = config_from_cli("ties", "main", X, [0.5, 0.3, 0.2], {"density": 0.5}, None, None, 1)
    r = store.merge(config=cfg, branch="r", executor="ray")
    assert r.run["bytes_written"] > 0
    loc = store.merge(config=cfg, branch="l", force=True)
    assert loc.run["bytes_written"] == 0 and loc.run["identical"]
    assert store.get_commit("r").tree == store.get_commit("l").tree
    store.close()
    res = cli("--store", tmp_path / "store", "fsck", "--full")
    assert res.code == 0, res.out + res.err


def test_ray_merge_with_out_folder(ray_session, fam_store: Store, tmp_path: Path) -> None:
    """`merge --out` on Ray: the folder is filled from the store after the commit and equals
    a checkout of it, file for file."""
    cfg = config_from_cli("task_arithmetic", "main", X, [0.5, 0.3, 0.2], {}, None, None, 2)
    r = fam_store.merge(config=cfg, branch="ray-out", executor="ray", out=tmp_path / "out")
    assert r.out is not None
    fam_store.checkout("ray-out", tmp_path / "co")
    names = sorted(p.name for p in (tmp_path / "co").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "out").iterdir())
    for n in names:
        assert (tmp_path / "out" / n).read_bytes() == (tmp_path / "co" / n).read_bytes(), n
