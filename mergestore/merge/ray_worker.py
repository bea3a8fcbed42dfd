"""What one Ray task runs: a group of output tensors of one or more merges.

Plain Python (no Ray import), so it is tested and timed like any function. The task gets the
places of every block it may read (never the index), runs the same streaming engine as the
local executor on its tensors, writes the outputs into packs of its own and returns their
block ids, the blocks it wrote and its read statistics. Blocks of a lazy clone that are still
on its object-store remote are read with ranged GETs from the remote packs
(`remote_slots`/`remote_urls`; credentials from the worker's environment). It is idempotent:
a retried task writes new packs and returns the same ids; the packs of a killed attempt are
never indexed.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergestore.fast_dataclass import dataclass
from mergestore.merge.engine import Engine, OutputTensor, StoreSink, TensorTask
from mergestore.merge.ray_output import WorkerOutput
from mergestore.store.repo import StoreConfig
from mergestore.store.worker_packs import (
    BlockPlace,
    PackBlockSource,
    RemotePacks,
    WorkerPacks,
    WrittenBlock,
)

if TYPE_CHECKING:
    from mergestore.remote.url import RemoteURL


@dataclass
class MergePart:
    """One merge's share of a task: its engine settings and its tensors (whole TensorTasks)."""

    method: str
    dtype: str | None
    out_dtype: str | None
    seed: int
    tokenizer_source: str | None
    n_models: int
    track_delta: bool
    omitted: str | None
    tasks: list[TensorTask]
    vocab: Any = None  # merge.vocab.VocabFit of a tokenizer merge


@dataclass
class GroupJob:
    """What a Ray worker needs to run one group of merge parts."""

    pack_dir: str
    config: StoreConfig
    block_size: int
    places: dict[bytes, BlockPlace]
    parts: list[MergePart]
    cache_bytes: int = 0
    # promised packs (a lazy clone): slot -> (remote, pack name), and each remote's URL
    remote_slots: dict[int, tuple[str, str]] = field(default_factory=dict)
    remote_urls: dict[str, RemoteURL] = field(default_factory=dict)
    threads: int = 1  # tensors merged at once inside the task (its CPUs)
    memory: int = 0  # bytes of Ray's `memory` resource the task asks for (merge/ray_memory.py)
    fault: str | None = None  # tests: "kill-once:<marker path>" dies on the first attempt
    # Where outputs go (merge/ray_output.py): "store" (the packs at pack_dir), "remote" (upload
    # to `upload_remote`), "auto" (the store when this worker sees `probe`, a file the driver
    # made in the store for this merge, else the remote).
    output: str = "store"
    probe: str | None = None
    upload_remote: str | None = None
    # places on the upload remote of blocks `places` puts in the store's own packs (slots in
    # remote_slots): what a worker that cannot see the store reads instead
    remote_places: dict[bytes, BlockPlace] = field(default_factory=dict)


@dataclass
class PartResult:
    """One merge part's outputs and read counts, from a worker."""

    outputs: list[OutputTensor]
    expert_bytes: list[int]
    expert_blocks: list[int]
    base_bytes: int
    base_blocks: int
    blocks_read: int
    merged_delta_sq: float
    seconds: float
    torch_free: bool
    blocks_from_base: int


@dataclass
class GroupResult:
    """A group's part results and the blocks it wrote."""

    parts: list[PartResult]
    written: list[WrittenBlock]
    bytes_written: int
    pack_bytes_read: int
    cache_hits: int
    seconds: float
    peak_rss_bytes: int = 0  # the worker process's peak so far (it may have run other tasks)
    bytes_fetched: int = 0  # of pack_bytes_read, from remote packs by ranged GETs
    memory_granted: int | None = None  # the `memory` resource Ray gave the task (None: no Ray)
    uploaded: list[tuple[str, bytes]] = field(default_factory=list)  # (pack name, its index)
    bytes_uploaded: int = 0  # pack bytes sent to the remote (a pack already there: none)
    cpu_seconds: float = 0.0  # the worker process's CPU time during the task (all threads)
    node: str = field(default_factory=lambda: os.uname().nodename)


