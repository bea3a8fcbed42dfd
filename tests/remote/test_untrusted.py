"""The remote is untrusted: tampered packs, indexes, bundles and refs, hostile paths, secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mergestore.api import Store
from mergestore.remote.layout import (
    content_name,
    decode_index,
    encode_index,
)
from mergestore.remote.url import RemoteURLError, mask_url, parse_url


@pytest.fixture
def pushed(tmp_path: Path, tiny_family) -> tuple[Path, str]:
    """A file:// remote holding base + dense_small (its root, its URL)."""
    root = tmp_path / "remote"
    s = Store.init(tmp_path / "src", block_size=4096)
    s.commit(tiny_family.base, message="base")
    s.commit(tiny_family.experts["dense_small"], message="ds", base="main")
    s.add_remote("origin", str(root))
    assert s.push("origin", "main").ok
    s.close()
    return root, f"file://{root}"


def _only(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_a_tampered_block_is_refused_by_clone_and_by_a_lazy_read(
    pushed, tmp_path, cli, tiny_family
):
    root, url = pushed
    idx_path = _only(root, "packs/*.idx")
    idx = decode_index(idx_path.read_bytes(), idx_path.stem)
    victim = max(idx.entries, key=lambda e: e.length)
    pack = root / "packs" / f"{idx_path.stem}.pack"
    data = bytearray(pack.read_bytes())
    data[victim.offset + victim.length // 2] ^= 0x40
    pack.write_bytes(bytes(data))

    r = cli("clone", url, tmp_path / "full")
    assert r.code == 1
    line = _one_error_line(r.err)
    assert victim.block.hex()[:12] in line and "remote" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "remote", "src"]

    r = cli("clone", "--lazy", url, tmp_path / "lazy")
    assert r.code == 0, r.err
    r = cli("--store", tmp_path / "lazy", "checkout", "main", tmp_path / "out")
    assert r.code == 1
    assert victim.block.hex()[:12] in _one_error_line(r.err)
    # No partial or damaged file: whatever checkout finished before it met the block is whole.
    src = tiny_family.experts["dense_small"]
    for f in (tmp_path / "out").rglob("*"):
        assert not f.name.endswith(".mergestore-tmp")
        assert f.read_bytes() == (src / f.relative_to(tmp_path / "out")).read_bytes()
    lazy = Store.open(tmp_path / "lazy")
    try:
        assert lazy.repo.block_location(victim.block).pack >= 0xC000_0000  # never kept
    finally:
        lazy.close()


def test_a_tampered_index_or_bundle_does_not_match_its_name(pushed, tmp_path, cli):
    root, url = pushed
    for pattern in ("packs/*.idx", "objects/*.bundle"):
        path = _only(root, pattern)
        good = path.read_bytes()
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        r = cli("clone", "--lazy", url, tmp_path / f"c{len(pattern)}")
        assert r.code == 1
        line = _one_error_line(r.err)
        assert "does not match its name" in line and path.name in line
        path.write_bytes(good)


def test_index_entries_are_bounds_checked(pushed, tmp_path, cli):
    root, url = pushed
    idx_path = _only(root, "packs/*.idx")
    pack = root / "packs" / f"{idx_path.stem}.pack"
    idx = decode_index(idx_path.read_bytes(), idx_path.stem)
    e = idx.entries[-1]
    forged = type(idx)(
        idx.pack_size,
        idx.entries[:-1] + (type(e)(e.block, e.offset, e.length + 4096, e.raw_len, e.spec, e.ref),),
    )
    data = encode_index(forged)
    name = content_name(data)
    # A well-named index beside a real pack of the size it claims: only its entry is wrong.
    (root / "packs" / f"{name}.idx").write_bytes(data)
    (root / "packs" / f"{name}.pack").write_bytes(pack.read_bytes())
    idx_path.unlink()
    pack.unlink()
    r = cli("clone", url, tmp_path / "c")
    assert r.code == 1
    line = _one_error_line(r.err)
    assert "lies outside the pack" in line and name[:16] in line


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("refs/heads/bad..name", None, "invalid name"),
        ("refs/heads/x.lock", None, "invalid name"),
        ("refs/other/x", None, "invalid name"),
        ("refs/heads/evil", b"../../../etc/passwd\n", "malformed value"),
        ("refs/heads/evil", b"zz" * 32 + b"\n", "malformed value"),
    ],
)
def test_remote_ref_names_and_values_are_validated(pushed, tmp_path, cli, key, value, message):
    root, url = pushed
    main = (root / "refs/heads/main").read_bytes()
    target = root / key
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(main if value is None else value)
    r = cli("clone", url, tmp_path / "c")
    assert r.code == 1
    line = _one_error_line(r.err)
    assert message in line and key in line


