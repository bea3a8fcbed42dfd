"""Full fetches and clones: the blocks a store lacks, downloaded, verified and published.

The blocks are planned into batches of about `fetch_chunk()` stored bytes. A batch is a run
of whole blocks (no delta) from one remote pack together with every wanted delta whose
reference is among them, from whatever pack it sits in; deltas against blocks the store
already has (an incremental fetch) come in batches of their own at the end. So a delta is
checked against its reference's raw bytes as the same batch's check just decoded them, and
no block is decoded twice (before, all whole blocks came first, and each delta then decoded
its reference again from the store: a third of a clone's check time).

The batches flow through three overlapping stages: the next one downloads (one ranged GET
per run of neighbouring blocks) while this one is checked on every core, and the previous one
is written to local packs and published in one transaction, after its check. A killed fetch
keeps every batch it published.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from mergestore.fast_dataclass import dataclass
from mergestore.remote.client import ObjectClient
from mergestore.remote.layout import IdxEntry, RemoteCorruptionError
from mergestore.remote.packs import fetch_chunk, read_stored
from mergestore.remote.state import RemoteState
from mergestore.remote.verify import Fetched, RawArena, check_fetched
from mergestore.store import faults
from mergestore.store.codecs import Encoded
from mergestore.store.repo import Repository

Advance = Callable[[int], None]
Where = tuple[str, IdxEntry]  # (remote pack, index entry)


@dataclass(frozen=True)
class Batch:
    """Blocks fetched, checked and published together: runs of entries per remote pack."""

    segments: tuple[tuple[str, tuple[IdxEntry, ...]], ...]

    @property
    def stored_bytes(self) -> int:
        return sum(e.length for _p, es in self.segments for e in es)


def download_blocks(
    client: ObjectClient,
    repo: Repository,
    state: RemoteState,
    wanted: Iterable[bytes],
    advance: Advance | None = None,
) -> tuple[int, int]:
    """Fetch these blocks (and their delta references the store lacks) into local packs,
    each verified by its id first; published a batch at a time. Returns (blocks, bytes)."""
    batches = plan_batches(_needed(repo, state, wanted), fetch_chunk())
    if not batches:
        return 0, 0
    n = nbytes = 0
    arena = RawArena()
    with (
        ThreadPoolExecutor(1, thread_name_prefix="mergestore-fetch") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="mergestore-fetch-write") as writer,
    ):
        ahead = pool.submit(_get_batch, client, batches[0])
        pending: Future[int] | None = None
        pending_ids: set[bytes] = set()
        for i in range(len(batches)):
            items = ahead.result()
            if i + 1 < len(batches):
                ahead = pool.submit(_get_batch, client, batches[i + 1])
            if pending is not None and any(e.ref in pending_ids for _p, e, _b in items):
                nbytes += pending.result()  # a reference still being written: wait for it
                pending = None
            checks = check_fetched(repo, state.name, items, arena)
            if pending is not None:
                nbytes += pending.result()
            pending = writer.submit(_publish_batch, repo, items, checks, advance)
            pending_ids = {e.block for _p, e, _b in items}
            n += len(items)
        assert pending is not None
        nbytes += pending.result()
    return n, nbytes


def _needed(repo: Repository, state: RemoteState, wanted: Iterable[bytes]) -> dict[bytes, Where]:
    """Where each wanted block the store lacks sits on the remote, with the delta references
    those need and the store lacks."""
    need: dict[bytes, Where] = {}
    for bid in wanted:
        if bid in need or repo.has_block(bid):
            continue
        where = state.blocks.get(bid)
        if where is None:
            raise RemoteCorruptionError(
                f"remote {state.name}: block {bid.hex()[:12]} is used but no pack holds it"
            )
        need[bid] = where
        ref = where[1].ref
        if ref is not None and ref not in need and not repo.has_block(ref):
            ref_where = state.blocks.get(ref)
            if ref_where is None:
                raise RemoteCorruptionError(
                    f"remote {state.name}: reference block {ref.hex()[:12]} is missing"
                )
            need[ref] = ref_where
    return need


def plan_batches(need: dict[bytes, Where], target: int) -> list[Batch]:
    """Batches of about `target` stored bytes: runs of whole blocks in remote pack order, each
    with the deltas that refer to them; then the deltas whose reference is elsewhere.

    A batch's whole blocks hold at most 2 x `target` raw bytes (their decoded copies are kept
    while the batch's deltas are checked).
    """
    deltas_of: dict[bytes, list[Where]] = defaultdict(list)
    wholes: list[Where] = []
    loose: list[Where] = []
    for pack, e in need.values():
        if e.ref is None:
            wholes.append((pack, e))
        elif (ref := need.get(e.ref)) is not None and ref[1].ref is None:
            deltas_of[e.ref].append((pack, e))
        else:
            loose.append((pack, e))  # its reference is local (or a delta itself)
    wholes.sort(key=lambda w: (w[0], w[1].offset))
    out: list[Batch] = []
    cur: list[Where] = []
    stored = raw = 0
    for w in wholes:
        members = [w, *deltas_of.get(w[1].block, ())]
        cur += members
        stored += sum(m[1].length for m in members)
        raw += w[1].raw_len
        if stored >= target or raw >= 2 * target:
            out.append(_batch(cur))
            cur, stored = [], 0
            raw = 0
    if cur:
        out.append(_batch(cur))
    loose.sort(key=lambda w: (w[0], w[1].offset))
    out += [_batch(part) for part in _runs(loose, target)]
    return out


def _batch(members: list[Where]) -> Batch:
    by_pack: dict[str, list[IdxEntry]] = defaultdict(list)
    for pack, e in members:
        by_pack[pack].append(e)
    runs = sorted(by_pack.items())
    return Batch(tuple((pack, tuple(sorted(es, key=lambda e: e.offset))) for pack, es in runs))


def _runs(members: list[Where], target: int) -> Iterator[list[Where]]:
    cur: list[Where] = []
    size = 0
    for w in members:
        cur.append(w)
        size += w[1].length
        if size >= target:
            yield cur
            cur, size = [], 0
    if cur:
        yield cur


def _get_batch(client: ObjectClient, batch: Batch) -> list[Fetched]:
    out: list[Fetched] = []
    for pack, entries in batch.segments:
        bufs = read_stored(client, pack, [(e.offset, e.length) for e in entries])
        out += [(pack, e, b) for e, b in zip(entries, bufs, strict=True)]
    return out


def _publish_batch(
    repo: Repository, items: list[Fetched], checks: dict[bytes, int], advance: Advance | None
) -> int:
    """Write checked payloads as they were stored, with the raw checks computed from the
    bytes that matched their ids, and publish them in one transaction."""
    with repo.writer() as w:
        for _p, e, payload in items:
            w.add_encoded(e.block, e.raw_len, Encoded(e.spec, payload, e.ref), checks[e.block])
        w.publish()
    got = sum(e.length for _p, e, _b in items)
    if advance:
        advance(got)
    faults.kill_point("remote-after-chunk")
    return got
