"""Output packs of Ray workers that cannot see the driver's store: sent through its remote.

A worker with no path to the store writes its output blocks into packs in a folder of its
own (the store's pack format, which is the remote's pack format too), then uploads each pack
as it is, followed by its index, in the remote's layout (`packs/<H>.pack`, `packs/<H>.idx`,
H the blake3 of the index: remote/layout.py). It returns the packs' names and indexes, never
data.

The driver trusts none of it: `adopt_uploaded` checks each index against its name, fetches
the payloads of the blocks the merge uses (ranged GETs, coalesced per chunk), decodes each and
checks it against its blake3 id (remote/verify.py, as a fetch does), and appends the verified
stored bytes to the driver's write session, so they are published, locally, in the same
transaction as the commit. The packs stay on the remote: a later push finds them in the
remote's pack indexes and does not send those blocks again. Packs whose driver never adopted
them (a killed driver, a retried task) stay on the remote, unreferenced, as a killed push's
do: there is no remote gc (docs/remotes.md).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mergestore.fast_dataclass import dataclass
from mergestore.remote.client import ObjectClient
from mergestore.remote.layout import (
    IdxEntry,
    PackIndex,
    RemoteCorruptionError,
    content_name,
    decode_index,
    encode_index,
    idx_key,
    pack_key,
)
from mergestore.remote.packs import _chunks, fetch_chunk, read_stored
from mergestore.remote.url import RemoteURL
from mergestore.remote.verify import check_blocks
from mergestore.store.codecs import Encoded
from mergestore.store.packs import pack_path

if TYPE_CHECKING:
    from mergestore.store.repo import WriteSession
    from mergestore.store.worker_packs import WrittenBlock

READ_CHUNK = 8 << 20  # bytes of a pack file read at a time while uploading it


@dataclass(frozen=True)
class UploadedPack:
    """One output pack a worker put on the remote: its name and its index (what it holds)."""

    name: str
    index: bytes
    pack_bytes: int
    sent: bool  # False: the remote had it already (a retried task's identical pack)


def upload_worker_packs(
    url: RemoteURL, remote: str, pack_dir: Path, written: Sequence[WrittenBlock]
) -> list[UploadedPack]:
    """Upload the packs in `pack_dir` holding `written` (each pack then its index)."""
    client = ObjectClient(url, remote)
    by_pack: dict[int, list[IdxEntry]] = {}
    for w in written:
        p = w.place
        by_pack.setdefault(p.pack, []).append(
            IdxEntry(w.id, p.offset, p.length, p.raw_len, p.codec, p.ref)
        )
    out = []
    for pid, entries in sorted(by_pack.items()):
        path = pack_path(pack_dir, pid)
        size = path.stat().st_size
        data = encode_index(PackIndex(size, tuple(sorted(entries, key=lambda e: e.offset))))
        name = content_name(data)
        sent = client.exists(pack_key(name)) != size
        if sent:
            client.put_stream(pack_key(name), _file_chunks(path), size)
        client.put_new(idx_key(name), data)  # after its pack: an index means a whole pack
        out.append(UploadedPack(name, data, size, sent))
    return out


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


def adopt_uploaded(
    session: WriteSession,
    url: RemoteURL,
    remote: str,
    packs: Sequence[tuple[str, bytes]],
    wanted: Collection[bytes],
) -> tuple[int, int]:
    """Fetch, verify and add to `session` the blocks of `wanted` that these uploaded packs
    (name, index) hold and the session does not know yet. Returns (blocks, bytes fetched)."""
    repo = session.repo
    client = ObjectClient(url, remote)
    blocks = fetched = 0
    for name, data in packs:
        if content_name(data) != name:
            raise RemoteCorruptionError(
                f"remote {remote}: a ray worker's pack index {name[:16]} does not match its name"
            )
        idx = decode_index(data, name)
        entries = [e for e in idx.entries if e.block in wanted and not session.known(e.block)]
        for chunk in _chunks(entries, fetch_chunk()):
            bufs = read_stored(client, name, [(e.offset, e.length) for e in chunk])
            got = sum(e.length for e in chunk)
            repo.fetch_meter.add(got)
            fetched += got
            checks = check_blocks(repo, remote, name, chunk, bufs)
            for e, payload in zip(chunk, bufs, strict=True):
                enc = Encoded(e.spec, payload, e.ref)
                if session.add_encoded(e.block, e.raw_len, enc, checks[e.block]):
                    blocks += 1
    return blocks, fetched
