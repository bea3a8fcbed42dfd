"""Multi-step recipes (mergekit-multi's multi-document YAML): order, branches, make-like skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.errors import MergeError
from mergestore.merge import engine as engine_mod

RECIPE = """\
name: soup
merge_method: task_arithmetic
base_model: main
models:
  - model: dense_small
    parameters: {{weight: 0.5}}
  - model: frozen
    parameters: {{weight: 0.3}}
---
merge_method: linear
models:
  - model: soup
    parameters: {{weight: 0.5}}
  - model: mix
    parameters: {{weight: 0.5}}
---
name: mix
merge_method: linear
models:
  - model: soup
    parameters: {{weight: {w}}}
  - model: lowrank_attn
    parameters: {{weight: 0.4}}
"""


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    commit_family(store, tiny_family)
    return store


@pytest.fixture
def engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = engine_mod.Engine.run

    def counting(self, tasks, *a, **k):
        calls.append(len({t.plan.name for t in tasks}))  # a tensor cut into pieces once
        return real(self, tasks, *a, **k)

    monkeypatch.setattr(engine_mod.Engine, "run", counting)
    return calls


def test_recipe_runs_in_order_and_skips_unchanged_steps(
    family_store: Store, cli, tmp_path: Path, engine_calls: list[int]
) -> None:
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(RECIPE.format(w=0.6))
    s = str(family_store.path)
    r = cli("--store", s, "merge", "--config", cfg, "-b", "r", "--json")
    assert r.code == 0, r.err
    steps = r.json()["steps"]
    assert [x["step"] for x in steps] == ["soup", "mix", "final"]  # dependency order
    assert [x["branch"] for x in steps] == ["r/soup", "r/mix", "r/final"]
    assert not any(x["memo"] for x in steps)
    for x in steps:
        assert family_store.resolve(x["branch"]).hex() == x["commit"]
    # mix and final read earlier steps' commits
    mix = family_store.get_commit("r/mix")
    assert family_store.resolve("r/soup") in mix.parents
    final = family_store.get_commit("r/final")
    assert {family_store.resolve("r/soup"), family_store.resolve("r/mix")} <= set(final.parents)
    # run again: every step is up to date, nothing is computed
    engine_calls.clear()
    r = cli("--store", s, "merge", "--config", cfg, "-b", "r")
    assert r.code == 0, r.err
    assert r.out.count("up to date") == 3 and engine_calls == []
    # change one step: it and the steps after it are merged again, the first is skipped
    cfg.write_text(RECIPE.format(w=0.7))
    r = cli("--store", s, "merge", "--config", cfg, "-b", "r", "--json")
    assert r.code == 0, r.err
    memo = {x["step"]: x["memo"] for x in r.json()["steps"]}
    assert memo == {"soup": True, "mix": False, "final": False}


def test_recipe_refuses_cycles_and_unknown_names_before_any_work(
    family_store: Store, cli, tmp_path: Path, engine_calls: list[int]
) -> None:
    s = str(family_store.path)
    cyc = tmp_path / "cycle.yml"
    cyc.write_text(
        "name: a\nmerge_method: linear\nmodels: [{model: b, parameters: {weight: 1}},"
        " {model: main, parameters: {weight: 1}}]\n---\n"
        "name: b\nmerge_method: linear\nmodels: [{model: a, parameters: {weight: 1}},"
        " {model: main, parameters: {weight: 1}}]\n"
    )
    r = cli("--store", s, "merge", "--config", cyc, "-b", "c")
    assert r.code != 0 and "cycle" in r.err and "a -> b -> a" in r.err
    unk = tmp_path / "unknown.yml"
    unk.write_text(
        "name: a\nmerge_method: linear\nmodels: [{model: main, parameters: {weight: 1}},"
        " {model: frozen, parameters: {weight: 1}}]\n---\n"
        "name: b\nmerge_method: linear\nmodels: [{model: a, parameters: {weight: 1}},"
        " {model: nosuchstep, parameters: {weight: 1}}]\n"
    )
    r = cli("--store", s, "merge", "--config", unk, "-b", "u")
    assert r.code != 0 and "nosuchstep" in r.err
    dup = tmp_path / "dup.yml"
    dup.write_text(
        "name: a\nmerge_method: linear\nmodels: [main, frozen]\n---\n"
        "name: a\nmerge_method: linear\nmodels: [main, frozen]\n"
    )
    r = cli("--store", s, "merge", "--config", dup, "-b", "d")
    assert r.code != 0 and "duplicate step name" in r.err
    assert engine_calls == []
    assert not [b for b in family_store.branches() if b.startswith(("c/", "u/", "d/"))]


def test_recipe_from_python_lazy(family_store: Store, engine_calls: list[int]) -> None:
    rows = family_store.merge_recipe(RECIPE.format(w=0.6), prefix="lz", lazy=True)
    # a lazy step read by a later step is computed for it; the last stays lazy
    assert family_store.merge_state("lz/final") == "lazy"
    assert family_store.merge_state("lz/soup") == "materialized"
    assert len(rows) == 3
    with pytest.raises(MergeError, match="cycle"):
        family_store.merge_recipe(
            "name: a\nmerge_method: linear\nmodels: [a, main]\n", prefix="self"
        )
