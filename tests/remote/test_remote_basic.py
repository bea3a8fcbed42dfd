"""push, fetch, pull and clone against SeaweedFS (S3) and file://: only what is missing moves."""

from __future__ import annotations

import filecmp
from pathlib import Path

from mergestore.api import Store
from mergestore.usage import iter_commit_blocks, new_stored_bytes


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    for sub in cmp.common_dirs:
        if not _same_tree(a / sub, b / sub):
            return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in cmp.common_files)


def _new_stored_bytes(store: Store, new: str, old: list[str]) -> int:
    """Stored bytes of the blocks commit `new` uses that none of `old` use."""
    return new_stored_bytes(store.repo, store.resolve(new), [store.resolve(r) for r in old])


def test_push_then_clone_roundtrip(origin: Store, tiny_family, tmp_path: Path, remote_url: str):
    origin.commit(tiny_family.experts["dense_small"], message="ds", branch="ds", base="main")
    res = origin.push("origin", "main", "ds")
    assert res.ok and {r.status for r in res.refs} == {"ok"}
    assert res.block_bytes > 0 and res.packs >= 1
    assert origin.repo.read_ref("refs/remotes/origin/ds") == origin.resolve("ds")

    clone = Store.clone(remote_url, tmp_path / "b")
    try:
        assert clone.resolve("main") == origin.resolve("main")
        assert clone.resolve("origin/ds") == origin.resolve("ds")
        clone.checkout("origin/ds", tmp_path / "out")
        assert _same_tree(tmp_path / "out", tiny_family.experts["dense_small"])
        from mergestore.fsck import fsck

        rep = fsck(clone.repo, full=True)
        assert rep.ok, rep.to_json()
        # the clone received the stored bytes as they were: same codecs, same lengths
        for bid in iter_commit_blocks(clone.repo, clone.resolve("origin/ds")):
            a, b = origin.repo.block_location(bid), clone.repo.block_location(bid)
            assert (a.length, a.raw_len, a.ref) == (b.length, b.raw_len, b.ref)
            assert origin.repo.codec_spec(a.codec) == clone.repo.codec_spec(b.codec)
    finally:
        clone.close()


def test_second_push_sends_no_blocks_and_a_fine_tune_sends_its_own(origin: Store, tiny_family):
    assert origin.push("origin", "main").block_bytes > 0
    again = origin.push("origin", "main")
    assert again.ok and again.block_bytes == 0 and again.packs == 0
    assert [r.status for r in again.refs] == ["up-to-date"]

    origin.commit(tiny_family.experts["dense_small"], message="ft", base="main")
    want = _new_stored_bytes(origin, "main", ["main~1"])
    res = origin.push("origin", "main")
    assert res.ok
    assert want > 0
    assert abs(res.block_bytes - want) <= 0.05 * want, (res.block_bytes, want)
    # Small index and object data besides the blocks.
    assert res.metadata_bytes < 0.25 * want + 64 * 1024


def test_fetch_brings_exactly_the_new_commit(
    origin: Store, tiny_family, tmp_path: Path, remote_url
):
    origin.push("origin", "main")
    other = Store.clone(remote_url, tmp_path / "b")
    try:
        origin.commit(tiny_family.experts["lowrank_attn"], message="la", base="main")
        origin.push("origin", "main")
        want = _new_stored_bytes(origin, "main", ["main~1"])
        res = other.fetch("origin")
        assert other.resolve("origin/main") == origin.resolve("main")
        assert abs(res.block_bytes - want) <= 0.05 * want
        assert other.fetch("origin").block_bytes == 0  # nothing left to fetch
        pulled = other.pull("origin", "main")
        assert pulled.status == "fast-forward" and other.resolve("main") == origin.resolve("main")
        assert other.pull("origin", "main").status == "up-to-date"
    finally:
        other.close()


def test_push_refusals_and_force(origin: Store, tiny_family, tmp_path: Path, remote_url, cli):
    origin.push("origin", "main")
    other = Store.clone(remote_url, tmp_path / "b")
    other_path = other.path
    other.close()
    # origin moves main on the remote; the other clone's push is refused: it never saw that.
    origin.commit(tiny_family.experts["dense_small"], message="a1", base="main")
    origin.push("origin", "main")
    other = Store.open(other_path)
    other.commit(tiny_family.experts["frozen"], message="b1", base="main")
    other.close()
    r = cli("--store", other_path, "push", "origin", "main")
    assert r.code == 1
    assert "rejected: origin/main moved; fetch first" in r.err
    # After a fetch it knows the remote commit, but main is still not a fast-forward of it.
    assert cli("--store", other_path, "fetch", "origin").code == 0
    r = cli("--store", other_path, "push", "origin", "main", "--json")
    assert r.code == 1 and r.json()["ok"] is False
    assert "non-fast-forward" in r.err
    # pull refuses to merge diverged branches
    r = cli("--store", other_path, "pull", "origin", "main")
    assert r.code == 1 and "not a fast-forward" in r.err
    # --force overrides
    r = cli("--store", other_path, "push", "origin", "main", "--force", "--json")
    assert r.code == 0, r.err
    assert r.json()["refs"][0]["status"] == "ok"
    probe = Store.clone(remote_url, tmp_path / "c")
    try:
        assert probe.get_commit("main").message == "b1"
    finally:
        probe.close()


def test_tags_push_and_fetch(origin: Store, tmp_path: Path, remote_url):
    origin.create_tag("v1")
    res = origin.push("origin", "main", tags=True)
    assert res.ok and {r.ref for r in res.refs} == {"refs/heads/main", "refs/tags/v1"}
    clone = Store.clone(remote_url, tmp_path / "b")
    try:
        assert clone.tags() == {"v1": origin.resolve("main")}
    finally:
        clone.close()


def test_cli_remote_commands(tmp_path: Path, tiny_family, remote_url, cli):
    st = tmp_path / "s"
    assert cli("init", st, "--block-size", "4KiB").code == 0
    assert cli("--store", st, "commit", tiny_family.base, "-m", "base").code == 0
    assert cli("--store", st, "remote", "add", "origin", remote_url).code == 0
    r = cli("--store", st, "remote", "-v", "--json")
    assert r.code == 0 and r.json()["remotes"][0]["name"] == "origin"
    r = cli("--store", st, "push", "origin", "--json")
    assert r.code == 0, r.err
    assert r.json()["refs"][0]["status"] == "ok"
    r = cli("clone", remote_url, tmp_path / "c", "--json")
    assert r.code == 0, r.err
    assert r.json()["head"] == "refs/heads/main"
    r = cli("--store", tmp_path / "c", "log", "--json")
    assert r.code == 0
    assert cli("--store", st, "remote", "remove", "origin").code == 0
    assert cli("--store", st, "remote", "--json").json()["remotes"] == []
