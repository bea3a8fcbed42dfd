"""Crash safety, corruption detection and hostile stored paths."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergestore.api import Store
from mergestore.errors import CheckoutError, CorruptionError
from mergestore.fsck import fsck
from mergestore.store.objects import BlobFile, Commit, Tree, TreeEntry
from mergestore.store.repo import RefUpdate

COMMIT_SCRIPT = """
import sys
from mergestore.api import Store
s = Store.open(sys.argv[1])
s.commit(sys.argv[2], message="killed", branch="main")
"""


def _run_commit(store_path: Path, src: Path, fault: str | None = None, delay: float | None = None):
    env = dict(os.environ)
    if fault:
        env["MERGESTORE_FAULT"] = fault
    p = subprocess.Popen([sys.executable, "-c", COMMIT_SCRIPT, str(store_path), str(src)], env=env)
    if delay is not None:
        time.sleep(delay)
        p.kill()
    p.wait(timeout=120)
    return p.returncode


@pytest.mark.parametrize("fault", ["before-publish", "inside-publish"])
def test_killed_commit_leaves_store_valid(tiny_family, tmp_path: Path, fault: str) -> None:
    path = tmp_path / "st"
    with Store.init(path, block_size=4096) as s:
        old = s.commit(tiny_family.base, message="base", branch="main").commit
    rc = _run_commit(path, tiny_family.experts["dense_small"], fault=fault)
    assert rc == 137
    with Store.open(path) as s:
        assert s.resolve("main") == old
        assert [e.id for e in s.log("main")] == [old]
        rep = fsck(s.repo, full=True)
        assert rep.ok, [p.message for p in rep.problems]
        # and the store still takes commits
        s.commit(tiny_family.experts["dense_small"], message="again", branch="main")
        assert fsck(s.repo, full=True).ok


def test_commit_killed_at_random_moments(tiny_family, tmp_path: Path) -> None:
    path = tmp_path / "st"
    with Store.init(path, block_size=4096) as s:
        old = s.commit(tiny_family.base, message="base", branch="main").commit
    for delay in (0.05, 0.3, 0.8, 1.5):
        _run_commit(path, tiny_family.experts["dense_small"], delay=delay)
        with Store.open(path) as s:
            head = s.resolve("main")
            # the ref holds its old value, or a complete new commit on top of it
            assert head == old or s.get_commit(head).parents == (old,)
            assert fsck(s.repo, full=True).ok
        old = head


def _flip_a_payload_byte(store: Store) -> bytes:
    bid, loc = max(store.repo.iter_blocks(), key=lambda kv: kv[1].length)
    pack = store.repo.pack_dir / f"pack-{loc.pack:06d}.pack"
    with open(pack, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        b = f.read(1)
        f.seek(loc.offset + loc.length // 2)
        f.write(bytes([b[0] ^ 0x40]))
    return bid


def test_corrupted_pack_byte_detected_by_fsck_and_checkout(
    tiny_family, store: Store, tmp_path: Path
) -> None:
    cid = store.commit(tiny_family.base, message="base", branch="main").commit
    _flip_a_payload_byte(store)
    store.repo.packs.close()
    rep = fsck(store.repo, full=True)
    assert not rep.ok
    assert any(cid.hex() in p.commits for p in rep.problems)
    with pytest.raises(CorruptionError):
        store.checkout("main", tmp_path / "out")


def test_truncated_pack_detected_without_full(tiny_family, store: Store) -> None:
    store.commit(tiny_family.base, message="base", branch="main")
    pack = next(store.repo.pack_dir.glob("pack-*.pack"))
    with open(pack, "r+b") as f:
        f.truncate(pack.stat().st_size // 2)
    rep = fsck(store.repo)
    assert not rep.ok and any("beyond the end" in p.message for p in rep.problems)


@pytest.mark.parametrize("evil", ["../evil.txt", "/etc/evil", "a/../../evil", "a\\..\\b", ""])
def test_stored_path_escaping_target_is_refused(store: Store, tmp_path: Path, evil: str) -> None:
    with store.repo.writer() as w:
        bid = w.put_raw(b"pwned")
        blob = w.put_object(BlobFile(size=5, blocks=(bid,)))
        tree = w.put_object(Tree(entries=(TreeEntry(evil, "blob", blob, 5),)))
        c = w.put_object(Commit(tree=tree, parents=(), message="x", author="a", time=0.0))
        w.publish([RefUpdate("refs/heads/evil", c, "test")])
    out = tmp_path / "deep" / "out"
    with pytest.raises(CheckoutError):
        store.checkout("evil", out)
    assert not (tmp_path / "deep" / "evil.txt").exists()
    assert not out.exists() or not any(out.iterdir())


def test_cached_objects_decodes_files_once_and_only_while_held(tiny_family, store: Store) -> None:
    """Inside cached_objects (a merge) a tree or file object is read and checked once; a
    commit is read every time, and outside the scope every read checks the stored bytes."""
    store.commit(str(tiny_family.base), message="base", branch="main")
    repo = store.repo
    cid = store.resolve("main")
    tree_id = repo.get_commit(cid).tree
    reads: list[bytes] = []
    real = repo.get_object_bytes
    repo.get_object_bytes = lambda oid: reads.append(oid) or real(oid)  # type: ignore[method-assign]
    with repo.cached_objects():
        with repo.cached_objects():  # nested: the same cache
            first = repo.get_tree(tree_id)
        assert repo.get_tree(tree_id) is first
        repo.get_commit(cid)
        repo.get_commit(cid)
    assert reads == [tree_id, cid, cid]
    assert repo.get_tree(tree_id) == first and reads[-1] == tree_id
