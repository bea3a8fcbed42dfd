"""The block reader: pack order, coalesced spans, verified bytes, delta references, damage."""

from __future__ import annotations

import os

import pytest

from mergestore.api import Store
from mergestore.errors import CorruptionError
from mergestore.store.index import BlockLocation
from mergestore.store.packs import ENTRY_HEADER, ReadMeter, pack_path
from mergestore.store.reader import plan_spans


def _loc(pack: int, offset: int, length: int) -> BlockLocation:
    return BlockLocation(pack, offset, length, length, 1)


def test_spans_sort_and_coalesce_within_gap_and_size() -> None:
    items = [
        (b"c", _loc(1, 2000, 100)),
        (b"a", _loc(1, 100, 100)),
        (b"b", _loc(1, 240, 100)),  # 40-byte hole after a: joined
        (b"d", _loc(2, 100, 100)),  # another pack: a new span
        (b"e", _loc(1, 5000, 100)),
    ]
    spans = plan_spans(items, max_gap=2000, max_span=1 << 20)
    assert [(s.pack, s.start, s.end) for s in spans] == [
        (1, 100, 2100),
        (1, 5000, 5100),
        (2, 100, 200),
    ]
    assert [b for b, _ in spans[0].blocks] == [b"a", b"b", b"c"]
    # a hole larger than max_gap, or a span past max_span, starts a new read
    assert len(plan_spans(items, max_gap=40, max_span=1 << 20)) == 4
    assert len(plan_spans(items[1:3], max_gap=1000, max_span=150)) == 2
    # with headers each range starts at its entry header
    hs = plan_spans([(b"a", _loc(1, 100, 10))], headers=True)
    assert hs[0].start == 100 - ENTRY_HEADER.size


def test_spans_end_at_max_raw_decoded_bytes() -> None:
    # Adjacent well-compressed blocks: 100 stored bytes each, 1000 decoded. One worker decodes
    # a span, so a span holds at most max_raw decoded bytes (a lone larger block still reads).
    items = [(bytes([i]), BlockLocation(1, 100 + 100 * i, 100, 1000, 1)) for i in range(10)]
    spans = plan_spans(items, max_gap=0, max_span=1 << 20, max_raw=3000)
    assert [len(s.blocks) for s in spans] == [3, 3, 3, 1]
    assert [(s.start, s.end) for s in spans][:2] == [(100, 400), (400, 700)]
    assert len(plan_spans(items[:1], max_raw=10)) == 1


def _all_blocks(store: Store, ref: str) -> list[bytes]:
    from mergestore.checkout import _file_parts

    repo = store.repo
    tree = repo.get_tree(repo.get_commit(store.resolve(ref)).tree)
    ids: list[bytes] = []
    for e in tree.entries:
        ids.extend(_file_parts(repo, repo.get_file(e.object))[1])
    return ids


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    store.commit(tiny_family.base, message="base", branch="main")
    for name, path in tiny_family.experts.items():
        store.commit(path, message=name, branch=name, base="main")
    return store


def test_reads_every_block_verified_in_pack_order(family_store: Store) -> None:
    repo = family_store.repo
    ids = _all_blocks(family_store, "dense_small") + _all_blocks(family_store, "lowrank_attn")
    locs = repo.block_locations(ids)
    assert any(loc.ref is not None for loc in locs.values()), "the family has XOR-delta blocks"
    meter = ReadMeter()
    got = list(repo.reader().read(ids, meter, workers=2))
    assert len(got) == len(set(ids))  # each distinct block once
    for bid, raw in got:
        assert raw == repo.read_block(bid)
    plain = [(locs[b].pack, locs[b].offset) for b, _ in got if locs[b].ref is None]
    assert plain == sorted(plain)  # blocks without a reference in the batch: pack order
    counted = sum(locs[b].length for b in set(ids))
    refs_read = {locs[b].ref for b in set(ids)} - {None} - set(ids)
    counted += sum(repo.block_location(r).length for r in refs_read)
    assert meter.bytes_read == counted


