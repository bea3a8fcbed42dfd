"""Merges at search scale: memo by plan, lazy and evicted merge commits, gc and fsck with them."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.errors import MergeError
from mergestore.merge import engine as engine_mod
from mergestore.store import merges

EXPERTS = ["dense_small", "frozen", "lowrank_attn"]
KW = dict(method="task_arithmetic", base="main", models=EXPERTS, weights=[0.5, 0.3, 0.2])


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    commit_family(store, tiny_family)
    return store


@pytest.fixture
def engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Tensors handed to the engine, call by call."""
    calls: list[int] = []
    real = engine_mod.Engine.run

    def counting(self, tasks, *a, **k):
        calls.append(len({t.plan.name for t in tasks}))  # a tensor cut into pieces once
        return real(self, tasks, *a, **k)

    monkeypatch.setattr(engine_mod.Engine, "run", counting)
    return calls


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_memo_hit_computes_nothing_and_moves_the_branch(
    family_store: Store, engine_calls: list[int]
) -> None:
    first = family_store.merge(**KW, branch="m1")
    n = sum(engine_calls)
    assert n > 0 and not first.run.get("memo")
    again = family_store.merge(**KW, branch="m2")
    assert sum(engine_calls) == n  # nothing computed
    assert again.run["memo"] and again.commit == first.commit and again.plan == first.plan
    assert family_store.resolve("m2") == first.commit
    # another parameter is another plan
    other = family_store.merge(**{**KW, "weights": [0.5, 0.3, 0.1]}, branch="m3")
    assert other.plan != first.plan and not other.run.get("memo")


