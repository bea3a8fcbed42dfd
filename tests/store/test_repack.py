"""`mergestore repack`: re-encoding shrinks a store made without deltas, keeps every checkout
byte-identical, never builds delta chains, and is idempotent."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from fixtures.family import PRESETS, Family, make_family
from mergestore.api import Store
from mergestore.store.repack import repack


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    spec = dataclasses.replace(
        PRESETS["tiny"], experts=("dense_small", "dense_large", "frozen", "lowrank_attn")
    )
    return make_family(tmp_path_factory.mktemp("fam4"), spec)


def index_entries(store: Store) -> dict[bytes, bytes]:
    return dict(store.repo.iter_raw_blocks())


def assert_no_chains(store: Store) -> int:
    """Every delta's reference exists and is not a delta; returns the number of deltas."""
    locs = dict(store.repo.iter_blocks())
    deltas = 0
    for bid, loc in locs.items():
        if loc.ref is not None:
            deltas += 1
            assert loc.ref != bid
            assert loc.ref in locs, "delta reference missing"
            assert locs[loc.ref].ref is None, "a delta's reference is itself a delta"
    return deltas


def commit_family(store_path: Path, fam: Family, cli) -> None:
    st = ["--store", store_path]
    assert cli(*st, "commit", fam.base, "-m", "base", "-b", "main").code == 0
    for name, path in fam.experts.items():
        r = cli(*st, "commit", path, "-m", name, "-b", name, "--base", "main")
        assert r.code == 0, r.err


def check_checkouts(store_path: Path, fam: Family, cli, out: Path) -> None:
    st = ["--store", store_path]
    for branch, src in [("main", fam.base), *fam.experts.items()]:
        target = out / branch
        r = cli(*st, "checkout", branch, target)
        assert r.code == 0, r.err
        assert digest(target) == digest(src), branch


def test_repack_shrinks_a_store_without_deltas(family: Family, cli, tmp_path: Path) -> None:
    s = tmp_path / "st"
    assert cli("init", s, "--block-size", "4096", "--no-delta").code == 0
    commit_family(s, family, cli)
    st = ["--store", s]
    with Store.open(s) as store:
        assert assert_no_chains(store) == 0
        before = index_entries(store)
    packs_before = sorted(p.name for p in (s / "packs").iterdir())

    # The store says no deltas: a plain repack finds nothing worth changing.
    r = cli(*st, "repack", "--json")
    assert r.code == 0, r.err
    assert r.json()["deltas_after"] == 0 and r.json()["blocks_reencoded"] == 0

    # A dry run with deltas reports savings and changes nothing.
    r = cli(*st, "repack", "--delta", "--dry-run", "--json")
    assert r.code == 0, r.err
    dry = r.json()
    assert dry["dry_run"] and dry["blocks_reencoded"] > 0
    assert dry["stored_bytes_after"] < dry["stored_bytes_before"]
    with Store.open(s) as store:
        assert index_entries(store) == before
    assert sorted(p.name for p in (s / "packs").iterdir()) == packs_before

    r = cli(*st, "repack", "--delta", "--json")
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["blocks_examined"] == len(before)
    assert rep["blocks_reencoded"] == dry["blocks_reencoded"]
    assert rep["stored_bytes_after"] == dry["stored_bytes_after"]
    assert rep["deltas_before"] == 0 and rep["deltas_after"] > 0
    # The dense fine-tunes at least halve as XOR deltas against the base.
    assert rep["stored_bytes_after"] < 0.8 * rep["stored_bytes_before"]
    with Store.open(s) as store:
        after = index_entries(store)
        assert assert_no_chains(store) == rep["deltas_after"]
        stored = sum(loc.length for _b, loc in store.repo.iter_blocks())
        assert stored == rep["stored_bytes_after"]
    assert after.keys() == before.keys()
    # The old entries stay as dead bytes until gc; fresh packs hold the new ones.
    assert rep["packs_created"] and rep["dead_bytes"] > 0

    check_checkouts(s, family, cli, tmp_path / "co1")
    r = cli(*st, "fsck", "--full", "--json")
    assert r.code == 0 and r.json()["ok"], r.out

    # Idempotent: a second run changes nothing.
    r = cli(*st, "repack", "--delta", "--json")
    assert r.code == 0, r.err
    again = r.json()
    assert again["blocks_reencoded"] == 0 and again["bytes_written"] == 0
    assert again["stored_bytes_after"] == again["stored_bytes_before"]
    with Store.open(s) as store:
        assert index_entries(store) == after

    # gc reclaims the old entries; everything still reads back.
    packs_size = sum(p.stat().st_size for p in (s / "packs").iterdir())
    r = cli(*st, "gc", "--grace", "0", "--json")
    assert r.code == 0, r.err
    assert sum(p.stat().st_size for p in (s / "packs").iterdir()) < packs_size
    check_checkouts(s, family, cli, tmp_path / "co2")
    assert cli(*st, "fsck", "--full").code == 0


