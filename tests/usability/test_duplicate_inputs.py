"""Issue 15 item 8: duplicate inputs are detected by what they resolve to, not by their text."""

from __future__ import annotations

import shlex

import pytest


def tip(ms, ref: str) -> str:
    return ms("log", ref, "-n", "1", "--json").json()["commits"][0]["id"]


@pytest.mark.parametrize("second", ["dense_small~0", "ID", "FOLDER"])
def test_same_model_twice_is_refused(ms, tiny_family, second: str) -> None:
    if second == "ID":
        second = tip(ms, "dense_small")[:10]
    elif second == "FOLDER":
        second = str(tiny_family.experts["dense_small"])
    r = ms("merge", "--method", "linear", "dense_small", second, "-w", "1", "-w", "1", "-b", "x")
    assert r.code == 1
    assert "same checkpoint" in r.err and "dense_small" in r.err
    assert ms("log", "x").code != 0


def test_base_twice_under_another_name_is_refused(ms) -> None:
    r = ms(*shlex.split("merge --method ties --base main main~0 dense_small -w 1 -w 1 -b x"))
    assert r.code == 1 and "same checkpoint" in r.err


def test_base_listed_by_the_same_name_is_mergekits_form(ms, tmp_path) -> None:
    y = tmp_path / "t.yml"
    y.write_text(
        "merge_method: ties\nbase_model: main\nmodels:\n  - model: main\n"
        "  - model: dense_small\n    parameters: {weight: 1, density: 0.5}\n"
    )
    assert ms("merge", "--config", y, "-b", "ok").code == 0
