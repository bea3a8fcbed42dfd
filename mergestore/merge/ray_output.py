"""Where a Ray worker's output packs go: into the driver's store, or through its remote.

A worker that sees the driver's store (one node, a shared path) writes its output packs into
the store's pack folder, and the driver adopts them (store/worker_packs.adopt_blocks). A
worker with no path to the store reads every block from the store's remote instead, writes
its output packs into a temporary folder of its own and uploads them to that remote
(remote/worker_output.py); the driver fetches and verifies those blocks and publishes them,
stored locally, in the transaction that publishes the commit.

The choice is MERGESTORE_RAY_OUTPUT (or `RayExecutor(output=...)`):
- `auto` (the default): each worker looks for the probe, a file with a random name that the
  driver creates in the store's `locks/` folder for the merge: a worker that finds it writes
  into the store, one that does not uploads. So a cluster may mix both.
- `store`: always into the store (a worker that cannot see it fails).
- `remote`: always through the remote, as a worker with no path to the store would (tests).

The remote is the store's lazy remote (a lazy clone's), else `origin`, else the first by name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mergestore.errors import CorruptionError, MergeError
from mergestore.store.promised import PROMISED_PACK_BASE
from mergestore.store.worker_packs import BlockPlace

if TYPE_CHECKING:
    from mergestore.remote.state import RemoteState
    from mergestore.remote.url import RemoteURL
    from mergestore.remote.worker_output import UploadedPack
    from mergestore.store.repo import Repository
    from mergestore.store.worker_packs import WrittenBlock


class OutputJob(Protocol):
    """What WorkerOutput reads of a task's job (ray_worker.GroupJob has these fields; a
    protocol here, so this module need not import ray_worker, which imports it)."""

    pack_dir: str
    places: dict[bytes, BlockPlace]
    remote_places: dict[bytes, BlockPlace]
    remote_urls: dict[str, RemoteURL]
    output: str
    probe: str | None
    upload_remote: str | None


OUTPUT_ENV = "MERGESTORE_RAY_OUTPUT"
MODES = ("auto", "store", "remote")
# Slots (beyond any a lazy clone allocates) that name the remote packs of blocks the store
# holds locally, for workers that cannot read the store's own packs.
FALLBACK_SLOT_BASE = 0x3000_0000


def output_mode(given: str | None = None) -> str:
    """The output mode: `given`, else $MERGESTORE_RAY_OUTPUT, else auto."""
    mode = given or os.environ.get(OUTPUT_ENV) or "auto"
    if mode not in MODES:
        raise MergeError(f"{OUTPUT_ENV} must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def upload_remote(repo: Repository) -> Any:
    """The RemoteSpec workers without the store send their output through, or None."""
    from mergestore.remote.config import load_remotes

    specs = load_remotes(repo.path)
    order = sorted(specs.values(), key=lambda s: (not s.lazy, s.name != "origin", s.name))
    return order[0] if order else None


@contextlib.contextmanager
def probe(repo: Repository) -> Iterator[str]:
    """A file with a random name in the store for the length of a merge: a worker that sees
    it sees this store."""
    path = repo.path / "locks" / f"ray-probe.{secrets.token_hex(8)}"
    path.touch()
    try:
        yield str(path.resolve())
    finally:
        path.unlink(missing_ok=True)


class RemotePlaces:
    """Places on one remote of blocks the store holds in its own packs (from the remote's pack
    indexes cached in the store, remote/state.py)."""

    def __init__(self, repo: Repository, remote: str) -> None:
        from mergestore.remote.state import RemoteState

        self.remote = remote
        self.state: RemoteState = RemoteState(repo.path, remote)

    def for_job(
        self, places: dict[bytes, BlockPlace]
    ) -> tuple[dict[bytes, BlockPlace], dict[int, tuple[str, str]]]:
        """Remote places of the local ones in `places` (and of their delta references), with
        the job-local slots that name their packs. Blocks the remote lacks are left out."""
        out: dict[bytes, BlockPlace] = {}
        slot_of: dict[str, int] = {}
        todo = [b for b, p in places.items() if p.pack < PROMISED_PACK_BASE]
        while todo:
            bid = todo.pop()
            known = places.get(bid)
            if bid in out or (known is not None and known.pack >= PROMISED_PACK_BASE):
                continue
            where = self.state.blocks.get(bid)
            if where is None:
                continue
            pack, e = where
            slot = slot_of.setdefault(pack, FALLBACK_SLOT_BASE + len(slot_of))
            out[bid] = BlockPlace(
                PROMISED_PACK_BASE + slot, e.offset, e.length, e.raw_len, e.spec, e.ref
            )
            if e.ref is not None:
                todo.append(e.ref)
        slots = {slot: (self.remote, pack) for pack, slot in slot_of.items()}
        return out, slots


class WorkerOutput:
    """A worker's side: does it see the store, which places it reads, where it writes."""

    def __init__(self, job: OutputJob) -> None:
        self.job = job
        sees = job.probe is not None and os.path.exists(job.probe)
        self.remote = job.output == "remote" or (job.output == "auto" and not sees)
        self._tmp: Path | None = None
        self.unreachable: set[str] = set()  # blocks only in the store (hex prefixes)
        if self.remote:
            if job.upload_remote is None or job.upload_remote not in job.remote_urls:
                store = Path(job.pack_dir).parent
                raise MergeError(
                    f"this Ray worker ({os.uname().nodename}) cannot see the store at {store}, "
                    "and the store has no remote to send its output through (share the path, "
                    "or add a remote: mergestore remote add)"
                )
            self._tmp = Path(tempfile.mkdtemp(prefix="mergestore-ray-"))

    @property
    def pack_dir(self) -> Path:
        """Where the worker's packs go (and its local reads come from: none, when remote)."""
        return self._tmp if self._tmp is not None else Path(self.job.pack_dir)

    def places(self) -> dict[bytes, BlockPlace]:
        """The places this worker reads: without the store, only those on a remote."""
        if not self.remote:
            return self.job.places
        both = {**self.job.places, **self.job.remote_places}
        out = {b: p for b, p in both.items() if p.pack >= PROMISED_PACK_BASE}
        self.unreachable = {b.hex()[:12] for b in both if b not in out}
        return out

    def explain(self, e: BaseException) -> BaseException:
        """A missing-block error about a block only the store holds, saying why."""
        text = str(e)
        missing = "is missing from the store"
        if not isinstance(e, CorruptionError) or missing not in text:
            return e
        if not any(f"block {h} " in text for h in self.unreachable):
            return e
        why = (
            f"is only in the driver's store, which this Ray worker cannot see, and not on "
            f"remote {self.job.upload_remote} (push it there first)"
        )
        return CorruptionError(text.replace(missing, why))

    def upload(self, written: Sequence[WrittenBlock]) -> list[UploadedPack]:
        """Send the packs to the remote (nothing when they are the store's own)."""
        if not self.remote or not written:
            return []
        from mergestore.remote.worker_output import upload_worker_packs

        name = self.job.upload_remote
        assert name is not None and self._tmp is not None
        return upload_worker_packs(self.job.remote_urls[name], name, self._tmp, written)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