def test_repack_never_chains_deltas(family: Family, cli, tmp_path: Path) -> None:
    """A fine-tune of a fine-tune, and a stored delta that another commit wants as its reference.

    The expert `frozen` is committed twice: as a delta against the base, and as a root commit of
    its own (same blocks). Other experts then name that root as their base, so repack is offered
    the base's delta blocks as references: they must end up plain or go unused.
    """
    s = tmp_path / "st"
    st = ["--store", s]
    assert cli("init", s, "--block-size", "4096").code == 0
    assert cli(*st, "commit", family.base, "-m", "base", "-b", "main").code == 0
    ex = family.experts
    assert cli(*st, "commit", ex["frozen"], "-b", "frozen", "--base", "main").code == 0
    assert cli(*st, "commit", ex["frozen"], "-b", "root2").code == 0  # no base: a root
    for name in ("dense_small", "lowrank_attn"):
        assert cli(*st, "commit", ex[name], "-b", name, "--base", "root2").code == 0
    assert (
        cli(*st, "commit", ex["dense_large"], "-b", "dense_large", "--base", "dense_small").code
        == 0
    )
    with Store.open(s) as store:
        assert_no_chains(store)

    r = cli(*st, "repack", "--json")
    assert r.code == 0, r.err
    with Store.open(s) as store:
        assert assert_no_chains(store) == r.json()["deltas_after"]
    r = cli(*st, "fsck", "--full", "--json")
    assert r.code == 0 and r.json()["ok"], r.out
    for branch, src in [
        ("main", family.base),
        ("frozen", ex["frozen"]),
        ("root2", ex["frozen"]),
        ("dense_small", ex["dense_small"]),
        ("lowrank_attn", ex["lowrank_attn"]),
        ("dense_large", ex["dense_large"]),
    ]:
        target = tmp_path / "co" / branch
        assert cli(*st, "checkout", branch, target).code == 0
        assert digest(target) == digest(src), branch
    r = cli(*st, "repack", "--json")
    assert r.code == 0 and r.json()["blocks_reencoded"] == 0


def test_repack_api_on_empty_store(tmp_path: Path) -> None:
    with Store.init(tmp_path / "empty", block_size=4096) as store:
        rep = repack(store.repo)
        assert rep.blocks_examined == 0 and rep.blocks_reencoded == 0 and not rep.packs_created


@pytest.mark.parametrize("point", ["repack-after-append@3", "repack-inside-index"])
def test_repack_killed_midway_changes_nothing(family: Family, cli, tmp_path: Path, point) -> None:
    """Killed before its index transaction commits, repack leaves the store as it was."""
    import os
    import subprocess
    import sys

    s = tmp_path / "st"
    assert cli("init", s, "--block-size", "4096", "--no-delta").code == 0
    commit_family(s, family, cli)
    with Store.open(s) as store:
        before = index_entries(store)
    env = dict(os.environ, MERGESTORE_FAULT=point, MERGESTORE_PROGRESS="0")
    r = subprocess.run(
        [sys.executable, "-m", "mergestore.cli.main", "--store", s, "repack", "--delta"],
        env=env,
        capture_output=True,
    )
    assert r.returncode == 137, r.stderr
    with Store.open(s) as store:
        assert index_entries(store) == before
    assert cli("--store", s, "fsck", "--full").code == 0
    # gc drops the orphaned new packs; a fresh repack then completes.
    assert cli("--store", s, "gc", "--grace", "0").code == 0
    r = cli("--store", s, "repack", "--delta", "--json")
    assert r.code == 0 and r.json()["deltas_after"] > 0
    check_checkouts(s, family, cli, tmp_path / "co")


def test_merge_reads_fewer_expert_bytes_after_repack(family: Family, cli, tmp_path: Path) -> None:
    """The same full-budget merge gives the same tree and reads less once experts are deltas."""
    s = tmp_path / "st"
    st = ["--store", s]
    assert cli("init", s, "--block-size", "4096", "--no-delta").code == 0
    commit_family(s, family, cli)
    experts = list(family.experts)
    merge = ["merge", "--no-write-model-card", "--method", "task_arithmetic", "--base", "main"]
    merge += experts
    merge += [a for _ in experts for a in ("-w", "0.25")]

    r = cli(*st, *merge, "-b", "m1", "--json")
    assert r.code == 0, r.err
    before = r.json()
    assert cli(*st, "repack", "--delta").code == 0
    r = cli(*st, *merge, "-b", "m2", "--json")
    assert r.code == 0, r.err
    after = r.json()

    assert after["expert_bytes_read"] < 0.7 * before["expert_bytes_read"]
    with Store.open(s) as store:
        trees = [store.repo.get_commit(bytes.fromhex(m["commit"])).tree for m in (before, after)]
    assert trees[0] == trees[1]
