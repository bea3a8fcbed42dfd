"""Resume after a crash: a merge killed half way reuses every journaled tensor when re-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.store import merges

ROOT = Path(__file__).resolve().parents[2]
EXPERTS = ["dense_small", "frozen", "lowrank_attn"]


def _merge(store: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, MERGESTORE_PROGRESS="0", MERGESTORE_JOURNAL_BYTES="1")
    env.pop("MERGESTORE_FAULT", None)
    if fault:
        env["MERGESTORE_FAULT"] = fault
    args = ["merge", "--method", "task_arithmetic", "--base", "main", *EXPERTS]
    args += ["-w", "0.5", "-w", "0.3", *extra, "--json"]
    return subprocess.run(
        [sys.executable, "-m", "mergestore.cli.main", "--store", str(store), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    commit_family(store, tiny_family)
    return store


def test_killed_merge_resumes_from_its_journal(family_store: Store) -> None:
    path = family_store.path
    p = _merge(path, "-w", "0.2", "-b", "m", fault="journal-flushed@9")
    assert p.returncode == 137, p.stderr  # killed after 9 flushed chunks (1 tensor each)
    assert "m" not in family_store.branches()  # nothing half-written behind a ref
    [(plan_id, j)] = merges.journals(family_store.repo).items()
    assert len(j["tensors"]) == 9
    # gc within the grace period keeps the journal's blocks
    family_store.gc()
    p = _merge(path, "-w", "0.2", "-b", "m")
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)
    assert run["tensors_reused"] == 9
    assert run["tensors_computed"] == run["tensors"] - 9  # what was left, no more
    assert run["plan"] == plan_id.hex()
    assert merges.journals(family_store.repo) == {}  # published with the commit
    assert family_store.replay("m")["identical"]
    # the same merge computed in one go gives the same tree
    full = _merge(path, "-w", "0.2", "-b", "m", "--force")
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout)["identical"] is True


def test_a_journal_of_another_plan_is_removed(family_store: Store) -> None:
    path = family_store.path
    p = _merge(path, "-w", "0.2", "-b", "m", fault="journal-flushed@5")
    assert p.returncode == 137
    [old_plan] = merges.journals(family_store.repo)
    p = _merge(path, "-w", "0.1", "-b", "m")  # another plan for the same branch
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)
    assert run["tensors_reused"] == 0 and run["plan"] != old_plan.hex()
    assert merges.journals(family_store.repo) == {}


def test_gc_after_the_grace_period_drops_a_journal_and_the_rerun_recomputes(
    family_store: Store,
) -> None:
    path = family_store.path
    p = _merge(path, "-w", "0.2", "-b", "m", fault="journal-flushed@6")
    assert p.returncode == 137
    family_store.gc(grace=0)
    p = _merge(path, "-w", "0.2", "-b", "m")
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)
    assert run["tensors_reused"] == 0 and run["tensors_computed"] == run["tensors"]
    assert family_store.replay("m")["identical"]
