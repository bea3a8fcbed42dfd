"""Issue 15 item 3: a merge never silently moves the base's or an input's branch."""

from __future__ import annotations

from pathlib import Path

import pytest

MERGE = ["merge", "--method", "task_arithmetic", "--base", "main", "dense_small", "frozen"]
W = ["-w", "0.5", "-w", "0.5"]


def tip(ms, ref: str) -> str:
    r = ms("log", ref, "-n", "1", "--json")
    assert r.code == 0, r.err
    return r.json()["commits"][0]["id"]


def test_default_is_a_new_branch_named_from_the_method(ms) -> None:
    before = {b: tip(ms, b) for b in ("main", "dense_small", "frozen")}
    r = ms(*MERGE, *W)
    assert r.code == 0, r.err
    cid = r.out.split()[0]
    assert f"[merge/task_arithmetic-1 (new branch) {cid[:12]}]" in r.err
    assert tip(ms, "merge/task_arithmetic-1") == cid
    assert {b: tip(ms, b) for b in before} == before  # HEAD's branch (main) did not move
    r = ms(*MERGE, *W, "--json")
    assert r.json()["branch"] == "merge/task_arithmetic-2"
    assert r.json()["previous"] is None


@pytest.mark.parametrize("target", ["main", "dense_small", "frozen"])
def test_input_or_base_branch_is_refused_without_force(ms, target: str) -> None:
    was = tip(ms, target)
    r = ms(*MERGE, *W, "-b", target)
    assert r.code == 1
    assert r.err.startswith("error: ") and "--force" in r.err and target in r.err
    assert tip(ms, target) == was
    r = ms(*MERGE, *W, "-b", target, "--force")
    assert r.code == 0, r.err
    assert f"[{target} {was[:12]} -> " in r.err
    assert tip(ms, target) != was


def test_input_given_by_id_still_protects_its_branch(ms) -> None:
    e1 = tip(ms, "dense_small")
    r = ms(
        "merge",
        "--method",
        "task_arithmetic",
        "--base",
        "main",
        e1[:10],
        "frozen",
        *W,
        "-b",
        "dense_small",
    )
    assert r.code == 1 and "dense_small" in r.err


def test_existing_other_branch_moves_and_says_so(ms) -> None:
    first = ms(*MERGE, *W, "-b", "out").out.split()[0]
    r = ms(*MERGE, "-w", "1", "-w", "1", "-b", "out")
    assert r.code == 0, r.err
    second = r.out.split()[0]
    assert f"[out {first[:12]} -> {second[:12]}]" in r.err


def test_commit_prints_the_branch_move(ms, tiny_family, tmp_path: Path) -> None:
    was = tip(ms, "frozen")
    r = ms("commit", tiny_family.base, "-m", "again\nmore", "-b", "frozen")
    assert r.code == 0
    assert f"[frozen {was[:12]} -> {r.out.strip()[:12]}] again" in r.err
    r = ms("commit", tiny_family.base, "-m", "new", "-b", "fresh", "--json")
    assert r.json()["branch"] == "fresh" and r.json()["previous"] is None
    assert ms("branch", "fresh", "--json", "-f").json()["branch"] == "fresh"
