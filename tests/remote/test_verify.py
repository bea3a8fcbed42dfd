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


def test_a_batch_decodes_each_block_once_and_names_a_bad_reference(
    tiny_family, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deltas checked in the batch that holds their references use the references' raw bytes
    from that batch's own check: every payload is decoded once, none read from the store."""
    from mergestore.remote import verify
    from mergestore.store import codecs

    commit_family(store, tiny_family)
    entries, payloads = _entries(store)
    items = [("p" * 64, e, p) for e, p in zip(entries, payloads, strict=True)]
    assert any(e.ref is not None for e in entries)
    calls: list[int] = []
    real = codecs.decode_block_into

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(codecs, "decode_block_into", counting)
    monkeypatch.setattr(store.repo, "read_block", lambda *_a: pytest.fail("read the store"))
    arena = verify.RawArena()
    verify.check_fetched(store.repo, "origin", items, arena)
    assert len(calls) == len(items)
    # a reference with a flipped byte is named (its deltas are never checked against it)
    i = next(i for i, e in enumerate(entries) if e.ref is None and any(
        d.ref == e.block for d in entries))  # fmt: skip
    bad = bytearray(payloads[i])
    bad[len(bad) // 2] ^= 0x40
    items[i] = ("p" * 64, entries[i], bytes(bad))
    with pytest.raises(RemoteCorruptionError, match=entries[i].block.hex()[:12]):
        verify.check_fetched(store.repo, "origin", items, arena)
