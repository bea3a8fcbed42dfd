"""`ls --tensors` of a lazy merge never computed lists its tensors from the plan.

Names, dtypes, shapes, bytes and block counts come out as the same merge computed whole lists
them, in the same order; no tensor is computed and the commit stays lazy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.merge import engine as engine_mod

EXPERTS = ["dense_small", "frozen", "lowrank_attn"]
MERGE = ["merge", "--method", "task_arithmetic", "--base", "main", *EXPERTS]
MERGE += ["-w", "0.5", "-w", "0.3", "-w", "0.2", "--no-write-model-card"]

CONFIGS = {
    "plain": [],
    "fp32-compute-bf16-out": ["--dtype", "float32", "--out-dtype", "bfloat16"],
    "fp32-out": ["--out-dtype", "float32"],
    "fresh-shards": ["--out-shard-size", "40K"],
    "budget": ["--budget", "25%"],
}


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    commit_family(store, tiny_family)
    return store


@pytest.fixture
def computed_tensors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the tensors handed to the engine."""
    names: list[str] = []
    real = engine_mod.Engine.run

    def counting(self, tasks, *a, **k):
        names.extend(t.plan.name for t in tasks)
        return real(self, tasks, *a, **k)

    monkeypatch.setattr(engine_mod.Engine, "run", counting)
    return names


def _store_files(store: Store) -> dict[str, bytes]:
    root = Path(store.path)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_ls_tensors_of_a_lazy_merge_computes_nothing(
    family_store: Store, computed_tensors: list[str], cli, config: str
) -> None:
    s = str(family_store.path)
    args = [*MERGE, *CONFIGS[config]]
    assert cli("--store", s, *args, "-b", "lazy", "--lazy").code == 0
    assert computed_tensors == []
    before = _store_files(family_store)

    r = cli("--store", s, "ls", "lazy", "--tensors", "--json")
    assert r.code == 0, r.err
    lazy = json.loads(r.out)
    text = cli("--store", s, "ls", "lazy", "--tensors")
    assert text.code == 0, text.err

    assert computed_tensors == []
    assert family_store.merge_state("lazy") == "lazy"
    assert _store_files(family_store) == before  # nothing written, not even a journal
    assert lazy["computed"] is False
    assert text.out.splitlines()[-1].endswith("(a lazy merge, not computed: from its plan)")

    # the same merge computed whole lists the same tensors, in the same order
    assert cli("--store", s, *args, "-b", "whole").code == 0
    whole = json.loads(cli("--store", s, "ls", "whole", "--tensors", "--json").out)
    assert whole["computed"] is True
    assert lazy["tensors"] == whole["tensors"]
    assert lazy["blocks"] == whole["blocks"] > 0
    done = cli("--store", s, "ls", "whole", "--tensors").out.splitlines()
    assert text.out.splitlines()[:-1] == done[:-1]
    assert done[-1] == text.out.splitlines()[-1].split("  (")[0]


def test_ls_tensors_of_an_unknown_ref_is_one_line(family_store: Store, cli) -> None:
    r = cli("--store", str(family_store.path), "ls", "nope", "--tensors")
    assert r.code == 1
    assert r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1
