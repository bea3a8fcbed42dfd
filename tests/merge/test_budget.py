"""Budgeted merges: never over budget, exact at 100%, error within the reported bound."""

from __future__ import annotations

import pytest
import torch

from fixtures.family import FamilySpec, make_family
from mergestore.api import Store
from mergestore.errors import BudgetError

EXPERTS = ["uneven0", "uneven1", "uneven2"]


@pytest.fixture(scope="module")
def f32_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("budget")
    spec = FamilySpec(
        n_layers=4,
        hidden=64,
        intermediate=128,
        vocab=256,
        dtype="float32",
        experts=tuple(EXPERTS),
        seed=5,
    )
    fam = make_family(root / "fam", spec)
    s = Store.init(root / "store", block_size=4096)
    s.commit(fam.base, message="base", branch="main")
    for name, path in fam.experts.items():
        s.commit(path, message=name, branch=name, base="main")
    yield s
    s.close()


def _merge(store: Store, branch: str, **kw):
    return store.merge(
        method="task_arithmetic",
        base="main",
        models=EXPERTS,
        weights=[0.5, 0.3, 0.8],
        dtype="float32",
        branch=branch,
        **kw,
    )


def _tensors(store: Store, ref: str) -> dict[str, torch.Tensor]:
    return {t.name: store.read_tensor(ref, t.name) for t in store.tensors(ref)}


def _dist(a: dict, b: dict) -> float:
    return sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a) ** 0.5


def test_full_budget_is_bit_identical(f32_store: Store) -> None:
    _merge(f32_store, "full")
    _merge(f32_store, "b100", budget="100%")
    assert f32_store.get_commit("full").tree == f32_store.get_commit("b100").tree


@pytest.mark.parametrize("share", ["50%", "25%", "10%"])
def test_budget_respected_and_bound_holds(f32_store: Store, share: str) -> None:
    if "full" not in f32_store.branches():
        _merge(f32_store, "full")
    res = _merge(f32_store, f"b{share[:-1]}", budget=share)
    run = res.run
    assert run["budget_bytes"] is not None
    assert run["expert_bytes_read"] <= run["budget_bytes"]
    assert run["expert_bytes_read"] > 0
    measured = _dist(_tensors(f32_store, "full"), _tensors(f32_store, f"b{share[:-1]}"))
    assert run["error_bound"] is not None
    assert measured <= run["error_bound"] * (1 + 1e-9) + 1e-12
    assert f32_store.replay(f"b{share[:-1]}")["identical"]


def test_scored_choice_beats_uniform_choice(f32_store: Store) -> None:
    """At the same byte budget, the planner keeps more of the delta than the base-only merge."""
    base = _tensors(f32_store, "main")
    if "full" not in f32_store.branches():
        _merge(f32_store, "full")
    full = _tensors(f32_store, "full")
    _merge(f32_store, "b20", budget="20%")
    kept = 1 - _dist(full, _tensors(f32_store, "b20")) / _dist(full, base)
    assert kept > 0.2  # uneven deltas: 20% of the bytes hold well over 20% of the delta


def test_budget_zero_gives_base(f32_store: Store) -> None:
    res = _merge(f32_store, "zero", budget="0")
    assert res.run["expert_bytes_read"] == 0
    base = {t.name: t.blocks for t in f32_store.tensors("main")}
    assert {t.name: t.blocks for t in f32_store.tensors("zero")} == base


def test_plan_id_is_deterministic(f32_store: Store) -> None:
    from mergestore.merge.config import config_from_cli

    cfg = config_from_cli(
        "task_arithmetic", "main", EXPERTS, [0.5, 0.3, 0.8], {}, "float32", None, None
    )
    a = f32_store.prepare_merge(cfg, budget="30%").plan.id
    b = f32_store.prepare_merge(cfg, budget="30%").plan.id
    c = f32_store.prepare_merge(cfg, budget="31%").plan.id
    assert a == b != c


def test_max_error_meets_its_target(f32_store: Store) -> None:
    res = _merge(f32_store, "me", max_error=0.2)
    sel_bound = res.run["error_bound"]
    plan = f32_store.repo.get_plan(res.plan).body["budget"]
    assert sel_bound <= 0.2 * plan["full_delta_bound"] * (1 + 1e-9)
    assert res.run["expert_bytes_read"] < plan["expert_bytes_full"]


@pytest.mark.parametrize(
    ("budget", "msg"), [("12 parsecs", "unit"), ("5", "smaller than any"), ("150%", "over 100%")]
)
def test_budget_errors(f32_store: Store, budget: str, msg: str) -> None:
    with pytest.raises(BudgetError, match=msg):
        _merge(f32_store, "err", budget=budget)


def test_budget_on_passthrough_refused(f32_store: Store) -> None:
    with pytest.raises(BudgetError, match="passthrough"):
        f32_store.merge(method="passthrough", models=["uneven0"], budget="10%", branch="p")


def test_budget_without_base_refused(f32_store: Store) -> None:
    with pytest.raises(BudgetError, match="base"):
        f32_store.merge(
            method="linear", models=EXPERTS, weights=[1, 1, 1], budget="10%", branch="l"
        )


def test_cli_plan_explain_blame(f32_store: Store, cli) -> None:
    st = ["--store", f32_store.path]
    r = cli(
        *st,
        "plan",
        "--method",
        "task_arithmetic",
        "--base",
        "main",
        *EXPERTS,
        "-w",
        "0.5",
        "-w",
        "0.3",
        "-w",
        "0.8",
        "--budget",
        "25%",
        "--json",
    )
    assert r.code == 0, r.err
    p = r.json()
    assert p["expert_bytes_planned"] <= p["budget_bytes"]
    r = cli(
        *st,
        "merge",
        "--method",
        "task_arithmetic",
        "--base",
        "main",
        *EXPERTS,
        "-w",
        "0.5",
        "-w",
        "0.3",
        "-w",
        "0.8",
        "--budget",
        "25%",
        "-b",
        "c25",
        "--json",
    )
    assert r.code == 0, r.err
    m = r.json()
    for key in (
        "commit",
        "plan",
        "expert_bytes_read",
        "expert_bytes_full",
        "budget_bytes",
        "error_bound",
        "base_bytes_read",
        "bytes_written",
    ):
        assert key in m
    assert m["plan"] == p["plan"]
    r = cli(*st, "explain", "c25", "--json")
    assert r.json()["realized"]["expert_bytes_read"] == m["expert_bytes_read"]
    name = "model.layers.3.mlp.up_proj.weight"
    r = cli(*st, "blame", "c25", name, "--json")
    assert r.code == 0 and len(r.json()["inputs"]) == 3
    r = cli(*st, "replay", "c25", "--json")
    assert r.code == 0 and r.json()["identical"] is True
