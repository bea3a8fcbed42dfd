"""git habits: switch, status, log --oneline, diff --exit-code, init on an existing store."""

from __future__ import annotations

import fcntl
import os


def test_init_on_existing_store_is_a_noop(habit_store, cli) -> None:
    before = sorted(p.name for p in (habit_store / "packs").iterdir())
    branches = cli("--store", habit_store, "branch", "--json").out
    r = cli("--store", habit_store, "init")
    assert r.code == 0
    assert "already a mergestore" in r.out
    assert sorted(p.name for p in (habit_store / "packs").iterdir()) == before
    assert cli("--store", habit_store, "branch", "--json").out == branches
    assert cli("--store", habit_store, "init", "--json").json()["already"] is True


def test_switch_moves_head(habit_store, cli) -> None:
    s = habit_store
    r = cli("--store", s, "switch", "math")
    assert r.code == 0 and "Switched to branch 'math'" in r.out
    st = cli("--store", s, "status", "--json").json()
    assert st["branch"] == "math"
    assert st["head"] == cli("--store", s, "show", "math", "--json").json()["id"]
    r = cli("--store", s, "switch", "-c", "feature", "main")
    assert r.code == 0
    st = cli("--store", s, "status", "--json").json()
    assert st["branch"] == "feature"
    assert st["head"] == cli("--store", s, "show", "main", "--json").json()["id"]
    r = cli("--store", s, "switch", "nope")
    assert r.code != 0 and r.err.count("\n") == 1 and "no branch 'nope'" in r.err
    assert cli("--store", s, "status", "--json").json()["branch"] == "feature"
    assert cli("--store", s, "switch", "-c", "main").code != 0  # exists


def test_status_text_and_running_operation(habit_store, cli) -> None:
    s = habit_store
    r = cli("--store", s, "status")
    assert r.code == 0
    assert r.out.splitlines()[0].startswith("On branch main, HEAD ")
    assert "on disk, 3 branches, 0 tags" in r.out
    assert "nothing in progress" in r.out
    st = cli("--store", s, "status", "--json").json()
    assert st["store_bytes"] > 0 and st["in_progress"] == [] and st["remotes"] == []
    fd = os.open(s / "locks" / "gc.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what a running commit or merge holds
        st = cli("--store", s, "status", "--json").json()
        assert st["in_progress"] == ["a commit or merge is writing to the store"]
    finally:
        os.close(fd)


def test_log_oneline(habit_store, cli) -> None:
    r = cli("--store", habit_store, "log", "--oneline", "--all")
    assert r.code == 0
    lines = r.out.splitlines()
    assert len(lines) == 3
    ids = {
        c["id"][:10]
        for c in cli("--store", habit_store, "log", "--all", "--json").json()["commits"]
    }
    assert {line.split()[0] for line in lines} == ids
    assert any("(HEAD -> main)" in line for line in lines)


def test_diff_exit_code(habit_store, cli) -> None:
    s = habit_store
    assert cli("--store", s, "diff", "main", "main", "--exit-code").code == 0
    assert cli("--store", s, "diff", "main", "math", "--exit-code").code == 1
    assert cli("--store", s, "diff", "main", "math").code == 0  # without the flag: 0
    r = cli("--store", s, "diff", "main", "math", "--exit-code", "--json")
    assert r.code == 1 and r.json()["differs"] is True
