"""remote/download.py: how a full fetch batches blocks (a delta beside its reference)."""

from __future__ import annotations

import os

from mergestore.remote.download import plan_batches
from mergestore.remote.layout import IdxEntry


def _bid() -> bytes:
    return os.urandom(32)


def _need() -> tuple[dict[bytes, tuple[str, IdxEntry]], set[bytes]]:
    """Two remote packs: 'a' of 20 whole blocks, 'b' of deltas against them (in reverse
    order), plus 3 deltas against blocks the store already has."""
    need: dict[bytes, tuple[str, IdxEntry]] = {}
    wholes = []
    for i in range(20):
        e = IdxEntry(_bid(), 8 + i * 1000, 900, 2000, "zstd:3", None)
        need[e.block] = ("a" * 64, e)
        wholes.append(e)
    for i, w in enumerate(reversed(wholes)):
        e = IdxEntry(_bid(), 8 + i * 500, 400, 2000, "xor|zstd:3", w.block)
        need[e.block] = ("b" * 64, e)
    local = set()
    for i in range(3):
        ref = _bid()
        local.add(ref)
        e = IdxEntry(_bid(), 20_000 + i * 500, 400, 2000, "xor|zstd:3", ref)
        need[e.block] = ("b" * 64, e)
    return need, local


def test_each_delta_is_batched_with_its_reference_and_every_block_once() -> None:
    need, local = _need()
    batches = plan_batches(need, target=4000)
    seen = [e.block for b in batches for _p, es in b.segments for e in es]
    assert sorted(seen) == sorted(need) and len(seen) == len(set(seen))
    for b in batches:
        ids = {e.block for _p, es in b.segments for e in es}
        for _p, es in b.segments:
            assert [e.offset for e in es] == sorted(e.offset for e in es)  # runs per pack
            for e in es:
                assert e.ref is None or e.ref in ids or e.ref in local
        assert b.stored_bytes < 4000 + 1300  # the target, overshot by one block and its delta
    # deltas against local blocks come last, in batches of their own
    last = batches[-1]
    assert {e.ref for _p, es in last.segments for e in es} <= local
    assert len(batches) > 3


def test_raw_bytes_of_a_batch_are_bounded() -> None:
    """Whole blocks that compress well: a batch stops at 2 x target raw bytes."""
    need = {}
    for i in range(10):
        e = IdxEntry(_bid(), 8 + i * 100, 50, 3000, "zstd:3", None)
        need[e.block] = ("a" * 64, e)
    batches = plan_batches(need, target=4000)
    assert [sum(e.raw_len for _p, es in b.segments for e in es) for b in batches] == [
        9000,
        9000,
        9000,
        3000,
    ]
