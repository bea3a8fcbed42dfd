"""Reading many blocks at once, in the order that is cheapest for the disk.

`BlockReader.read(ids)` is the one interface the executor, checkout, diff and fsck read
through: "read these blocks, in whatever order is cheapest, give me verified bytes". Locally:

- the blocks are sorted by (pack, offset) and neighbours are coalesced into one pread each (a
  hole of at most `max_gap` bytes is read through; a span holds at most `max_span` bytes), so a
  cold page cache sees a few large forward reads instead of one small read per block;
- the kernel is told which ranges come next (POSIX_FADV_WILLNEED on exactly those ranges, a few
  spans ahead), and pack fds are opened with POSIX_FADV_RANDOM (packs.py), so the disk reads the
  planned bytes and nothing else: no read-ahead into blocks a budgeted merge skips;
- every block is decoded and checked as `Repository.read_block` does: against the check its
  index entry holds (blocks.raw_check, xxh3-64 seeded by the id), or against its blake3 id
  when it has none or the reader was made with `full=True` (fsck --full);
- the meter counts each block's stored payload, as `Repository.read_block` does; what a span
  reads besides (entry headers, holes of at most `max_gap` bytes) is not counted, so callers
  that must not read what they skip (budgeted merges) pass `max_gap=HEADERS_ONLY_GAP`: only
  the 40-byte entry headers between adjacent payloads are then read besides them.

Delta-coded blocks need their reference's raw bytes: the caller may hand them in; the others
are read first, in pack order too (a reference is never itself a delta). Requests are taken in
batches of about `batch_bytes`, in the order given, so memory stays bounded for a whole commit
while the blocks of one batch are read in pack order. A remote layer can implement the same
interface with ranged GETs over the same spans.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from mergestore.errors import CorruptionError
from mergestore.fast_dataclass import dataclass
from mergestore.store.blocks import block_id
from mergestore.store.index import BlockLocation
from mergestore.store.packs import ENTRY_HEADER, ENTRY_MAGIC, PackReader, ReadMeter
from mergestore.threads import ordered_map

if TYPE_CHECKING:
    import numpy as np


MAX_GAP = 64 << 10  # read through holes up to this size rather than start a new read
# max_gap that reads nothing but the blocks asked for and the entry headers between adjacent
# ones: for callers that must not read what they skip (budgeted merges)
HEADERS_ONLY_GAP = ENTRY_HEADER.size
MAX_SPAN = 8 << 20  # bytes in one read at most
# Decoded bytes in one span at most: one worker decodes a whole span, and a span of
# well-compressed (delta-coded) blocks holds many more raw bytes than its stored size (one of
# bench-384m's lm_head inputs: 63 blocks, 8 MB stored, 65 MB raw, decoded alone while the
# other worker waited).
MAX_SPAN_RAW = 8 << 20
AHEAD_SPANS = 4  # spans announced to the kernel ahead of the one being read
BATCH_BYTES = 64 << 20  # raw bytes of requested blocks planned together

Meter = ReadMeter | Mapping[bytes, ReadMeter] | None
Into = Callable[[bytes], "np.ndarray | None"]
Then = Callable[[bytes, "bytes | memoryview"], object]


@dataclass(frozen=True)
class Span:
    """One read: [start, end) of a pack, covering the payloads of `blocks` (in offset order)."""

    pack: int
    start: int
    end: int
    blocks: tuple[tuple[bytes, BlockLocation], ...]


def plan_spans(
    items: Iterable[tuple[bytes, BlockLocation]],
    *,
    max_gap: int = MAX_GAP,
    max_span: int = MAX_SPAN,
    headers: bool = False,
    max_raw: int = MAX_SPAN_RAW,
) -> list[Span]:
    """Sort blocks by (pack, offset) and coalesce neighbours into spans of at most `max_span`
    stored and `max_raw` decoded bytes (a single block is a span whatever its size).

    With `headers`, each block's range starts at its pack entry header (fsck checks it)."""
    hdr = ENTRY_HEADER.size if headers else 0
    ordered = sorted(items, key=lambda it: (it[1].pack, it[1].offset))
    spans: list[Span] = []
    pack = start = end = raw = -1
    cur: list[tuple[bytes, BlockLocation]] = []
    for bid, loc in ordered:
        b0 = loc.offset - hdr
        b1 = loc.offset + loc.length
        if (
            cur
            and loc.pack == pack
            and 0 <= b0 - end <= max_gap
            and b1 - start <= max_span
            and raw + loc.raw_len <= max_raw
        ):
            cur.append((bid, loc))
            end = b1
            raw += loc.raw_len
            continue
        if cur:
            spans.append(Span(pack, start, end, tuple(cur)))
        pack, start, end, raw, cur = loc.pack, b0, b1, loc.raw_len, [(bid, loc)]
    if cur:
        spans.append(Span(pack, start, end, tuple(cur)))
    return spans


