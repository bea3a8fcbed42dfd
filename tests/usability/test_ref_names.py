"""Issue 15 item 9: hex-like names refused, ambiguous branch/tag names, `tag -d`, `branch -m`."""

from __future__ import annotations

import json

import pytest

from mergestore.api import Store

MERGE = ["merge", "--method", "task_arithmetic", "--base", "main"]
W = ["-w", "0.5", "-w", "0.5"]


@pytest.mark.parametrize(
    "args",
    [
        ("branch", "cafe01"),
        ("branch", "0123456789abcdef"),
        ("tag", "ABCDEF12"),
        ("switch", "-c", "deadbeef"),
        ("branch", "-m", "dense_small", "abcdef"),
    ],
)
def test_hex_like_names_are_refused(ms, fam_store, args) -> None:
    before = Store.open(fam_store).repo.raw_refs()
    r = ms(*args)
    assert r.code == 1 and "commit id prefix" in r.err and r.err.startswith("error: ")
    j = ms(*args, "--json")
    assert j.code == 1 and "commit id prefix" in json.loads(j.out)["error"]
    assert Store.open(fam_store).repo.raw_refs() == before


def test_commit_and_merge_refuse_hex_like_branches(ms, tiny_family) -> None:
    r = ms("commit", tiny_family.base, "-b", "abc123")
    assert r.code == 1 and "commit id prefix" in r.err
    r = ms(*MERGE, "dense_small", "lowrank_attn", *W, "-b", "facade")
    assert r.code == 1 and "commit id prefix" in r.err


def test_names_with_a_non_hex_character_still_work(ms) -> None:
    assert ms("branch", "cafe0g").code == 0
    assert ms("tag", "v-abcdef").code == 0
    assert ms("branch", "abc12").code == 0  # too short to be read as a prefix


def test_a_branch_and_a_tag_of_one_name_are_ambiguous_where_used(ms) -> None:
    t = ms("tag", "frozen", "dense_small")
    assert t.code == 0 and "warning: branch 'frozen' exists too" in t.err
    j = ms("branch", "v9", "--json").json()
    assert j["warnings"] == []
    j = ms("tag", "v9", "--json").json()
    assert len(j["warnings"]) == 1 and "ambiguous" in j["warnings"][0]
    for args in (
        ("log", "frozen"),
        ("show", "frozen"),
        ("diff", "main", "frozen"),
        ("reflog", "frozen"),
        (*MERGE, "dense_small", "frozen", *W, "-b", "m1"),
    ):
        r = ms(*args)
        assert r.code == 1 and "ambiguous ref 'frozen'" in r.err, args
        j = ms(*args, "--json")
        assert j.code == 1 and "ambiguous ref" in json.loads(j.out)["error"], args
    # the full names say which
    assert ms("log", "refs/tags/frozen", "-n", "1").code == 0
    assert ms("log", "refs/heads/frozen", "-n", "1").code == 0


def test_tag_d_deletes_and_logs_it(ms) -> None:
    cid = ms("tag", "v1", "frozen", "--json").json()["commit"]
    r = ms("tag", "-d", "v1")
    assert r.code == 0 and f"Deleted tag v1 (was {cid[:12]})" in r.out
    assert "v1" not in ms("tag", "--json").json()["tags"]
    last = ms("reflog", "--json").json()["entries"][-1]
    assert last == {**last, "ref": "refs/tags/v1", "old": cid, "new": None}
    assert ms("tag", "v2").code == 0
    assert ms("tag", "-d", "v2", "--json").json()["deleted"] == "v2"
    r = ms("tag", "-d", "v2")
    assert r.code == 1 and r.err == "error: no tag 'v2'\n"
    j = ms("tag", "-d", "v2", "--json")
    assert j.code == 1 and json.loads(j.out)["error"] == "no tag 'v2'"
    assert ms("tag", "-d").code == 2


def test_branch_m_renames_with_its_reflog(ms) -> None:
    cid = ms("branch", "--json").json()["branches"]["frozen"]
    before = list(ms("reflog", "frozen", "--json").json()["entries"])
    r = ms("branch", "-m", "frozen", "ice")
    assert r.code == 0 and "frozen -> ice" in r.out
    branches = ms("branch", "--json").json()["branches"]
    assert branches["ice"] == cid and "frozen" not in branches
    moved = ms("reflog", "ice", "--json").json()["entries"]
    assert [e["message"] for e in moved[:-1]] == [e["message"] for e in before]
    assert "renamed refs/heads/frozen to refs/heads/ice" in moved[-1]["message"]
    gone = ms("reflog", "frozen", "--json").json()["entries"]
    assert len(gone) == 1 and gone[0]["new"] is None


def test_branch_m_moves_heads_symbolic_ref(ms) -> None:
    j = ms("branch", "-m", "trunk", "--json").json()  # HEAD's branch: main
    assert j["renamed"] == "main" and j["branch"] == "trunk" and j["head"] == "trunk"
    assert ms("branch", "--json").json()["head"] == "trunk"
    assert ms("log", "HEAD", "-n", "1").code == 0


def test_branch_m_refuses_to_clobber_without_capital_m(ms, fam_store) -> None:
    before = Store.open(fam_store).repo.raw_refs()
    r = ms("branch", "-m", "frozen", "dense_small")
    assert r.code == 1 and "already exists" in r.err and "-M" in r.err
    j = ms("branch", "-m", "frozen", "dense_small", "--json")
    assert j.code == 1 and "already exists" in json.loads(j.out)["error"]
    r = ms("branch", "-M", "frozen", "main")  # HEAD's branch is never replaced
    assert r.code == 1 and "HEAD is on it" in r.err
    r = ms("branch", "-m", "nosuch", "other")
    assert r.code == 1 and "no branch 'nosuch'" in r.err
    assert ms("branch", "-d", "-m", "frozen").code == 2
    assert Store.open(fam_store).repo.raw_refs() == before
    cid = ms("branch", "--json").json()["branches"]["frozen"]
    assert ms("branch", "-M", "frozen", "dense_small").code == 0
    assert ms("branch", "--json").json()["branches"]["dense_small"] == cid


def test_branch_m_on_detached_head_names_the_branch(ms, fam_store) -> None:
    # no command detaches HEAD yet: write the raw ref
    with Store.open(fam_store) as s, s.repo.index.write() as txn:
        txn.put(b"HEAD", s.resolve("frozen").hex().encode(), db=s.repo.index.db("refs"))
    r = ms("branch", "-m", "x")
    assert r.code == 1 and "HEAD is detached" in r.err


def test_push_of_a_name_that_is_a_branch_and_a_tag_is_ambiguous(ms, tmp_path) -> None:
    assert ms("remote", "add", "origin", f"file://{tmp_path / 'remote'}").code == 0
    assert ms("tag", "frozen", "main").code == 0
    r = ms("push", "origin", "frozen")
    assert r.code == 1 and "ambiguous ref 'frozen'" in r.err
    j = ms("push", "origin", "frozen", "--json")
    assert j.code == 1 and "ambiguous ref" in json.loads(j.out)["error"]
    assert ms("push", "origin", "refs/tags/frozen").code == 0
