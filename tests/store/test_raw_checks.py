"""Checks on read: local reads compare each decoded block with the xxh3 check its index entry
holds; blake3 for entries without one (format 1, promised) and for fsck --full."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mergestore.api import Store
from mergestore.errors import CorruptionError
from mergestore.fsck import fsck
from mergestore.store import codecs
from mergestore.store.blocks import block_id, raw_check, raw_matches
from mergestore.store.index import BlockLocation, codec_id
from mergestore.store.packs import PackAppender
from mergestore.store.repo import FORMAT_VERSION


def _entries(store: Store) -> dict[bytes, BlockLocation]:
    return dict(store.repo.iter_blocks())


def _entries_at(path: Path) -> dict[bytes, BlockLocation]:
    with Store.open(path) as s:
        return _entries(s)


def _set_format(path: Path, fmt: int) -> None:
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "format": fmt}))


def _as_format_1(store: Store) -> Path:
    """Leave the store as a format-1 tool would have: entries without checks, "format": 1;
    closed. Returns its path."""
    for bid, loc in _entries(store).items():
        _put_entry(store, bid, dataclasses.replace(loc, check=None))
    path = store.repo.path
    _set_format(path, 1)
    store.close()
    return path


def _put_entry(store: Store, bid: bytes, loc: BlockLocation) -> None:
    idx = store.repo.index
    with idx.write() as txn:
        txn.put(bid, loc.encode(), db=idx.db("blocks"))


def _raw(store: Store, bid: bytes) -> bytes:
    return bytes(store.repo.read_block(bid))


def _folder_bytes(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_location_encoding_round_trips_with_and_without_check() -> None:
    ref = bytes(range(32))
    for loc in (
        BlockLocation(1, 40, 100, 4096, 3),
        BlockLocation(1, 40, 100, 4096, 3, ref),
        BlockLocation(1, 40, 100, 4096, 3, None, 0),
        BlockLocation(1, 40, 100, 4096, 3, ref, (1 << 64) - 1),
    ):
        assert BlockLocation.decode(loc.encode()) == loc
    with pytest.raises(CorruptionError):
        BlockLocation.decode(BlockLocation(1, 40, 100, 4096, 3).encode() + b"\0" * 5)


def test_raw_check_is_bound_to_the_block_id() -> None:
    raw = b"the same bytes" * 100
    a, b = block_id(raw), block_id(raw + b"!")
    assert raw_check(a, raw) != raw_check(b, raw)  # seeded by the id
    assert raw_matches(a, raw, len(raw), raw_check(a, raw))
    assert not raw_matches(a, raw, len(raw), raw_check(b, raw))
    assert not raw_matches(a, raw[:-1], len(raw), raw_check(a, raw))  # the length first
    assert raw_matches(a, raw, len(raw), None)  # no check: blake3
    assert not raw_matches(b, raw, len(raw), None)
    assert not raw_matches(b, raw, len(raw), raw_check(b, raw), full=True)  # full: blake3


def test_commit_and_merge_entries_hold_the_check_of_their_raw_bytes(
    tiny_family, store: Store, tmp_path: Path
) -> None:
    store.commit(tiny_family.base, message="base", branch="main")
    store.commit(tiny_family.experts["dense_small"], message="ds", branch="ds", base="main")
    store.merge(
        method="task_arithmetic", base="main", models=["ds"], weights=[0.5],
        branch="m", message="m", out=tmp_path / "m",
    )  # fmt: skip
    entries = _entries(store)
    assert any(loc.ref is not None for loc in entries.values())  # delta-coded blocks too
    for bid, loc in entries.items():
        assert loc.check == raw_check(bid, _raw(store, bid))
    assert json.loads((store.repo.path / "config.json").read_text())["format"] == FORMAT_VERSION


def test_an_entry_pointed_at_another_blocks_bytes_fails_its_check(
    tiny_family, store: Store
) -> None:
    store.commit(tiny_family.base, message="base", branch="main")
    entries = _entries(store)
    by_len: dict[int, list[bytes]] = {}
    for bid, loc in entries.items():
        if loc.ref is None:
            by_len.setdefault(loc.raw_len, []).append(bid)
    a, b = next(ids for ids in by_len.values() if len(ids) >= 2)[:2]
    # a's entry now names b's payload and b's check: the seed (a's id) makes it fail
    _put_entry(store, a, dataclasses.replace(entries[b]))
    with pytest.raises(CorruptionError, match="hash mismatch"):
        store.repo.read_block(a)
    got = dict(store.repo.reader().read([a], errors=True))
    assert isinstance(got[a], CorruptionError)


def test_fsck_full_checks_blake3_where_a_check_was_forged(tiny_family, store: Store) -> None:
    """Other bytes written under a block's id, with a check computed for them (a deliberate
    forgery of pack and index alike, which needs write access to the store) pass a read's
    check; fsck --full hashes every block with blake3 and finds them."""
    store.commit(tiny_family.base, message="base", branch="main")
    a = next(bid for bid, loc in _entries(store).items() if loc.ref is None)
    forged_raw = bytes(len(_raw(store, a)))
    enc = codecs.encode_block(forged_raw, dtype=None)
    appender = PackAppender(store.repo.pack_dir)
    pack, offset = appender.append(a, enc.buffers)
    appender.sync()
    appender.close()
    idx = store.repo.index
    with idx.write() as txn:
        cid = codec_id(txn, idx, enc.spec)
    loc = BlockLocation(pack, offset, enc.nbytes, len(forged_raw), cid, None)
    _put_entry(store, a, dataclasses.replace(loc, check=raw_check(a, forged_raw)))
    assert _raw(store, a) == forged_raw  # what the check model does not defend against
    assert fsck(store.repo).ok  # the index and the pack entries agree
    rep = fsck(store.repo, full=True)
    assert not rep.ok
    assert any(a.hex()[:12] in p.message and "hash mismatch" in p.message for p in rep.problems)


def test_a_format_1_store_reads_by_blake3_and_is_upgraded_by_its_next_write(
    tiny_family, store: Store, tmp_path: Path
) -> None:
    store.commit(tiny_family.base, message="base", branch="main")
    store.checkout("main", tmp_path / "before")
    path = _as_format_1(store)
    old = Store.open(path)
    try:
        assert old.repo.config.format == 1
        old.checkout("main", tmp_path / "after")
        assert _folder_bytes(tmp_path / "after") == _folder_bytes(tmp_path / "before")
        assert all(loc.check is None for loc in _entries(old).values())
        # a damaged payload is still found, by blake3
        bid, loc = max(_entries(old).items(), key=lambda kv: kv[1].length)
        payload = bytearray(old.repo.packs.read(loc.pack, loc.offset, loc.length))
        payload[len(payload) // 2] ^= 0x40
        with pytest.raises(CorruptionError):
            old.repo.decode_verified(bid, loc, bytes(payload), None)
        before = set(_entries(old))
        old.commit(tiny_family.experts["dense_small"], message="ds", branch="ds", base="main")
        assert old.repo.config.format == FORMAT_VERSION
        assert json.loads((path / "config.json").read_text())["format"] == FORMAT_VERSION
        new = {b: loc for b, loc in _entries(old).items() if b not in before}
        assert new and all(loc.check == raw_check(b, _raw(old, b)) for b, loc in new.items())
    finally:
        old.close()


def test_a_store_of_a_newer_format_is_refused_in_one_line(cli, store: Store) -> None:
    path = store.repo.path
    _set_format(path, FORMAT_VERSION + 1)
    store.close()
    r = cli("--store", path, "log", "--json")
    assert r.code != 0
    assert "newer than this tool" in r.json()["error"]


def test_repack_gives_format_1_entries_their_checks(cli, tiny_family, store: Store) -> None:
    store.commit(tiny_family.base, message="base", branch="main")
    store.commit(tiny_family.experts["dense_small"], message="ds", branch="ds", base="main")
    path = _as_format_1(store)
    before = cli("--store", path, "fsck")
    assert before.code == 0 and "have no read check" in before.out and "repack" in before.out
    unchecked = cli("--store", path, "fsck", "--json").json()["blocks_without_check"]
    assert unchecked == len(_entries_at(path))
    dry = cli("--store", path, "repack", "--dry-run", "--json")
    assert dry.code == 0 and dry.json()["checks_added"] > 0
    r = cli("--store", path, "repack")
    assert r.code == 0 and "added the read check to" in r.out
    with Store.open(path) as s:
        entries = _entries(s)
        assert s.repo.config.format == FORMAT_VERSION
        assert all(loc.check == raw_check(b, _raw(s, b)) for b, loc in entries.items())
        assert fsck(s.repo, full=True).ok
    again = cli("--store", path, "repack", "--json")
    assert again.code == 0 and again.json()["checks_added"] == 0
    after = cli("--store", path, "fsck", "--json")
    assert after.code == 0 and after.json()["blocks_without_check"] == 0
    assert "no read check" not in cli("--store", path, "fsck").out
