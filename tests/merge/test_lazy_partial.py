"""Reading some tensors of a lazy merge never computed computes only those tensors.

checkout --tensor, read_tensor and diff --tensor of a lazy merge commit compute the tensors
they read, journal them under the plan id, and leave the commit lazy; a later full
materialize reuses them, and the bits equal a merge computed whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.merge import engine as engine_mod

EXPERTS = ["dense_small", "frozen", "lowrank_attn"]
KW = dict(method="task_arithmetic", base="main", models=EXPERTS, weights=[0.5, 0.3, 0.2])
CLI_MERGE = ["merge", "--method", "task_arithmetic", "--base", "main", *EXPERTS]
CLI_MERGE += ["-w", "0.5", "-w", "0.3", "-w", "0.2", "--no-write-model-card"]


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    commit_family(store, tiny_family)
    return store


@pytest.fixture
def computed_tensors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the tensors handed to the engine (a tensor cut into pieces once)."""
    names: list[str] = []
    real = engine_mod.Engine.run

    def counting(self, tasks, *a, **k):
        names.extend(dict.fromkeys(t.plan.name for t in tasks))
        return real(self, tasks, *a, **k)

    monkeypatch.setattr(engine_mod.Engine, "run", counting)
    return names


@pytest.fixture
def reference(tiny_family, tmp_path: Path) -> Store:
    """The same merge, computed whole by a plain merge, in a store of its own."""
    other = Store.init(tmp_path / "reference", block_size=4096)
    commit_family(other, tiny_family)
    other.merge(**KW, branch="full", write_card=False)
    yield other
    other.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _big_tensor(store: Store, ref: str) -> str:
    recs = store.tensors(ref)
    return max(recs, key=lambda t: t.end - t.begin).name


STORE_NAMED = ("mergekit_config.yml", "README.md")


def _entries(store: Store, ref: str) -> dict:
    """A merge's tree entries, without the files that name its input commits."""
    return {e.path: e.object for e in store.tree(ref).entries if e.path not in STORE_NAMED}


def test_cli_checkout_tensor_of_a_lazy_merge_computes_only_it(
    family_store: Store, reference: Store, computed_tensors: list[str], cli, tmp_path: Path
) -> None:
    s = str(family_store.path)
    r = cli("--store", s, *CLI_MERGE, "-b", "cand", "--lazy", "--json")
    assert r.code == 0, r.err
    assert computed_tensors == []
    name = _big_tensor(reference, "full")
    r = cli("--store", s, "checkout", "cand", tmp_path / "one", "--tensor", name, "--json")
    assert r.code == 0, r.err
    r = cli("--store", s, "show", "cand", "--json")
    assert r.json()["state"] == "lazy"  # the commit is not computed yet, show computes nothing
    assert computed_tensors == [name]  # that tensor alone
    # the same bits as the tensor checked out of a merge computed whole
    reference.checkout("full", tmp_path / "ref-one", tensors=[name])
    got, want = tmp_path / "one/model.safetensors", tmp_path / "ref-one/model.safetensors"
    assert _sha(got) == _sha(want)
    # a full materialize reuses it and computes the rest; the tree is the whole merge's
    r = cli("--store", s, "materialize", "cand", "--json")
    assert r.code == 0, r.err
    n = len(reference.tensors("full"))
    assert r.json()["tensors_reused"] == 1 and r.json()["tensors_computed"] == n - 1
    assert sorted(computed_tensors) == sorted(t.name for t in reference.tensors("full"))
    # mergekit_config.yml and the card name the input commits, which differ between the two
    # stores (their commits were made at different times); every other file is the same
    assert _entries(family_store, "cand") == _entries(reference, "full")
    family_store.checkout("cand", tmp_path / "all")
    reference.checkout("full", tmp_path / "ref-all")
    for p in (tmp_path / "ref-all").rglob("*"):
        if p.is_file() and p.name not in STORE_NAMED:
            assert _sha(tmp_path / "all" / p.relative_to(tmp_path / "ref-all")) == _sha(p)


