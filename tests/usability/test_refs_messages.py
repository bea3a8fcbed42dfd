"""Issue 15 items 9 (part) and 10: ref safety and exit codes of log/reflog/branch."""

from __future__ import annotations


def test_branch_d_refuses_heads_branch(ms) -> None:
    r = ms("branch", "-d", "main")
    assert r.code == 1 and "HEAD is on it" in r.err
    assert ms("log", "main", "-n", "1").code == 0


def test_reflog_of_unknown_ref_is_an_error(ms) -> None:
    r = ms("reflog", "nosuch")
    assert r.code == 1 and "nosuch" in r.err


def test_reflog_is_in_time_order(ms) -> None:
    assert ms("branch", "later", "dense_small").code == 0
    assert ms("branch", "-f", "main", "frozen").code == 0
    times = [e["time"] for e in ms("reflog", "--json").json()["entries"]]
    assert times == sorted(times) and len(times) >= 6


def test_log_negative_count_is_a_usage_error(ms) -> None:
    r = ms("log", "-n", "-1")
    assert r.code == 2 and "--max-count" in r.err


def test_short_prefix_says_six(ms) -> None:
    r = ms("log", "abc12")
    assert r.code == 1 and "at least 6 hex" in r.err
