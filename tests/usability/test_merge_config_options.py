"""Issue 15 item 1: every CLI option against --config is applied or refused, never ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergestore.api import Store

YAML = """merge_method: task_arithmetic
base_model: main
models:
  - model: dense_small
    parameters: {weight: 1.0}
  - model: frozen
    parameters: {weight: 1.0}
"""


@pytest.fixture
def yml(tmp_path: Path) -> Path:
    p = tmp_path / "m.yml"
    p.write_text(YAML)
    return p


def tree_of(store: Path, ref: str) -> dict[str, tuple[bytes, ...]]:
    """The merged tensors' block ids by name (the data, not the recorded config text)."""
    with Store.open(store) as s:
        return {t.name: tuple(t.blocks) for t in s.tensors(ref)}


def test_param_with_config_is_applied_and_recorded(ms, fam_store: Path, yml: Path) -> None:
    assert ms("merge", "--config", yml, "-b", "plain").code == 0
    r = ms("merge", "--config", yml, "--param", "lambda=0.5", "-b", "half", "--json")
    assert r.code == 0, r.err
    assert tree_of(fam_store, "half") != tree_of(fam_store, "plain")
    show = ms("show", "half", "--json").json()
    assert show["recipe"]["parameters"]["lambda"] == 0.5
    # and replay re-executes the recorded override bit for bit
    assert ms("replay", "half").code == 0


def test_param_with_config_equals_the_same_yaml(ms, fam_store: Path, tmp_path: Path, yml) -> None:
    edited = tmp_path / "edited.yml"
    edited.write_text(YAML + "parameters: {lambda: 0.5}\n")
    assert ms("merge", "--config", edited, "-b", "a").code == 0
    assert ms("merge", "--config", yml, "--param", "lambda=0.5", "-b", "b").code == 0
    assert tree_of(fam_store, "a") == tree_of(fam_store, "b")


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        (["--method", "ties"], "--method"),
        (["--base", "main"], "--base"),
        (["-w", "0.5"], "-w"),
        (["dense_small"], "MODELS"),
    ],
)
def test_options_the_config_owns_are_refused(ms, yml: Path, extra, word) -> None:
    r = ms("merge", "--config", yml, *extra, "-b", "x")
    assert r.code != 0
    assert word in r.err and "--config" in r.err
    assert ms("log", "x").code != 0  # nothing was made


def test_param_shadowed_by_a_per_model_value_is_refused(ms, yml: Path) -> None:
    r = ms("merge", "--config", yml, "--param", "weight=0.5", "-b", "x")
    assert r.code != 0 and "models[0]" in r.err


def test_dtype_seed_overrides_apply(ms, fam_store: Path, yml: Path) -> None:
    r = ms("merge", "--config", yml, "--dtype", "float32", "--seed", "3", "-b", "f")
    assert r.code == 0, r.err
    show = ms("show", "f", "--json").json()["recipe"]
    assert show["dtype"] == "float32"


def test_api_merge_config_with_params(fam_store: Path, yml: Path) -> None:
    with Store.open(fam_store) as s:
        a = s.merge(config=str(yml), branch="plain")
        b = s.merge(config=str(yml), params={"lambda": 0.5}, branch="half")
        assert s.get_commit(a.commit).tree != s.get_commit(b.commit).tree
    assert tree_of(fam_store, "plain") != tree_of(fam_store, "half")
