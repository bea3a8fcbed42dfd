"""--saliency with a multi-document recipe: every step's budget is ranked by it."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from fixtures.store import commit_family
from mergestore.api import Store

RECIPE = """\
name: soup
merge_method: task_arithmetic
base_model: main
models:
  - model: dense_small
    parameters: {weight: 0.5}
  - model: frozen
    parameters: {weight: 0.3}
---
name: final
merge_method: ties
base_model: main
parameters: {density: 0.5}
models:
  - model: soup
    parameters: {weight: 0.7}
  - model: lowrank_attn
    parameters: {weight: 0.4}
"""


def _gradients(store: Store, path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    shapes = {t.name: t.shape for t in store.tensors("main")}
    grads = {n: torch.randn(shape, generator=g, dtype=torch.float32) for n, shape in shapes.items()}
    save_file(grads, str(path), metadata={"saliency": "gradient"})


def test_recipe_with_saliency(tiny_family, store: Store, cli, tmp_path: Path) -> None:
    commit_family(store, tiny_family)
    cfg, sal = tmp_path / "recipe.yml", tmp_path / "g.safetensors"
    cfg.write_text(RECIPE)
    _gradients(store, sal)
    s = str(store.path)
    args = ["--store", s, "merge", "--config", cfg, "-b", "r", "--budget", "40%"]
    r = cli(*args, "--saliency", sal, "--json")
    assert r.code == 0, r.err
    steps = r.json()["steps"]
    assert [x["step"] for x in steps] == ["soup", "final"]
    for x in steps:
        plan = store.merge_info(x["branch"])[2]
        assert plan["budget"]["saliency"]["kind"] == "gradient"
        assert x["planning_bytes_read"] == sal.stat().st_size  # each step reads it once
        assert x["expert_bytes_read"] <= x["budget_bytes"]
        assert cli("--store", s, "replay", x["branch"]).code == 0
    ids = {store.merge_info(x["branch"])[2]["budget"]["saliency"]["id"] for x in steps}
    assert len(ids) == 1
    # the same recipe and saliency again: every step is up to date
    again = cli(*args, "--saliency", sal, "--json").json()["steps"]
    assert all(x["memo"] for x in again)
    # without the saliency the budget is norm-greedy: other plans
    plain = cli(*args[:-2], "-b", "p", "--budget", "40%", "--json")
    assert plain.code == 0, plain.err
    assert [x["plan"] for x in plain.json()["steps"]] != [x["plan"] for x in steps]


def test_recipe_with_a_bad_saliency_is_one_line_and_stores_nothing(
    tiny_family, store: Store, cli, tmp_path: Path
) -> None:
    commit_family(store, tiny_family)
    cfg, bad = tmp_path / "recipe.yml", tmp_path / "bad.safetensors"
    cfg.write_text(RECIPE)
    save_file({"x": torch.zeros(2)}, str(bad), metadata={"saliency": "gradient"})
    before = store.branches()
    s = str(store.path)
    r = cli("--store", s, "merge", "--config", cfg, "--budget", "40%", "--saliency", bad)
    assert r.code == 1
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "no tensor" in r.err
    assert store.branches() == before
    j = cli("--store", s, "merge", "--config", cfg, "--budget", "40%", "--saliency", bad, "--json")
    assert j.code == 1 and "no tensor" in j.json()["error"]
    # --saliency without a budget is a usage error, as for one merge
    u = cli("--store", s, "merge", "--config", cfg, "--saliency", bad)
    assert u.code == 2
