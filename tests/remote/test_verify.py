"""remote/verify.py: fetched blocks checked in bulk against their ids, deltas included."""

from __future__ import annotations

import pytest

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.remote.layout import IdxEntry, RemoteCorruptionError
from mergestore.remote.verify import check_block, check_blocks


def _entries(store: Store) -> tuple[list[IdxEntry], list[bytes]]:
    repo = store.repo
    entries, payloads = [], []
    for bid, loc in sorted(repo.iter_blocks(), key=lambda kv: (kv[1].pack, kv[1].offset)):
        _loc, spec, payload = repo.read_stored(bid)
        entries.append(IdxEntry(bid, loc.offset, loc.length, loc.raw_len, spec, loc.ref))
        payloads.append(bytes(payload))
    return entries, payloads


def test_stored_blocks_verify_and_a_flipped_byte_is_named(tiny_family, store: Store) -> None:
    commit_family(store, tiny_family)
    entries, payloads = _entries(store)
    deltas = [i for i, e in enumerate(entries) if e.ref is not None]
    assert deltas and len(deltas) < len(entries)  # both kinds, in one call
    # sizes vary, so the reused per-thread buffers are grown and cut on the way
    assert len({e.raw_len for e in entries}) > 1
    check_blocks(store.repo, "origin", "p" * 64, entries, payloads)
    for i in (deltas[0], next(i for i, e in enumerate(entries) if e.ref is None)):
        bad = bytearray(payloads[i])
        bad[len(bad) // 2] ^= 0x40
        with pytest.raises(RemoteCorruptionError, match=entries[i].block.hex()[:12]):
            check_block(store.repo, "origin", "p" * 64, entries[i], bytes(bad))
    # a payload whose id is another block's
    e = entries[deltas[0]]
    other = IdxEntry(entries[0].block, e.offset, e.length, e.raw_len, e.spec, e.ref)
    with pytest.raises(RemoteCorruptionError, match="does not match its id"):
        check_block(store.repo, "origin", "p" * 64, other, payloads[deltas[0]])
