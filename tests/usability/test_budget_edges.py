"""Issue 15 items 14 and 15: the budget's edge cases, the bound's notes, and what explain and
plan say about the base, the inputs and the realized error."""

from __future__ import annotations

import json

import pytest

from mergestore.api import Store

PLAN = ["--method", "task_arithmetic", "--base", "main", "dense_small", "frozen"]
PLAN += ["-w", "0.5", "-w", "0.5"]
F32 = ["--dtype", "float32", "--out-dtype", "float32"]


def refs(store_path) -> dict:
    with Store.open(store_path) as s:
        return s.repo.raw_refs()


@pytest.mark.parametrize("budget", ["0", "0%", "25"])
@pytest.mark.parametrize("command", ["merge", "plan"])
def test_budgets_that_read_nothing_are_refused(ms, fam_store, command, budget) -> None:
    before = refs(fam_store)
    r = ms(command, *PLAN, "--budget", budget)
    assert r.code == 1 and r.out == ""
    assert r.err.startswith(f"error: a budget of {budget}") and r.err.count("\n") == 1
    assert "the smallest is" in r.err
    j = ms(command, *PLAN, "--budget", budget, "--json")
    assert j.code == 1 and json.loads(j.out)["error"] == r.err[len("error: ") :].strip()
    assert refs(fam_store) == before


def test_a_budget_above_the_full_read_is_capped_with_a_note(ms) -> None:
    p = ms("plan", *PLAN, "--budget", "5GB")
    assert p.code == 0, p.err
    assert "note: budget 5GB (5000000000 bytes) is more than the full read" in p.out
    pj = ms("plan", *PLAN, "--budget", "5GB", "--json").json()
    assert pj["budget_bytes"] == pj["expert_bytes_full"]
    assert any("capped at the full read" in n for n in pj["notes"])
    assert pj["plan"] == ms("plan", *PLAN, "--budget", "100%", "--json").json()["plan"]
    m = ms("merge", *PLAN, "--budget", "5GB", "-b", "capped")
    assert m.code == 0 and "note: budget 5GB" in m.err and "capped at the full read" in m.err
    mj = ms("merge", *PLAN, "--budget", "5GB", "-b", "capped2", "--json").json()
    assert mj["budget_bytes"] == mj["expert_bytes_full"] == mj["expert_bytes_read"]
    assert any("capped" in n for n in mj["notes"])


def test_an_uninformative_bf16_bound_says_why_and_what_to_do(ms) -> None:
    p = ms("plan", *PLAN, "--budget", "30%")
    assert p.code == 0, p.err
    assert "note: the error bound is" in p.out and "says nothing" in p.out
    assert "--dtype float32" in p.out
    pj = ms("plan", *PLAN, "--budget", "30%", "--json").json()
    assert pj["error_bound_rel"] > 1
    assert len(pj["notes"]) == 1 and "--dtype float32" in pj["notes"][0]
    m = ms("merge", *PLAN, "--budget", "30%", "-b", "b30")
    assert m.code == 0 and "--dtype float32" in m.err
    assert "--dtype float32" in ms("explain", "b30").out  # the run record keeps the note
    # in float32 the bound is informative, and no note is printed
    f = ms("plan", *PLAN, *F32, "--budget", "30%", "--json").json()
    assert f["error_bound_rel"] < 1 and f["notes"] == []
    assert "note:" not in ms("plan", *PLAN, *F32, "--budget", "30%").out


def test_plan_lists_the_base_apart_from_the_inputs(ms) -> None:
    p = ms("plan", *PLAN)
    assert p.code == 0, p.err
    lines = p.out.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("base ")] == ["main"]
    assert [ln.split()[1] for ln in lines if ln.startswith("input ")] == ["dense_small", "frozen"]
    j = ms("plan", *PLAN, "--json").json()
    assert j["base"]["ref"] == "main"
    assert [m["ref"] for m in j["inputs"]] == ["dense_small", "frozen"]


def test_explain_lists_the_base_and_the_realized_error_next_to_the_bound(ms, fam_store) -> None:
    assert ms("merge", *PLAN, *F32, "--budget", "30%", "-b", "b30").code == 0
    e = ms("explain", "b30")
    assert e.code == 0, e.err
    lines = e.out.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("base ")] == ["main"]
    assert [ln.split()[1] for ln in lines if ln.startswith("input ")] == ["dense_small", "frozen"]
    assert "realized unknown: merge the same inputs without --budget" in e.out
    j = ms("explain", "b30", "--json").json()
    assert j["base"]["ref"] == "main" and [m["ref"] for m in j["inputs"]] == [
        "dense_small",
        "frozen",
    ]
    assert j["realized_error"]["error"] is None and "without --budget" in j["realized_error"]["why"]
    # once the full-read merge is in the store, explain measures against it
    full = ms("merge", *PLAN, *F32, "-b", "full", "--json").json()["commit"]
    j = ms("explain", "b30", "--json").json()
    real, bound = j["realized_error"], j["realized"]["error_bound"]
    assert real["full_merge"] == full
    assert 0 < real["error"] <= bound
    assert 0 < real["relative"] < 1
    with Store.open(fam_store) as s:  # the same figures, straight from the tensors
        sq = {"err": 0.0, "delta": 0.0}
        for t in s.tensors("full"):
            full_t = s.read_tensor("full", t.name).double()
            sq["err"] += float(((full_t - s.read_tensor("b30", t.name).double()) ** 2).sum())
            sq["delta"] += float(((full_t - s.read_tensor("main", t.name).double()) ** 2).sum())
    assert real["error"] == pytest.approx(sq["err"] ** 0.5, rel=1e-9)
    assert real["relative"] == pytest.approx((sq["err"] / sq["delta"]) ** 0.5, rel=1e-9)
    e = ms("explain", "b30")
    bound_line = next(i for i, ln in enumerate(e.out.splitlines()) if ln.startswith("bound "))
    realized = e.out.splitlines()[bound_line + 1]
    assert realized.startswith(f"realized {real['error']:.4g} (relative ")
    assert full[:12] in realized
    # a merge that read everything has no error to realize
    assert ms("explain", "full", "--json").json()["realized_error"] is None
    assert not any(ln.startswith("realized") for ln in ms("explain", "full").out.splitlines())
