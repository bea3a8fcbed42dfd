"""`--store URL`: read-only commands straight against a remote, through a local cache."""

from __future__ import annotations

from pathlib import Path

from mergestore.api import Store


def test_read_only_commands_against_a_remote_url(
    tmp_path: Path, tiny_family, remote_url: str, cli, monkeypatch
):
    monkeypatch.setenv("MERGESTORE_CACHE", str(tmp_path / "cache"))
    s = Store.init(tmp_path / "src", block_size=4096)
    s.commit(tiny_family.base, message="base")
    s.commit(tiny_family.experts["dense_small"], message="ds", branch="ds", base="main")
    s.add_remote("origin", remote_url)
    assert s.push("origin", "main", "ds").ok

    r = cli("--store", remote_url, "log", "--graph", "--all")
    assert r.code == 0, r.err
    assert "base" in r.out and "ds" in r.out
    r = cli("--store", remote_url, "checkout", "origin/ds", tmp_path / "out")
    assert r.code == 0, r.err
    for f in Path(tiny_family.experts["dense_small"]).iterdir():
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()
    # Writing through a view is refused, with one line that says why.
    r = cli("--store", remote_url, "branch", "x")
    assert r.code == 1 and "read-only view" in r.err

    # A new push is seen on the next open (the view refreshes its refs).
    s.commit(tiny_family.experts["lowrank_attn"], message="la", base="main")
    assert s.push("origin", "main").ok
    r = cli("--store", remote_url, "log", "--json")
    assert r.code == 0, r.err
    assert "la" in r.out
    s.close()