class _BlockSize(Protocol):
    block_size: int


class BlockStore(Protocol):
    """What a BlockReader reads through (store.repo.Repository is one)."""

    config: _BlockSize
    packs: PackReader

    def block_locations(self, ids: Iterable[bytes]) -> dict[bytes, BlockLocation]: ...

    def read_span(self, pack: int, start: int, length: int) -> bytes: ...

    def read_block(
        self,
        bid: bytes,
        meter: ReadMeter | None = None,
        *,
        reference: bytes | memoryview | None = None,
        location: BlockLocation | None = None,
        view: bool = False,
    ) -> bytes: ...

    def read_block_into(
        self,
        bid: bytes,
        out: np.ndarray,
        meter: ReadMeter | None = None,
        *,
        reference: bytes | memoryview | None = None,
        location: BlockLocation | None = None,
    ) -> None: ...

    def decode_verified(
        self,
        bid: bytes,
        loc: BlockLocation,
        payload: bytes | memoryview,
        reference: bytes | memoryview | None,
        *,
        out: np.ndarray | None = None,
        view: bool = False,
        full: bool = False,
    ) -> bytes | memoryview: ...


class BlockReader:
    """Verified block reads in pack order (see the module docstring)."""

    def __init__(
        self,
        repo: BlockStore,
        *,
        max_gap: int = MAX_GAP,
        max_span: int = MAX_SPAN,
        batch_bytes: int = BATCH_BYTES,
        full: bool = False,
        announce: bool = True,
    ) -> None:
        self.repo = repo
        self.max_gap = max_gap
        self.max_span = max_span
        self.batch_bytes = batch_bytes
        self.full = full  # check every block's blake3, not the check in its entry (fsck --full)
        # Announce spans to the kernel just ahead of reading them (posix_fadvise WILLNEED:
        # ~12 us per MiB of cached pages on Zen 1); False where the caller announced them.
        self.announce = announce

    def read(
        self,
        ids: Iterable[bytes],
        meter: Meter = None,
        *,
        locations: Mapping[bytes, BlockLocation] | None = None,
        references: Mapping[bytes, bytes | memoryview] | None = None,
        into: Into | None = None,
        view: bool = False,
        workers: int = 1,
        check_headers: bool = False,
        errors: bool = False,
        then: Then | None = None,
    ) -> Iterator[tuple[bytes, bytes | memoryview | CorruptionError]]:
        """(id, raw bytes) for every id, in pack order within each batch of about
        `batch_bytes` (an id repeated within a batch is read once). The ids are pulled one
        batch ahead of the blocks yielded.

        `meter`: one meter, or one per id. `locations`: index entries the caller looked up.
        `references`: raw bytes of delta references the caller holds. `into(id)`: an array to
        decode that block into (its raw bytes are then a view of it), or None. `view`: raw
        bytes may be read-only views. `check_headers`: also check each pack entry header.
        `errors`: yield a damaged block's CorruptionError instead of raising it.
        `then(id, raw)`: run on the worker thread for each good block, before it is yielded
        (checkout writes the block there, so writing runs on every worker).
        A missing block raises CorruptionError (or is yielded with one, with `errors`).
        """
        # the caller's dict itself: entries it adds while the ids are pulled are seen here
        locations = locations if isinstance(locations, dict) else dict(locations or {})
        references = references or {}
        batches = self._batches(ids, locations)
        batch = next(batches, None)
        while batch is not None:
            # One batch ahead: its first spans are announced to the kernel now, so the disk
            # does not wait at a batch boundary (the ids are pulled one batch early).
            nxt = next(batches, None)
            if nxt is not None and self.announce:
                self._announce_start(nxt, locations)
            yield from self._batch(
                batch, meter, locations, references, into, view, workers, check_headers,
                errors, then,
            )  # fmt: skip
            batch = nxt

    def _batches(
        self, ids: Iterable[bytes], locations: Mapping[bytes, BlockLocation]
    ) -> Iterator[list[bytes]]:
        """Ids in groups of about `batch_bytes` raw bytes, in the order given, each distinct
        within its group (an id given again in a later group is read again)."""
        batch: list[bytes] = []
        seen: set[bytes] = set()
        size = 0
        for bid in ids:
            if bid in seen:
                continue
            seen.add(bid)
            batch.append(bid)
            loc = locations.get(bid)
            size += loc.raw_len if loc is not None else self.repo.config.block_size
            if size >= self.batch_bytes:
                yield batch
                batch, seen, size = [], set(), 0
        if batch:
            yield batch

    def _announce_start(self, batch: list[bytes], locations: dict[bytes, BlockLocation]) -> None:
        """Look a batch's blocks up (kept in `locations`) and announce its first spans."""
        unknown = [b for b in batch if b not in locations]
        if unknown:
            locations.update(self.repo.block_locations(unknown))
        known = {b: locations[b] for b in batch if b in locations}
        spans = plan_spans(known.items(), max_gap=self.max_gap, max_span=self.max_span)
        for s in spans[:AHEAD_SPANS]:
            self.repo.packs.advise(s.pack, s.start, s.end - s.start)

    def advise(self, locations: Mapping[bytes, BlockLocation]) -> None:
        """Tell the kernel that these blocks will be read soon (exactly their spans), so the
        disk fetches them while earlier ones are decoded; a no-op for cached pages."""
        for s in plan_spans(locations.items(), max_gap=self.max_gap, max_span=self.max_span):
            self.repo.packs.advise(s.pack, s.start, s.end - s.start)

    # -- one batch ----------------------------------------------------------------------------

    def _batch(
        self,
        ids: list[bytes],
        meter: Meter,
        given: Mapping[bytes, BlockLocation],
        references: Mapping[bytes, bytes | memoryview],
        into: Into | None,
        view: bool,
        workers: int,
        check_headers: bool,
        errors: bool,
        then: Then | None,
    ) -> Iterator[tuple[bytes, bytes | memoryview | CorruptionError]]:
        unknown = [b for b in ids if b not in given]
        locs = {b: given[b] for b in ids if b in given}
        if unknown:
            locs.update(self.repo.block_locations(unknown))
        missing = [b for b in ids if b not in locs]
        for bid in missing:
            err = CorruptionError(f"block {bid.hex()[:12]} is missing from the store")
            if not errors:
                raise err
            yield bid, err
        # Delta references nobody holds: read first (they are never deltas themselves).
        need = {
            loc.ref
            for loc in locs.values()
            if loc.ref is not None and loc.ref not in references and loc.ref not in locs
        }
        refs: dict[bytes, bytes | memoryview | CorruptionError] = {}
        if need:
            ref_meter: Meter = meter
            if isinstance(meter, Mapping):  # a reference is counted on a block that needs it
                ref_meter = {loc.ref: meter[b] for b, loc in locs.items() if loc.ref in need}
            ref_locs = self.repo.block_locations(need)
            for bid in need - set(ref_locs):
                refs[bid] = CorruptionError(f"block {bid.hex()[:12]} is missing from the store")
            for bid, raw in self._spans(
                ref_locs, ref_meter, {}, None, False, workers, check_headers
            ):
                refs[bid] = raw
        # Then the blocks; those whose reference is among them wait for it.
        first = {b: loc for b, loc in locs.items() if loc.ref is None or loc.ref not in locs}
        second = {b: loc for b, loc in locs.items() if b not in first}
        wanted = {loc.ref for loc in second.values()}
        held: dict[bytes, bytes | memoryview | CorruptionError] = {}
        lookup = _Chain(references, refs, held)
        for group in (first, second):
            for bid, raw in self._spans(
                group, meter, lookup, into, view, workers, check_headers, then
            ):
                if bid in wanted:
                    held[bid] = raw
                if isinstance(raw, CorruptionError) and not errors:
                    raise raw
                yield bid, raw

    def _spans(
        self,
        locs: Mapping[bytes, BlockLocation],
        meter: Meter,
        references: Mapping[bytes, bytes | memoryview | CorruptionError],
        into: Into | None,
        view: bool,
        workers: int,
        check_headers: bool,
        then: Then | None = None,
    ) -> Iterator[tuple[bytes, bytes | memoryview | CorruptionError]]:
        if not locs:
            return
        spans = plan_spans(
            locs.items(), max_gap=self.max_gap, max_span=self.max_span, headers=check_headers
        )
        packs = self.repo.packs

        def announced() -> Iterator[Span]:
            for i, span in enumerate(spans):
                if i == 0:
                    for s in spans[:AHEAD_SPANS]:
                        packs.advise(s.pack, s.start, s.end - s.start)
                elif i + AHEAD_SPANS - 1 < len(spans):
                    s = spans[i + AHEAD_SPANS - 1]
                    packs.advise(s.pack, s.start, s.end - s.start)
                yield span

        def work(span: Span) -> list[tuple[bytes, bytes | memoryview | CorruptionError]]:
            out = self._read_span(span, meter, references, into, view, check_headers)
            if then is not None:
                for bid, raw in out:
                    if not isinstance(raw, CorruptionError):
                        then(bid, raw)
            return out

        todo = announced() if self.announce else iter(spans)
        for out in ordered_map(work, todo, workers=workers, window=max(2, 2 * workers)):
            yield from out

    def _read_span(
        self,
        span: Span,
        meter: Meter,
        references: Mapping[bytes, bytes | memoryview | CorruptionError],
        into: Into | None,
        view: bool,
        check_headers: bool,
    ) -> list[tuple[bytes, bytes | memoryview | CorruptionError]]:
        repo = self.repo
        hdr = ENTRY_HEADER.size if check_headers else 0
        try:
            # a local pack, or a remote one in a lazy clone (one ranged GET per span)
            data = memoryview(repo.read_span(span.pack, span.start, span.end - span.start))
        except (CorruptionError, OSError):
            return [
                self._one_by_one(b, loc, meter, references, into, view) for b, loc in span.blocks
            ]
        out: list[tuple[bytes, bytes | memoryview | CorruptionError]] = []
        for bid, loc in span.blocks:
            _count(meter, bid, loc.length)
            a = loc.offset - span.start
            try:
                if check_headers:
                    _check_header(bid, loc, data[a - hdr : a])
                out.append(
                    (bid, self._decode(bid, loc, data[a : a + loc.length], references, into, view))
                )
            except CorruptionError as e:
                out.append((bid, e))
        return out

    def _decode(
        self,
        bid: bytes,
        loc: BlockLocation,
        payload: memoryview,
        references: Mapping[bytes, bytes | memoryview | CorruptionError],
        into: Into | None,
        view: bool,
    ) -> bytes | memoryview:
        ref_raw = None
        if loc.ref is not None:
            ref_raw = references.get(loc.ref)
            if ref_raw is None:
                ref_raw = self.repo.read_block(loc.ref)
            elif isinstance(ref_raw, CorruptionError):
                raise CorruptionError(f"block {bid.hex()[:12]}: its delta reference: {ref_raw}")
        out = into(bid) if into is not None else None
        return self.repo.decode_verified(
            bid, loc, payload, ref_raw, out=out, view=view, full=self.full
        )

    def _one_by_one(
        self,
        bid: bytes,
        loc: BlockLocation,
        meter: Meter,
        references: Mapping[bytes, bytes | memoryview | CorruptionError],
        into: Into | None,
        view: bool,
    ) -> tuple[bytes, bytes | memoryview | CorruptionError]:
        """A span that could not be read whole (a concurrent gc moved its pack, or damage):
        each block through Repository.read_block, which looks a moved block up again."""
        one = meter.get(bid) if isinstance(meter, Mapping) else meter
        ref = references.get(loc.ref) if loc.ref is not None else None
        if isinstance(ref, CorruptionError):
            return bid, CorruptionError(f"block {bid.hex()[:12]}: its delta reference: {ref}")
        try:
            out = into(bid) if into is not None else None
            raw: bytes | memoryview
            if out is not None:
                self.repo.read_block_into(bid, out, one, reference=ref)
                raw = memoryview(out)
            else:
                raw = self.repo.read_block(bid, one, reference=ref, view=view)
            if self.full and block_id(raw) != bid:
                raise CorruptionError(f"block {bid.hex()[:12]} is corrupt (hash mismatch)")
            return bid, raw
        except (CorruptionError, OSError) as e:
            err = (
                e
                if isinstance(e, CorruptionError)
                else CorruptionError(f"block {bid.hex()[:12]}: {e}")
            )
            return bid, err


