"""`mergestore status` shows each remote-tracking branch ahead/behind, from the CLI (issue 19
item 9), against file:// and SeaweedFS."""

from __future__ import annotations

from pathlib import Path


def _status(cli, store: Path) -> dict:
    r = cli("--store", store, "status", "--json")
    assert r.code == 0, r.err
    return r.json()


def test_status_counts_ahead_and_behind(cli, tmp_path: Path, tiny_family, remote_url: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("--store", a, "init").code == 0
    assert cli("--store", a, "commit", tiny_family.base, "-m", "base").code == 0
    assert _status(cli, a)["remotes"] == []  # no remote yet: nothing to count
    assert cli("--store", a, "remote", "add", "origin", remote_url).code == 0
    assert cli("--store", a, "push", "origin", "main").code == 0

    st = _status(cli, a)
    assert st["remotes"] == [{"remote": "origin", "branch": "main", "ahead": 0, "behind": 0}]
    r = cli("--store", a, "status")
    assert r.code == 0 and "branch main is up to date with origin/main" in r.out

    # two local commits not pushed: ahead 2
    ds = tiny_family.experts["dense_small"]
    fr = tiny_family.experts["frozen"]
    assert cli("--store", a, "commit", ds, "-m", "ds").code == 0
    assert cli("--store", a, "commit", fr, "-m", "fr").code == 0
    st = _status(cli, a)
    assert st["remotes"] == [{"remote": "origin", "branch": "main", "ahead": 2, "behind": 0}]
    assert "branch main is ahead 2, behind 0 of origin/main" in cli("--store", a, "status").out

    # another clone pushes one commit on top of the remote's main; after fetch: behind 1
    assert cli("clone", remote_url, b).code == 0
    lr = tiny_family.experts["lowrank_attn"]
    assert cli("--store", b, "commit", lr, "-m", "lr").code == 0
    assert cli("--store", b, "push", "origin", "main").code == 0
    assert _status(cli, a)["remotes"][0]["behind"] == 0  # not fetched yet
    assert cli("--store", a, "fetch", "origin").code == 0
    st = _status(cli, a)
    assert st["remotes"] == [{"remote": "origin", "branch": "main", "ahead": 2, "behind": 1}]
    assert "branch main is ahead 2, behind 1 of origin/main" in cli("--store", a, "status").out
    # the clone itself is up to date with what it pushed
    st = _status(cli, b)
    assert st["remotes"] == [{"remote": "origin", "branch": "main", "ahead": 0, "behind": 0}]