def test_decodes_into_buffers_and_takes_references_given(family_store: Store) -> None:
    import numpy as np

    repo = family_store.repo
    ids = [b for b in _all_blocks(family_store, "lowrank_attn") if repo.block_location(b).ref]
    assert ids
    locs = repo.block_locations(ids)
    refs = {locs[b].ref: repo.read_block(locs[b].ref) for b in ids}
    bufs = {b: np.empty(locs[b].raw_len, dtype=np.uint8) for b in ids}
    meter = ReadMeter()
    for bid, raw in repo.reader().read(ids, meter, references=refs, into=bufs.get):
        assert bytes(raw) == bufs[bid].tobytes() == repo.read_block(bid)
    # the references were in hand: only the blocks themselves were read
    assert meter.bytes_read == sum(locs[b].length for b in set(ids))


def test_damage_is_reported_per_block(family_store: Store) -> None:
    repo = family_store.repo
    ids = _all_blocks(family_store, "main")
    locs = repo.block_locations(ids)
    victim = max(ids, key=lambda b: locs[b].length)
    loc = locs[victim]
    path = pack_path(repo.pack_dir, loc.pack)
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        byte = f.read(1)
        f.seek(loc.offset + loc.length // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    results = dict(repo.reader().read(ids, errors=True))
    bad = [b for b, r in results.items() if isinstance(r, CorruptionError)]
    users = {b for b in ids if locs[b].ref == victim}
    assert victim in bad and set(bad) <= {victim} | users
    assert all(results[b] == repo.read_block(b) for b in results if b not in bad)
    with pytest.raises(CorruptionError):
        list(repo.reader().read(ids))


def test_a_damaged_entry_header_is_caught_when_asked(family_store: Store) -> None:
    repo = family_store.repo
    ids = _all_blocks(family_store, "main")
    loc = repo.block_location(ids[0])
    fd = os.open(pack_path(repo.pack_dir, loc.pack), os.O_RDWR)
    try:
        os.pwrite(fd, b"XXXX", loc.offset - ENTRY_HEADER.size)  # the entry magic
    finally:
        os.close(fd)
    ok = dict(repo.reader().read(ids[:1]))
    assert ok[ids[0]] == repo.read_block(ids[0])  # the payload itself is intact
    res = dict(repo.reader().read(ids[:1], check_headers=True, errors=True))
    assert isinstance(res[ids[0]], CorruptionError)
    assert "entry at its offset is not this block" in str(res[ids[0]])


def test_missing_block_is_an_error(family_store: Store) -> None:
    with pytest.raises(CorruptionError, match="missing"):
        list(family_store.repo.reader().read([b"\x01" * 32]))


def test_a_budgeted_merge_reads_from_packs_only_what_it_counts(
    family_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read a budgeted merge makes covers the blocks it counts and the entry headers
    between them: never a block it skips (and the kernel's read-ahead is off on pack fds)."""
    from mergestore.store.reader import BlockReader, Span

    spans: list[Span] = []
    real = BlockReader._read_span

    def spy(self: BlockReader, span: Span, *a, **k):  # type: ignore[no-untyped-def]
        spans.append(span)
        return real(self, span, *a, **k)

    monkeypatch.setattr(BlockReader, "_read_span", spy)
    res = family_store.merge(
        method="task_arithmetic",
        base="main",
        models=["dense_small", "frozen", "lowrank_attn"],
        weights=[0.5, 0.3, 0.2],
        budget="25%",
        branch="b25",
    )
    run = res.run
    counted = run["expert_bytes_read"] + run["base_bytes_read"] + run["analyze_bytes_read"]
    assert counted < run["expert_bytes_full"] + run["base_bytes_read"]  # the budget skipped some
    assert sum(loc.length for s in spans for _b, loc in s.blocks) == counted
    repo = family_store.repo
    by_pack: dict[int, list[tuple[int, int]]] = {}
    for _b, loc in repo.iter_blocks():
        by_pack.setdefault(loc.pack, []).append((loc.offset, loc.length))
    for s in spans:
        inside = {o for o, n in by_pack[s.pack] if s.start <= o and o + n <= s.end}
        assert inside == {loc.offset for _b, loc in s.blocks}, "a read covers a skipped block"
        gaps = (s.end - s.start) - sum(loc.length for _b, loc in s.blocks)
        assert gaps == ENTRY_HEADER.size * (len(s.blocks) - 1)