class _Chain(Mapping[bytes, "bytes | memoryview | CorruptionError"]):
    """Look a reference up in several mappings, first hit wins (no copying)."""

    def __init__(self, *maps: Mapping[bytes, bytes | memoryview | CorruptionError]) -> None:
        self._maps = maps

    def __getitem__(self, key: bytes) -> bytes | memoryview | CorruptionError:
        for m in self._maps:
            if key in m:
                return m[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[bytes]:
        seen: set[bytes] = set()
        for m in self._maps:
            for k in m:
                if k not in seen:
                    seen.add(k)
                    yield k

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _count(meter: Meter, bid: bytes, nbytes: int) -> None:
    if meter is None:
        return
    one = meter.get(bid) if isinstance(meter, Mapping) else meter
    if one is not None:
        one.add(nbytes)


def _check_header(bid: bytes, loc: BlockLocation, raw: memoryview | bytes) -> None:
    if loc.offset < ENTRY_HEADER.size:
        raise CorruptionError(
            f"block {bid.hex()[:12]}: offset {loc.offset} in pack {loc.pack} is inside a header"
        )
    magic, hid, length = ENTRY_HEADER.unpack(raw)
    if magic != ENTRY_MAGIC or hid != bid or length != loc.length:
        raise CorruptionError(
            f"block {bid.hex()[:12]}: the pack {loc.pack} entry at its offset is not this block"
        )
