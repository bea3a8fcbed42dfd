"""merge/turn_writes.py: the folder's writes from several threads, one writer at a time."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from mergestore.merge.turn_writes import TurnWrites


@pytest.fixture
def fd(tmp_path: Path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 64)
    yield fd
    os.close(fd)


def _content(fd: int) -> bytes:
    return os.pread(fd, 64, 0)


def _left_while_busy(w: TurnWrites, fd: int, data: bytes | bytearray, at: int) -> None:
    """write() from another thread while the turn is taken (the blocks are left waiting);
    the turn is free again afterwards."""
    w._turn.acquire()
    t = threading.Thread(target=w.write, args=([(fd, memoryview(data), at)],))
    t.start()
    t.join()
    w._turn.release()


def test_a_free_writer_writes_at_once(fd: int) -> None:
    w = TurnWrites()
    w.write([(fd, memoryview(b"abcd"), 8)])
    assert _content(fd)[8:12] == b"abcd"
    assert w.deferred == 0


def test_blocks_left_while_another_writes_are_written_by_it(fd: int) -> None:
    """A thread that finds the turn taken returns at once; its bytes are written by the thread
    writing (here: the flush), not lost and not written twice over other bytes."""
    w = TurnWrites()
    w._turn.acquire()  # another thread is writing
    done = threading.Event()

    def other() -> None:
        w.write([(fd, memoryview(b"XY"), 0), (fd, memoryview(b"Z"), 40)])
        done.set()

    t = threading.Thread(target=other)
    t.start()
    assert done.wait(5), "a thread waited for the turn with room to leave its blocks"
    t.join()
    assert w.deferred == 2
    assert _content(fd) == bytes(64)  # not written yet: the writer has them
    w._turn.release()
    w.write([(fd, memoryview(b"mine"), 20)])  # the next writer writes its own, then the rest
    data = _content(fd)
    assert data[0:2] == b"XY" and data[40:41] == b"Z" and data[20:24] == b"mine"


def test_flush_writes_what_waits(fd: int) -> None:
    w = TurnWrites()
    _left_while_busy(w, fd, b"late", 4)
    assert _content(fd)[4:8] == bytes(4)
    w.flush()
    assert _content(fd)[4:8] == b"late"


def test_past_the_limit_a_thread_waits_for_its_turn(fd: int) -> None:
    """The bytes left waiting are bounded (their copies take memory until written)."""
    w = TurnWrites(limit=4)
    w._turn.acquire()
    small = threading.Thread(target=w.write, args=([(fd, memoryview(b"ab"), 0)],))
    small.start()
    small.join()
    assert w.deferred == 1
    big_done = threading.Event()

    def big() -> None:
        w.write([(fd, memoryview(b"cde"), 10)])  # 2 waiting + 3 > 4: waits
        big_done.set()

    t = threading.Thread(target=big)
    t.start()
    assert not big_done.wait(0.3)
    w._turn.release()
    assert big_done.wait(5)
    t.join()
    data = _content(fd)
    assert data[0:2] == b"ab" and data[10:13] == b"cde"


def test_drop_forgets_waiting_blocks(fd: int) -> None:
    w = TurnWrites()
    _left_while_busy(w, fd, b"gone", 0)
    w.drop()
    w.flush()
    assert _content(fd) == bytes(64)


def test_a_block_left_waiting_is_a_copy(fd: int) -> None:
    """The caller may reuse its buffer once write() returns."""
    w = TurnWrites()
    buf = bytearray(b"good")
    _left_while_busy(w, fd, buf, 0)
    buf[:] = b"bad!"
    w.flush()
    assert _content(fd)[:4] == b"good"
