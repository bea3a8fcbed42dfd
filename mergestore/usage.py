"""`du`: logical versus stored bytes, by codec and by commit; dedup and compression ratios."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from mergestore.fast_dataclass import dataclass
from mergestore.fsck import index_size, pack_files_size
from mergestore.history import HasCommit, topo_order
from mergestore.store import codecs, merges
from mergestore.store.objects import BlobFile, TensorFile
from mergestore.store.repo import Repository


@dataclass
class CommitUsage:
    """One commit's logical size and the stored bytes it added."""

    id: str
    message: str
    logical_bytes: int
    new_stored_bytes: int  # stored bytes of blocks this commit introduced (oldest-first order)
    new_raw_bytes: int


def disk_usage(repo: Repository, entries: Sequence[HasCommit]) -> dict[str, object]:
    """`du` over `entries`: every commit some ref reaches (Store.disk_usage gathers them)."""
    by_codec: dict[str, dict[str, int]] = {}
    raw_total = stored_total = n = 0
    sizes: dict[bytes, tuple[int, int]] = {}
    for bid, loc in repo.iter_blocks():
        n += 1
        raw_total += loc.raw_len
        stored_total += loc.length
        sizes[bid] = (loc.raw_len, loc.length)
        name = "+".join(codecs.spec_codec_names(repo.codec_spec(loc.codec)))
        slot = by_codec.setdefault(name, {"blocks": 0, "raw_bytes": 0, "stored_bytes": 0})
        slot["blocks"] += 1
        slot["raw_bytes"] += loc.raw_len
        slot["stored_bytes"] += loc.length
    seen: set[bytes] = set()
    per_commit = []
    merge_rows: list[tuple[HasCommit, int, int]] = []
    logical_total = 0
    for e in reversed(topo_order(entries)):
        tid = merges.tree_id(repo, e.commit)  # None: a lazy merge not computed yet
        logical = sum(x.size for x in repo.get_tree(tid).entries) if tid else 0
        logical_total += logical
        new_raw = new_stored = 0
        for b in iter_commit_blocks(repo, e.id):
            if b not in seen:
                seen.add(b)
                r, s = sizes.get(b, (0, 0))
                new_raw += r
                new_stored += s
        if e.commit.plan is not None:
            merge_rows.append((e, new_raw, new_stored))
        per_commit.append(
            CommitUsage(
                e.id.hex(), (e.commit.message.splitlines() or [""])[0], logical, new_stored, new_raw
            )
        )
    return {
        "commits": len(entries),
        "blocks": n,
        "logical_bytes": logical_total,
        "deduplicated_bytes": raw_total,
        "stored_bytes": stored_total,
        "pack_bytes": pack_files_size(repo),
        "index_bytes": index_size(repo),
        # every ratio is the smaller over the larger (stored/raw), as du and show print them
        "deduplicated_logical_ratio": raw_total / logical_total if logical_total else 1.0,
        "stored_raw_ratio": stored_total / raw_total if raw_total else 1.0,
        "stored_logical_ratio": stored_total / logical_total if logical_total else 1.0,
        "by_codec": by_codec,
        "merges": merge_usage(repo, merge_rows),
        "by_commit": [c.__dict__ for c in reversed(per_commit)],
    }


def iter_commit_blocks(repo: Repository, cid: bytes) -> Iterator[bytes]:
    """Every block id a commit uses, headers included (with repeats)."""
    tid = merges.tree_id(repo, repo.get_commit(cid))
    for e in repo.get_tree(tid).entries if tid else ():
        obj = repo.get_file(e.object)
        if isinstance(obj, TensorFile):
            header = repo.get_file(obj.header)
            assert isinstance(header, BlobFile)
            yield from header.blocks
            for t in obj.tensors:
                yield from t.blocks
        else:
            yield from obj.blocks


def new_stored_bytes(repo: Repository, new: bytes, old: Sequence[bytes]) -> int:
    """Stored bytes of the blocks commit `new` uses that none of `old` use, with the delta
    reference each of them needs and `old` lacks: what a push of `new` over `old` must send."""
    have: set[bytes] = set()
    for cid in old:
        have.update(iter_commit_blocks(repo, cid))
    mine = set(iter_commit_blocks(repo, new)) - have
    total = 0
    for bid in mine:
        loc = repo.block_location(bid)
        total += loc.length
        if loc.ref is not None and loc.ref not in have and loc.ref not in mine:
            total += repo.block_location(loc.ref).length
            have.add(loc.ref)
    return total


def merge_usage(repo: Repository, rows: list[tuple[HasCommit, int, int]]) -> dict[str, object]:
    """Merge commits: how many are materialized, lazy or evicted; the stored/raw ratio of the
    blocks they added (delta-coded against the base where smaller); what eviction freed."""
    states = {"materialized": 0, "lazy": 0, "evicted": 0}
    raw = stored = 0
    for e, r, s in rows:
        states[merges.state(repo, e.commit)] += 1
        raw += r
        stored += s
    ev = merges.evictions(repo)
    return {
        **states,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "stored_raw_ratio": stored / raw if raw else None,
        "evicted_stored_bytes": sum(int(v.get("stored_bytes", 0)) for v in ev.values()),
        "evicted_raw_bytes": sum(int(v.get("raw_bytes", 0)) for v in ev.values()),
    }