def run_group(job: GroupJob) -> GroupResult:
    """Merge every part's tensors; outputs of each part in its task order."""
    from mergestore.merge.pieces import run_tasks

    t0, c0 = time.perf_counter(), time.process_time()
    os.environ["MERGESTORE_MERGE_WORKERS"] = str(max(1, job.threads))
    remote = None
    if job.remote_slots:
        from mergestore.remote.lazy import UrlBlockSource

        remote = RemotePacks(job.remote_slots, UrlBlockSource(job.remote_urls))
    out = WorkerOutput(job)
    places = out.places()
    source = PackBlockSource(out.pack_dir, places, job.config, job.cache_bytes, remote)
    packs = WorkerPacks(out.pack_dir, job.config, places)
    sink = StoreSink(packs, packs)  # type: ignore[arg-type]  # config + session calls
    results = []
    try:
        for part in job.parts:
            engine = Engine(
                source,  # type: ignore[arg-type]  # the engine only reads blocks through it
                method=part.method,
                dtype=part.dtype,
                out_dtype=part.out_dtype,
                seed=part.seed,
                tokenizer_source=part.tokenizer_source,
                block_size=job.block_size,
                vocab=part.vocab,
            )
            outputs, stats, taken = run_tasks(
                engine,
                part.tasks,
                sink,
                part.n_models,
                track_delta=part.track_delta,
                omitted=part.omitted,
            )
            _maybe_die(job.fault)  # mid-task: output blocks appended, nothing returned yet
            results.append(
                PartResult(
                    outputs=outputs,
                    expert_bytes=[m.bytes_read for m in stats.expert_meters],
                    expert_blocks=[m.blocks_read for m in stats.expert_meters],
                    base_bytes=stats.base_meter.bytes_read,
                    base_blocks=stats.base_meter.blocks_read,
                    blocks_read=stats.blocks_read,
                    merged_delta_sq=stats.merged_delta_sq,
                    seconds=stats.seconds,
                    torch_free=stats.torch_free,
                    blocks_from_base=taken,
                )
            )
        written = packs.finish()
        uploaded = out.upload(written)  # none when the packs are the store's own
        if out.remote:
            written = []  # the driver fetches them from the remote instead
    except BaseException as e:
        packs.abort()
        better = out.explain(e)
        if better is not e:
            raise better from None
        raise
    finally:
        source.close()
        out.close()
    return GroupResult(
        results,
        written,
        packs.bytes_written,
        source.pack_bytes_read,
        source.cache_hits,
        time.perf_counter() - t0,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        bytes_fetched=source.bytes_fetched,
        memory_granted=_granted_memory(),
        uploaded=[(u.name, u.index) for u in uploaded],
        bytes_uploaded=sum(u.pack_bytes for u in uploaded if u.sent),
        cpu_seconds=time.process_time() - c0,
    )


def _granted_memory() -> int | None:
    """The `memory` resource Ray assigned to this task, when it runs as a Ray task."""
    ray = sys.modules.get("ray")  # a Ray worker has it imported; a plain call does not
    if ray is None or not ray.is_initialized():
        return None
    got = ray.get_runtime_context().get_assigned_resources().get("memory")
    return int(got) if got is not None else None


def _maybe_die(fault: str | None) -> None:
    """Test hook: kill this worker process the first time (a marker file remembers)."""
    if not fault or not fault.startswith("kill-once:"):
        return
    marker = Path(fault.split(":", 1)[1])
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    time.sleep(0.2)
    os.kill(os.getpid(), 9)


def part_settings(prep: Any) -> dict[str, Any]:
    """A prepared merge's engine settings, for MergePart."""
    from mergestore.ops import get_method

    cfg = prep.cfg
    return {
        "method": get_method(cfg.merge_method).name,
        "dtype": cfg.dtype,
        "out_dtype": cfg.out_dtype,
        "seed": cfg.seed or 0,
        "tokenizer_source": cfg.tokenizer_source,
        "n_models": len(prep.models),
        "track_delta": prep.selection.active,
        "omitted": prep.plan_body.get("omitted_from_base"),
        "vocab": prep.vocab,
    }