def test_read_tensor_and_globs_of_a_lazy_merge(
    family_store: Store, reference: Store, computed_tensors: list[str], tmp_path: Path
) -> None:
    import torch

    family_store.merge(**KW, branch="cand", lazy=True, write_card=False)
    name = _big_tensor(reference, "full")
    got = family_store.read_tensor("cand", name)
    assert computed_tensors == [name]
    assert torch.equal(got, reference.read_tensor("full", name))
    assert family_store.tensor_record("cand", name).blocks == (
        reference.tensor_record("full", name).blocks
    )
    assert computed_tensors == [name]  # read again: reused from the journal
    # a glob computes its matches only, the one already computed is reused
    glob = "*layers.0.*"
    matching = sorted(t.name for t in reference.tensors("full") if "layers.0." in t.name)
    assert 1 < len(matching) < len(reference.tensors("full"))
    family_store.checkout("cand", tmp_path / "g", tensors=[glob])
    reference.checkout("full", tmp_path / "ref-g", tensors=[glob])
    assert _sha(tmp_path / "g/model.safetensors") == _sha(tmp_path / "ref-g/model.safetensors")
    assert sorted(set(computed_tensors)) == sorted({name, *matching})
    assert len(computed_tensors) == len(set(computed_tensors))  # nothing computed twice
    assert family_store.merge_state("cand") == "lazy"


def test_cli_diff_tensor_of_a_lazy_merge_computes_only_it(
    family_store: Store, reference: Store, computed_tensors: list[str], cli
) -> None:
    s = str(family_store.path)
    assert cli("--store", s, *CLI_MERGE, "-b", "cand", "--lazy").code == 0
    name = _big_tensor(reference, "full")
    r = cli("--store", s, "diff", "main", "cand", "--tensor", name, "--json")
    assert r.code == 0, r.err
    assert computed_tensors == [name]
    [t] = r.json()["tensors"]
    want = reference.diff("main", "full", tensors=[name]).tensors[0]
    assert t["name"] == name and t["status"] == want.status
    assert t["blocks_changed"] == want.blocks_changed
    r = cli("--store", s, "diff", "main", "cand", "--json")  # a whole diff computes the rest
    assert r.code == 0, r.err
    assert len(computed_tensors) == len(reference.tensors("full"))
    assert family_store.merge_state("cand") == "materialized"


def test_no_matching_tensor_of_a_lazy_merge_is_one_error_and_computes_nothing(
    family_store: Store, computed_tensors: list[str], cli, tmp_path: Path
) -> None:
    s = str(family_store.path)
    assert cli("--store", s, *CLI_MERGE, "-b", "cand", "--lazy").code == 0
    before = sorted(p.name for p in (family_store.path / "packs").iterdir())
    r = cli("--store", s, "checkout", "cand", tmp_path / "x", "--tensor", "no.such.*")
    assert r.code == 1 and r.err.startswith("error: ") and len(r.err.splitlines()) == 1
    r = cli("--store", s, "checkout", "cand", tmp_path / "x", "--tensor", "no.such.*", "--json")
    assert r.code == 1 and "error" in r.json()
    assert computed_tensors == []
    assert sorted(p.name for p in (family_store.path / "packs").iterdir()) == before
    assert family_store.merge_state("cand") == "lazy"


def test_glob_on_an_evicted_merge_recomputes_only_its_matches(
    family_store: Store, computed_tensors: list[str], tmp_path: Path
) -> None:
    family_store.merge(**KW, branch="m", write_card=False)
    family_store.checkout("m", tmp_path / "before", tensors=["*layers.0.*"])
    family_store.evict("m")
    computed_tensors.clear()
    family_store.checkout("m", tmp_path / "after", tensors=["*layers.0.*"])
    assert 0 < len(computed_tensors) < len(family_store.tensors("m"))
    assert all("layers.0." in n for n in computed_tensors)
    assert _sha(tmp_path / "before/model.safetensors") == _sha(tmp_path / "after/model.safetensors")
