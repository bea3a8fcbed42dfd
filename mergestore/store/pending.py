"""A write session's unpublished work, saved so that a merge killed half way can resume.

A merge keeps everything it writes (the folders it stores, the output blocks it computes, the
journal of finished tensors) in one write session, published with the merge commit
(merge/session.py). A failure rolls the session back: the store stays byte for byte as it was.
So that a kill (kill -9, the OOM killer) or an interrupt does not lose the work done, the merge
saves the session at every journal flush but the last (the publish follows it): the packs
are fsynced, then a file lists the blocks they hold for it (pack, offset, length, codec), its
objects, its input-commit entries and its journal entry: `pending/<pid>-<random>.json` in the
store, flocked by its process while it runs.

A file nobody holds is an orphan (its process is gone). The next merge adopts the orphans into
its own session, published with it (a re-run of the same plan reuses their tensors); gc
publishes them before it collects, so their journals age as published journals do;
`drop_orphans` (`mergestore merge --abort`) removes them and cuts the packs back where nothing
was written after them. An orphan whose blocks are not in the packs where it says (a pack
rewritten since, a torn file) is dropped whole: its objects may need those blocks.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mergestore.fast_dataclass import dataclass
from mergestore.store.packs import ENTRY_HEADER, ENTRY_MAGIC, PACK_MAGIC, pack_path
from mergestore.store.repo import PendingBlock, Repository, WriteSession

PENDING_DIR = "pending"
VERSION = 1


def pending_dir(repo: Repository) -> Path:
    return repo.path / PENDING_DIR


class SessionFile:
    """The saved form of one live session; its process holds a flock on it."""

    def __init__(self, repo: Repository, session: WriteSession) -> None:
        self.repo = repo
        self.session = session
        self.path: Path | None = None
        self._fd: int | None = None

    @property
    def saved(self) -> bool:
        return self.path is not None

    def save(self, note: dict[str, Any]) -> None:
        """fsync the session's packs, then replace the file with its state (atomic rename)."""
        self.session.sync()
        folder = pending_dir(self.repo)
        folder.mkdir(exist_ok=True)
        if self.path is None:
            self.path = folder / f"{os.getpid()}-{os.urandom(6).hex()}.json"
        data = json.dumps(_encode(self.session, note), separators=(",", ":")).encode()
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held from before the rename: never an orphan
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(folder)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd

    def release(self) -> None:
        """Let go of the file (it stays: an orphan the next merge or gc takes up)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None
        self.release()
        remove_dir_if_empty(self.repo)


def remove_dir_if_empty(repo: Repository) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(pending_dir(repo))


@dataclass
class Orphan:
    """A saved session no process holds."""

    path: Path
    body: dict[str, Any] | None  # None: unreadable


@contextlib.contextmanager
def orphans(repo: Repository) -> Iterator[list[Orphan]]:
    """The saved sessions no process holds, locked for the caller while the block runs (a
    merge that adopts them holds them until it has published them, so that no `merge --abort`
    cuts their bytes meanwhile)."""
    folder = pending_dir(repo)
    held: list[tuple[int, Orphan]] = []
    try:
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
        for name in names:
            path = folder / name
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live session's
                continue
            if not _still_named(path, fd):  # replaced by its live owner's next save
                os.close(fd)
                continue
            if name.endswith(".tmp"):  # a save cut short
                unlink(path)
                os.close(fd)
                continue
            held.append((fd, Orphan(path, _read(fd))))
        yield [o for _, o in held]
    finally:
        for fd, _ in held:
            os.close(fd)


def adopt(repo: Repository, session: WriteSession, orphan: Orphan) -> bool:
    """Add an orphan's blocks, objects and index entries to `session` (which publishes them);
    False, adding nothing, if any of its blocks is not where it says."""
    body = orphan.body
    if body is None or body.get("version") != VERSION:
        return False
    try:
        blocks = [_block(row) for row in body["blocks"]]
        if not all(_entry_is_there(repo, bid, pb) for bid, pb in blocks):
            return False
        objects = {bytes.fromhex(k): base64.b64decode(v) for k, v in body["objects"].items()}
        inputs = {bytes.fromhex(k): bytes.fromhex(v) for k, v in body["input_commits"].items()}
        puts = {
            (db, bytes.fromhex(k)): None if v is None else base64.b64decode(v)
            for db, k, v in body["index_puts"]
        }
    except (KeyError, TypeError, ValueError):
        return False
    for bid, pb in blocks:
        if not session.known(bid):
            session.blocks[bid] = pb
    for oid, data in objects.items():
        session.put_object_bytes(oid, data)
    session.input_commits.update(inputs)
    for key, value in puts.items():
        session.index_puts.setdefault(key, value)  # the adopter's own entries win
    return True


def journals(repo: Repository, db: str, prefix: bytes) -> dict[bytes, dict[str, Any]]:
    """The journal entries (index_puts under `prefix`) of saved sessions, live or orphaned."""
    folder = pending_dir(repo)
    out: dict[bytes, dict[str, Any]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            body = json.loads(path.read_bytes())
            for d, k, v in body["index_puts"]:
                key = bytes.fromhex(k)
                if d == db and key.startswith(prefix) and v is not None:
                    out[key[len(prefix) :]] = json.loads(base64.b64decode(v))
        except (OSError, KeyError, TypeError, ValueError):
            continue
    return out


def publish_orphans(repo: Repository) -> int:
    """Publish every orphan (gc, before it collects); returns how many were published."""
    n = 0
    with orphans(repo) as found:
        for orphan in found:
            with repo.writer() as session:
                if adopt(repo, session, orphan):
                    session.publish()
                    n += 1
            unlink(orphan.path)
    remove_dir_if_empty(repo)
    return n


def drop_orphans(repo: Repository) -> dict[str, int]:
    """Remove every orphan; cut each pack it appended to back to where it started, when
    nothing was written after it and none of its blocks was published since."""
    dropped = freed = 0
    with orphans(repo) as found:
        for orphan in found:
            freed += _cut_packs(repo, orphan.body) if orphan.body is not None else 0
            unlink(orphan.path)
            dropped += 1
    remove_dir_if_empty(repo)
    return {"sessions": dropped, "bytes_freed": freed}


def _cut_packs(repo: Repository, body: dict[str, Any]) -> int:
    freed = 0
    try:
        packs = {int(k): (int(a), int(b), bool(c)) for k, (a, b, c) in body["packs"].items()}
        blocks = [_block(row) for row in body["blocks"]]
    except (KeyError, TypeError, ValueError):
        return 0
    published = repo.block_locations(bid for bid, _ in blocks)
    for pid, (start, end, created) in packs.items():
        if any(loc.pack == pid and start <= loc.offset < end for loc in published.values()):
            continue  # adopted and published by a merge that died before removing the file
        path = pack_path(repo.pack_dir, pid)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a writer has it: the bytes stay for gc
            if os.fstat(fd).st_size != end:
                continue  # written after: the bytes stay for gc
            if created and start == len(PACK_MAGIC):
                unlink(path)
            else:
                os.ftruncate(fd, start)
            freed += end - start
        finally:
            os.close(fd)
    return freed


def _encode(session: WriteSession, note: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": VERSION,
        "time": time.time(),
        "pid": os.getpid(),
        **note,
        "blocks": [
            [
                bid.hex(),
                pb.spec,
                pb.pack,
                pb.offset,
                pb.length,
                pb.raw_len,
                pb.ref.hex() if pb.ref is not None else None,
                pb.check,
            ]  # fmt: skip
            for bid, pb in list(session.blocks.items())
        ],
        "objects": {oid.hex(): base64.b64encode(d).decode() for oid, d in session.objects.items()},
        "input_commits": {k.hex(): v.hex() for k, v in session.input_commits.items()},
        "index_puts": [
            [db, key.hex(), None if v is None else base64.b64encode(v).decode()]
            for (db, key), v in session.index_puts.items()
        ],
        "packs": {str(pid): list(v) for pid, v in session.pack_sizes().items()},
    }


def _block(row: list[Any]) -> tuple[bytes, PendingBlock]:
    bid, spec, pack, offset, length, raw_len, ref, *rest = row
    check = rest[0] if rest else None  # saved before entries had checks: none
    if len(rest) > 1 or (check is not None and not 0 <= int(check) < 1 << 64):
        raise ValueError("a malformed block row")
    pb = PendingBlock(
        str(spec), int(pack), int(offset), int(length), int(raw_len),
        bytes.fromhex(ref) if ref is not None else None,
        int(check) if check is not None else None,
    )  # fmt: skip
    return bytes.fromhex(bid), pb


def _entry_is_there(repo: Repository, bid: bytes, pb: PendingBlock) -> bool:
    """The pack entry at the saved place names this block, with this length."""
    try:
        fd = os.open(pack_path(repo.pack_dir, pb.pack), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        raw = os.pread(fd, ENTRY_HEADER.size, pb.offset - ENTRY_HEADER.size)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if len(raw) != ENTRY_HEADER.size or pb.offset + pb.length > size:
        return False
    magic, got, length = ENTRY_HEADER.unpack(raw)
    return magic == ENTRY_MAGIC and got == bid and length == pb.length


def _still_named(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read(fd: int) -> dict[str, Any] | None:
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            body = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def unlink(path: Path) -> None:
    """Remove a file that may be gone already."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
