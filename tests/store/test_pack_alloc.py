"""Pack allocation across writers: a new pack taken by another writer before its creator could
lock it is that writer's, and the creator makes the next one (tests/faults/test_concurrency.py
once failed under load with "cannot create pack N")."""

from __future__ import annotations

from pathlib import Path

from mergestore.store import packs
from mergestore.store.packs import PACK_MAGIC, PackAppender, list_pack_ids, pack_path


def test_new_pack_taken_before_its_creator_locks_it(tmp_path: Path, monkeypatch) -> None:
    """The race, made deterministic: between the creator's O_EXCL create and its flock, a
    second writer scanning for a pack with room takes the new (empty) pack. flock locks are per
    open file, so two appenders in one process contend exactly as two processes do."""
    creator, other = PackAppender(tmp_path), PackAppender(tmp_path)
    real_flock = packs.fcntl.flock
    state = {"raced": False}

    def flock(fd, op):
        if not state["raced"] and op == packs.fcntl.LOCK_EX | packs.fcntl.LOCK_NB:
            state["raced"] = True  # the creator is about to lock its new pack: the other first
            other.append(b"o" * 32, b"theirs")
        return real_flock(fd, op)

    monkeypatch.setattr(packs.fcntl, "flock", flock)
    pid, _ = creator.append(b"c" * 32, b"mine")
    assert state["raced"]
    assert list_pack_ids(tmp_path) == [1, 2]
    assert pid == 2  # pack 1 went to the other writer
    creator.sync()
    other.sync()
    creator.close()
    other.close()
    for n, who in ((1, b"theirs"), (2, b"mine")):
        data = pack_path(tmp_path, n).read_bytes()
        assert data.startswith(PACK_MAGIC) and data.endswith(who)
        assert [b for _, b, _ in packs.walk_pack(pack_path(tmp_path, n))]  # walkable


def test_existing_packs_with_room_are_reused(tmp_path: Path) -> None:
    a = PackAppender(tmp_path)
    a.append(b"a" * 32, b"x")
    a.close()
    b = PackAppender(tmp_path)
    pid, _ = b.append(b"b" * 32, b"y")
    b.close()
    assert pid == 1 and list_pack_ids(tmp_path) == [1]


def test_rolled_back_new_pack_is_removed(tmp_path: Path) -> None:
    """An interrupted session leaves no new pack file (not even its 8-byte magic)."""
    a = PackAppender(tmp_path)
    a.append(b"a" * 32, b"x")
    a.rollback()
    a.close()
    assert list_pack_ids(tmp_path) == []
    b = PackAppender(tmp_path)  # an existing pack is cut back, not removed
    b.append(b"b" * 32, b"kept")
    b.sync()
    b.close()
    size = pack_path(tmp_path, 1).stat().st_size
    c = PackAppender(tmp_path)
    c.append(b"c" * 32, b"dropped")
    c.rollback()
    c.close()
    assert list_pack_ids(tmp_path) == [1] and pack_path(tmp_path, 1).stat().st_size == size


def test_pack_removed_while_another_writer_waits_for_it(tmp_path: Path, monkeypatch) -> None:
    """A writer that opened a new pack just before its creator rolled back and removed it gets
    the lock on a file no longer in the directory: it must not write there (its blocks would be
    published into a pack no one can read), and makes a pack of its own."""
    creator, other = PackAppender(tmp_path), PackAppender(tmp_path)
    creator.append(b"c" * 32, b"mine")  # pack 1, locked by the creator
    real_flock = packs.fcntl.flock
    state = {"done": False}

    def flock(fd, op):
        if not state["done"] and op == packs.fcntl.LOCK_EX | packs.fcntl.LOCK_NB:
            state["done"] = True  # `other` has pack 1 open: the creator rolls back, lets go
            creator.rollback()
            creator.close()
        return real_flock(fd, op)

    monkeypatch.setattr(packs.fcntl, "flock", flock)
    pid, _ = other.append(b"o" * 32, b"theirs")
    other.sync()
    other.close()
    assert state["done"]
    assert list_pack_ids(tmp_path) == [pid]
    data = pack_path(tmp_path, pid).read_bytes()
    assert data.startswith(PACK_MAGIC) and data.endswith(b"theirs")


def test_pack_bytes_skip_a_pack_removed_while_listed(tmp_path: Path, monkeypatch) -> None:
    """du lists the packs, then sizes them: one removed in between (a rolled-back writer's
    new pack, or gc) is not there to count, and not an error."""
    from types import SimpleNamespace

    from mergestore.fsck import pack_files_size

    a = PackAppender(tmp_path)
    a.append(b"a" * 32, b"x")
    a.sync()
    a.close()
    real_glob = Path.glob

    def glob(self, pattern):
        yield from real_glob(self, pattern)
        yield self / "pack-000009.pack"  # listed, then gone

    monkeypatch.setattr(Path, "glob", glob)
    size = pack_path(tmp_path, 1).stat().st_size
    assert pack_files_size(SimpleNamespace(pack_dir=tmp_path)) == size
