"""Issue 15 item 10: `diff --tensor GLOB` that selects nothing is an error, as in checkout."""

from __future__ import annotations

import json


def test_diff_tensor_glob_matching_nothing_is_an_error(ms, tmp_path) -> None:
    r = ms("diff", "main", "frozen", "--tensor", "nomatch*")
    assert (r.code, r.out, r.err) == (1, "", "error: no tensor matches nomatch*\n")
    j = ms("diff", "main", "frozen", "--tensor", "nomatch*", "--json")
    assert j.code == 1 and json.loads(j.out) == {"error": "no tensor matches nomatch*", "code": 1}
    # checkout says the same
    c = ms("checkout", "frozen", tmp_path / "out", "--tensor", "nomatch*")
    assert c.code == 1 and c.err == r.err


def test_diff_tensor_glob_that_matches_still_works(ms) -> None:
    r = ms("diff", "main", "frozen", "--tensor", "nomatch*", "--tensor", "*embed*", "--json")
    assert r.code == 0 and r.json()["tensors"]
    assert all("embed" in t["name"] for t in r.json()["tensors"])