def test_force_recomputes_and_checks_the_blocks(
    family_store: Store, engine_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = family_store.merge(**KW, branch="m1")
    n = sum(engine_calls)
    forced = family_store.merge(**KW, branch="m1", force=True)
    assert sum(engine_calls) == 2 * n
    assert forced.commit == first.commit and forced.run["identical"]
    # a kernel that no longer gives the same bits is refused loudly, and nothing moves
    from mergestore.merge import pieces

    real = pieces.run_tasks

    def skewed(engine, tasks, *a, **k):
        outs, stats, taken = real(engine, tasks, *a, **k)
        bad = [dataclasses.replace(o, blocks=o.blocks[::-1]) for o in outs]
        return bad, stats, taken

    monkeypatch.setattr(pieces, "run_tasks", skewed)
    with pytest.raises(MergeError, match="other blocks"):
        family_store.merge(**KW, branch="other", force=True)
    assert "other" not in family_store.branches()


def test_lazy_commit_then_reads_compute_it(
    family_store: Store, engine_calls: list[int], tmp_path: Path
) -> None:
    lazy = family_store.merge(**KW, branch="cand", lazy=True)
    assert engine_calls == [] and lazy.run["lazy"]
    assert family_store.merge_state("cand") == "lazy"
    c = family_store.get_commit("cand")
    assert c.meta[merges.LAZY_META] == "1" and c.plan == lazy.plan
    # the same plan, merged for real: the memo answers with the lazy commit, computed now
    real = family_store.merge(**KW, branch="real")
    assert real.commit == lazy.commit and real.run["memo"]
    assert family_store.merge_state("cand") == "materialized"
    assert sum(engine_calls) == len(family_store.tensors("cand"))
    out = tmp_path / "lazy_out"
    family_store.checkout("cand", out)
    # a plain merge of the same plan in a fresh store gives the same bytes
    assert family_store.replay("cand")["identical"]


def test_lazy_commit_checkout_equals_a_computed_merge(
    tiny_family, family_store: Store, tmp_path: Path
) -> None:
    # no model card, and mergekit_config.yml set aside: they name the input commits, which
    # differ between the two stores
    computed = family_store.merge(**KW, branch="computed", write_card=False)
    family_store.evict("computed")
    other = Store.init(tmp_path / "other", block_size=4096)
    commit_family(other, tiny_family)
    other.merge(**KW, branch="cand", lazy=True, write_card=False)
    assert other.merge_state("cand") == "lazy"
    other.checkout("cand", tmp_path / "a")  # the read computes it
    assert other.merge_state("cand") == "materialized"
    family_store.checkout("computed", tmp_path / "b")  # evicted: recomputed and verified
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a.pop("mergekit_config.yml") != b.pop("mergekit_config.yml")
    assert a == b

    def entries(tree) -> dict[str, bytes]:
        return {e.path: e.object for e in tree.entries if e.path != "mergekit_config.yml"}

    assert entries(other.tree("cand")) == entries(family_store.tree(computed.commit))
    other.close()


def test_evict_then_reads_rebuild_tensor_by_tensor(
    family_store: Store, engine_calls: list[int], tmp_path: Path
) -> None:
    res = family_store.merge(**KW, branch="m")
    family_store.checkout("m", tmp_path / "before")
    names = [t.name for t in family_store.tensors("m")]
    before = family_store.commit_sizes("m")
    [ev] = family_store.evict("m")
    assert ev["dropped_now"] > 0 and ev["stored_bytes"] > 0
    assert family_store.merge_state("m") == "evicted"
    c = family_store.get_commit("m")
    assert c.plan == res.plan  # commit, plan and tree stay
    assert family_store.commit_sizes("m")["stored_bytes"] < before["stored_bytes"]
    # the base and experts lost nothing
    for ref in ["main", *EXPERTS]:
        family_store.checkout(ref, tmp_path / f"x-{ref}")
    engine_calls.clear()
    t = family_store.read_tensor("m", names[0])  # one tensor: computed alone
    assert sum(engine_calls) == 1 and t.numel() > 0
    assert family_store.merge_state("m") == "evicted"
    assert family_store.replay("m")["identical"]  # replay of an evicted commit
    engine_calls.clear()
    family_store.checkout("m", tmp_path / "after")
    # the rest, once (tensors whose blocks are all an input's were never dropped)
    assert 0 < sum(engine_calls) <= len(names) - 1
    assert family_store.merge_state("m") == "materialized"
    assert _digest(tmp_path / "before") == _digest(tmp_path / "after")


def test_evicted_and_lazy_merges_as_inputs_and_diff(family_store: Store) -> None:
    family_store.merge(**KW, branch="a")
    family_store.evict("a")
    family_store.merge(**{**KW, "weights": [0.2, 0.2, 0.2]}, branch="b", lazy=True)
    nested = family_store.merge(method="linear", models=["a", "b"], weights=[0.5, 0.5], branch="n")
    assert not nested.run.get("memo") and family_store.merge_state("n") == "materialized"
    assert family_store.merge_state("b") == "materialized"
    family_store.evict("a", "b")
    d = family_store.diff("a", "b")
    assert d is not None


def test_gc_keeps_what_lazy_and_evicted_commits_need(family_store: Store, tmp_path: Path) -> None:
    from mergestore.store.gc import collect_garbage

    family_store.merge(**KW, branch="keep")
    family_store.checkout("keep", tmp_path / "want")
    family_store.evict("keep")
    family_store.merge(**{**KW, "weights": [0.1, 0.1, 0.1]}, branch="lazy", lazy=True)
    # only the merge commits keep the inputs alive
    for name in ["dense_small", "frozen", "lowrank_attn"]:
        family_store.delete_branch(name)
    from mergestore.store.repo import RefUpdate

    main = family_store.resolve("main")
    family_store.repo.update_refs([RefUpdate("refs/heads/main", None, "test")])
    rep = collect_garbage(family_store.repo, grace=0, repack_threshold=0.001)
    assert rep.bytes_reclaimed > 0  # the evicted blocks' pack space, at least
    family_store.checkout("keep", tmp_path / "got")
    assert _digest(tmp_path / "want") == _digest(tmp_path / "got")
    family_store.materialize("lazy")
    assert family_store.merge_state("lazy") == "materialized"
    assert family_store.repo.get_object_bytes(main) is not None
    from mergestore.fsck import fsck

    assert fsck(family_store.repo, full=True).ok


def test_fsck_is_clean_with_evicted_and_lazy_commits(family_store: Store) -> None:
    from mergestore.fsck import fsck

    family_store.merge(**KW, branch="e")
    family_store.evict("e")
    family_store.merge(**{**KW, "weights": [0.3, 0.3, 0.3]}, branch="l", lazy=True)
    rep = fsck(family_store.repo, full=True)
    assert rep.ok, rep.to_json() if hasattr(rep, "to_json") else rep


def test_evict_refuses_plain_commits(family_store: Store) -> None:
    with pytest.raises(MergeError, match="not a merge commit"):
        family_store.evict("main")


def test_cli_memo_lazy_materialize_evict_show_log_du(family_store: Store, cli) -> None:
    s = str(family_store.path)
    args = ["--store", s, "merge", "--method", "task_arithmetic", "--base", "main"]
    args += [*EXPERTS, "-w", "0.5", "-w", "0.3", "-w", "0.2"]
    r = cli(*args, "-b", "m1", "--json")
    assert r.code == 0, r.err
    first = r.json()
    assert first["memo"] is False and first["tensors_computed"] > 0
    r = cli(*args, "-b", "m2")
    assert r.code == 0, r.err
    assert f"already merged as {first['commit']} (plan {first['plan']})" in r.err
    r = cli(*args, "-b", "m2", "--json")
    assert r.json()["memo"] is True and r.json()["commit"] == first["commit"]
    r = cli(*args, "-b", "m1", "--force", "--json")
    assert r.code == 0 and r.json()["identical"] is True
    args[-1] = "0.1"
    r = cli(*args, "-b", "cand", "--lazy", "--json")
    assert r.code == 0, r.err
    assert r.json()["lazy"] is True and r.json()["tensors_computed"] == 0
    r = cli("--store", s, "show", "cand")
    assert "lazy" in r.out
    r = cli("--store", s, "log", "cand")
    assert "[lazy]" in r.out
    r = cli("--store", s, "materialize", "cand", "--json")
    assert r.code == 0 and r.json()["tensors_computed"] > 0
    r = cli("--store", s, "evict", "cand", "m1")
    assert r.code == 0, r.err
    r = cli("--store", s, "show", "m1", "--json")
    assert r.json()["state"] == "evicted"
    r = cli("--store", s, "log", "m1")
    assert "[evicted]" in r.out
    r = cli("--store", s, "du", "--json")
    m = r.json()["merges"]
    assert m["evicted"] == 2 and m["evicted_stored_bytes"] > 0
    r = cli("--store", s, "du")
    assert "eviction saved" in r.out
    r = cli("--store", s, "evict", "main")
    assert r.code != 0 and "not a merge commit" in r.err


def test_merge_outputs_are_delta_coded_against_the_base_where_smaller(family_store: Store) -> None:
    """A task_arithmetic merge with small weights stays close to the base: its blocks are
    stored as XOR deltas against the base block at the same position; du reports the ratio."""
    family_store.merge(**{**KW, "weights": [0.02, 0.02, 0.02]}, branch="near")
    base = {t.name: t for t in family_store.tensors("main")}
    deltas = plain = 0
    for t in family_store.tensors("near"):
        for i, b in enumerate(t.blocks):
            loc = family_store.repo.block_location(b)
            if b in base[t.name].blocks:
                continue  # the base's own block, stored once
            if loc.ref is not None:
                assert loc.ref == base[t.name].blocks[i]
                deltas += 1
            else:
                plain += 1
    assert deltas > 0
    m = family_store.disk_usage()["merges"]
    assert m["materialized"] == 1 and 0 < m["stored_raw_ratio"] < 1


def test_merge_out_on_a_memo_hit_writes_the_folder(family_store: Store, tmp_path: Path) -> None:
    family_store.merge(**KW, branch="m", lazy=True)
    res = family_store.merge(**KW, branch="m2", out=tmp_path / "a")  # memo hit on a lazy one
    assert res.run["memo"] and res.out is not None
    family_store.checkout("m2", tmp_path / "b")
    tensors = [p.name for p in sorted((tmp_path / "a").glob("*.safetensors"))]
    assert tensors and all(
        (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in tensors
    )
    with pytest.raises(MergeError, match="--lazy"):
        family_store.merge(**KW, branch="m3", lazy=True, out=tmp_path / "c")


def test_a_merge_without_base_is_delta_coded_against_the_inputs_base(
    tiny_family, family_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """linear has no base model: its output blocks are delta-coded against the block the
    first input's block at that position is delta-coded against (the experts' base), the same
    tree as without, in fewer stored bytes."""
    lin = dict(method="linear", models=EXPERTS, weights=[0.5, 0.3, 0.2])
    family_store.merge(**lin, branch="near", out=tmp_path / "a")
    experts = [{t.name: t for t in family_store.tensors(m)} for m in EXPERTS]
    deltas = 0
    for t in family_store.tensors("near"):
        for i, b in enumerate(t.blocks):
            loc = family_store.repo.block_location(b)
            if loc.ref is None:
                continue
            deltas += 1
            firsts = [family_store.repo.block_location(e[t.name].blocks[i]).ref for e in experts]
            assert loc.ref == next(r for r in firsts if r is not None)
    assert deltas > 0
    near = family_store.disk_usage()["merges"]["stored_bytes"]

    monkeypatch.setattr(engine_mod, "_output_references", lambda *a: (None, {}))
    other = Store.init(tmp_path / "other", block_size=4096)
    commit_family(other, tiny_family)
    other.merge(**lin, branch="near", out=tmp_path / "b")
    blocks = [t.blocks for t in family_store.tensors("near")]
    assert [t.blocks for t in other.tensors("near")] == blocks
    assert other.disk_usage()["merges"]["stored_bytes"] > near
    tensors = [p.name for p in sorted((tmp_path / "a").glob("*.safetensors"))]
    assert tensors and all(
        (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in tensors
    )