def test_a_hostile_tree_path_writes_nothing_outside(tmp_path: Path, tiny_family, cli):
    """A commit whose tree names ../ paths (pushed by someone malicious) is fetched as data,
    and checkout refuses it without writing outside the target."""
    from mergestore.store.objects import Commit, Tree, TreeEntry

    s = Store.init(tmp_path / "evil", block_size=4096)
    s.commit(tiny_family.base, message="base")
    entry = s.tree("main").entries[0]
    with s.repo.writer() as w:
        tree = w.put_object(
            Tree((TreeEntry("../../escaped.json", entry.kind, entry.object, entry.size),))
        )
        c = w.put_object(Commit(tree, (), "evil", "x", 0.0))
        from mergestore.store.repo import RefUpdate

        w.publish([RefUpdate("refs/heads/main", c, "evil")])
    s.add_remote("origin", str(tmp_path / "remote"))
    assert s.push("origin", "main", force=True).ok
    s.close()
    work = tmp_path / "work"
    work.mkdir()
    assert cli("clone", f"file://{tmp_path / 'remote'}", work / "c").code == 0
    r = cli("--store", work / "c", "checkout", "main", work / "out" / "x")
    assert r.code == 1
    assert not (work / "escaped.json").exists() and not (tmp_path / "escaped.json").exists()
    assert not list(tmp_path.rglob("escaped.json"))


def test_urls_with_credentials_are_refused_and_masked(tmp_path: Path, cli):
    for url in (
        "s3://AKIAEXAMPLE:wJalrXUtnFEMIsecret@bucket/x",
        "s3://bucket/x?aws_secret_access_key=wJalrXUtnFEMIsecret",
        "s3://bucket/x?X-Amz-Signature=deadbeefsecret",
    ):
        with pytest.raises(RemoteURLError) as ei:
            parse_url(url)
        assert "wJalrXUtnFEMIsecret" not in str(ei.value) and "deadbeef" not in str(ei.value)
        assert "wJalrXUtnFEMIsecret" not in mask_url(url) and "***" in mask_url(url)
    st = tmp_path / "s"
    assert cli("init", st).code == 0
    r = cli("--store", st, "remote", "add", "origin", "s3://AKIA:topsecretvalue@bucket/x")
    assert r.code == 1 and "topsecretvalue" not in r.err and "credential" in r.err
    assert (
        not (st / "remotes.json").exists()
        or "topsecretvalue" not in (st / "remotes.json").read_text()
    )


def test_s3_credentials_never_stored_or_printed(tmp_path: Path, tiny_family, seaweed, s3_env, cli):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    st = tmp_path / "s"
    assert cli("init", st).code == 0
    assert cli("--store", st, "commit", tiny_family.base).code == 0
    url = f"s3://mergestore-tests/creds?endpoint={seaweed.endpoint}"
    assert cli("--store", st, "remote", "add", "origin", url).code == 0
    r = cli("--store", st, "push", "origin", "--json")
    assert r.code == 0, r.err
    for p in st.rglob("*"):
        if p.is_file() and p.stat().st_size < 1 << 20:
            assert secret.encode() not in p.read_bytes(), p
    r = cli("--store", st, "remote", "-v", "--json")
    assert secret not in r.out and json.loads(r.out)["remotes"][0]["url"] == url
    # An error from the server (no such bucket) names the key, never the secret.
    bad = f"s3://no-such-bucket-here/x?endpoint={seaweed.endpoint}"
    assert cli("--store", st, "remote", "add", "nowhere", bad).code == 0
    r = cli("--store", st, "push", "nowhere")
    assert r.code == 1 and secret not in r.err and "nowhere" in r.err


def test_credentials_from_an_aws_profile(tmp_path: Path, tiny_family, seaweed, monkeypatch):
    """AWS_PROFILE with the shared credentials file: used, kept in memory, never stored."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    creds = tmp_path / "aws-credentials"
    creds.write_text(
        "[team]\naws_access_key_id = profilekey\naws_secret_access_key = profile-secret-xyz\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_PROFILE", "team")
    s = Store.init(tmp_path / "s", block_size=4096)
    s.commit(tiny_family.base, message="base")
    s.add_remote("origin", f"s3://mergestore-tests/profile?endpoint={seaweed.endpoint}")
    assert s.push("origin", "main").ok
    for p in s.path.rglob("*"):
        if p.is_file() and p.stat().st_size < 1 << 20:
            assert b"profile-secret-xyz" not in p.read_bytes()
    s.close()
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    s = Store.open(tmp_path / "s")
    try:
        with pytest.raises(Exception, match="profile 'nobody' not found"):
            s.fetch("origin")
    finally:
        s.close()
