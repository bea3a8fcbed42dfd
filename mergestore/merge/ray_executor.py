"""The Ray executor: a merge's tensors computed by tasks on a Ray cluster.

The driver plans as for a local merge, cuts the output tensors into groups of about
`task_bytes` input bytes (a tensor is never split across tasks), and sends each task the
places of the blocks it may read (pack, offset, length, codec: never data, never the index).
Workers read and verify blocks straight from the packs, merge with the same engine as the
local executor, and write their outputs into packs of their own (merge/ray_worker.py). The
driver checks what comes back, adopts the packs into its write session, and run.execute
publishes the commit in one transaction, as for a local merge. See docs/ray.md.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any

from mergestore.errors import CorruptionError, MergeError, MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.merge import ray_output
from mergestore.merge.engine import EngineStats, OutputTensor, TensorTask, task_bytes
from mergestore.merge.prepared import Progress
from mergestore.merge.ray_memory import check_fits, footprint, largest_node_memory
from mergestore.merge.ray_worker import GroupJob, GroupResult, MergePart, part_settings, run_group
from mergestore.store import faults
from mergestore.store.blocks import tensor_blocking
from mergestore.store.packs import ReadMeter
from mergestore.store.worker_packs import WrittenBlock, adopt_blocks, block_places, remote_slots

if TYPE_CHECKING:
    from mergestore.merge.journal import ComputeResult
    from mergestore.merge.prepared import PreparedMerge
    from mergestore.store.repo import Repository, WriteSession

INSTALL_HINT = 'the ray executor needs Ray, which is not installed: pip install "mergestore[ray]"'
MAX_TASK_BYTES = 256 << 20  # input bytes of one task's tensors, unless one tensor is larger
TASKS_PER_CPU = 4  # aim for this many tasks per cluster CPU, for balance
BATCH_MERGES = 8  # merges of a sweep sharing one task (their shared blocks are read once)
CACHE_BYTES = 512 << 20  # a task's cache of stored blocks, when it runs several merges
NICENESS_ENV = "RAY_worker_niceness"  # Ray's setting: the nice value of its worker processes
_remote_lock = threading.Lock()
_remote: Any = None


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MergeError(INSTALL_HINT) from None
    return ray


def connect(address: str | None = None) -> Any:
    """Ray, initialised: joined to `address` ("auto", "ray://host:10001"), else $RAY_ADDRESS,
    else a local instance started here. A process already connected stays connected."""
    from mergestore.merge import ray_warm

    ray_warm.wait()  # a warm-up started while the driver planned: its connection, if made
    ray = import_ray()
    if not ray.is_initialized():
        worker_priority_env()
        kw: dict[str, Any] = {"address": address} if address else {}
        try:
            ray.init(**kw, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = address or os.environ.get("RAY_ADDRESS") or "a local instance"
            raise MergeError(f"cannot connect to Ray at {where}: {_first_line(e)}") from None
    return ray


def worker_priority_env() -> None:
    """Workers of a Ray instance this process starts run at its own priority. Ray's default
    niceness for workers (15) starves a merge's tasks as soon as anything else runs on the
    node (measured: docs/benchmarks.md); a value the user set is kept, and a cluster that is
    already running keeps its own (`RAY_worker_niceness=0 ray start ...`). The raylet applies
    the value as an increment to the niceness its workers inherit from this process, so 0 keeps
    the driver's priority (the driver's own niceness would count it twice)."""
    os.environ.setdefault(NICENESS_ENV, "0")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


@dataclass
class _Group:
    """A task's share of one merge: indexes into its prep.tasks, in order."""

    merge: int
    indexes: list[int]


@dataclass
class _MergeState:
    """One merge's jobs and results while its groups run on the cluster."""

    prep: PreparedMerge
    jobs_left: int = 0
    results: dict[tuple[int, int], Any] = field(default_factory=dict)  # (job, part) -> result
    groups: list[tuple[int, int, _Group]] = field(default_factory=list)  # job, part, group
    written: dict[bytes, WrittenBlock] = field(default_factory=dict)
    error: BaseException | None = None
    pack_bytes_read: int = 0
    bytes_fetched: int = 0
    task_seconds: list[float] = field(default_factory=list)
    task_cpu_seconds: list[float] = field(default_factory=list)
    worker_peak_rss: int = 0
    task_memory: int = 0  # the largest `memory` resource one of its tasks asked Ray for
    task_memory_granted: int = 0  # ... and the largest Ray gave one
    uploaded: dict[str, bytes] = field(default_factory=dict)  # output packs on the remote
    bytes_uploaded: int = 0


@dataclass
class RayExecution:
    """One merge's outputs from Ray, ready to be adopted by a write session."""

    prep: PreparedMerge
    outputs: list[OutputTensor]
    stats: EngineStats
    blocks_from_base: int
    written: list[WrittenBlock]
    extra: dict[str, Any]
    uploaded: list[tuple[str, bytes]] = field(default_factory=list)  # (pack name, index)
    upload_remote: Any = None  # the RemoteSpec those packs are on


class RayExecutor:
    """Runs merges as Ray tasks over a store on a path every worker can reach."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        task_bytes: int | None = None,
        cpus_per_task: int = 1,
        fault: str | None = None,
        output: str | None = None,
    ) -> None:
        self.address = address
        self.output = output  # ray_output.MODES; None: $MERGESTORE_RAY_OUTPUT, else auto
        self.task_bytes = task_bytes
        self.cpus_per_task = cpus_per_task
        self.fault = fault  # tests only (see ray_worker._maybe_die)
        self.ray: Any = None
        self.extra: dict[str, Any] | None = None
        self._done: RayExecution | None = None
        self._upload: Any = None  # the RemoteSpec workers without the store upload to
        self._remote_places: ray_output.RemotePlaces | None = None
        self._probe: str | None = None

    # ----- one merge -------------------------------------------------------------------------

    def compute(
        self,
        repo: Repository,
        prep: PreparedMerge,
        *,
        ref: str,
        progress: Progress | None = None,
        folder: Any = None,  # the outputs are not here: FolderOutput.finish reads them back
    ) -> ComputeResult:
        del ref, folder
        done = self.run_many(repo, [prep], progress=progress)[0]
        if isinstance(done, BaseException):
            raise done
        return self.take(done)

    def take(self, done: RayExecution) -> ComputeResult:
        """A finished Ray execution as the result `adopt` will publish."""
        self._done = done
        self.extra = dict(done.extra)
        return compute_result(done)

    def adopt(self, session: WriteSession, res: ComputeResult) -> None:
        assert self._done is not None
        adopt(session, self._done, res)
        self.extra = dict(self._done.extra)  # with what adopting fetched

    # ----- many merges -----------------------------------------------------------------------

    def run_many(
        self,
        repo: Repository,
        preps: Sequence[PreparedMerge],
        *,
        progress: Progress | None = None,
        on_done: Callable[[int, RayExecution | BaseException], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> list[RayExecution | BaseException]:
        """Run every merge's tensors at once; each merge's result (or its error) in order.
        `on_done(i, result)` is called as soon as merge i is complete, `progress(n)` as tensors
        finish, `on_bytes(n)` with the pack bytes each task read."""
        if repo.read_only:  # a view of a remote (--store URL): its workers would write packs
            raise MergestoreError(repo.read_only)
        mode = ray_output.output_mode(self.output)
        self._upload = ray_output.upload_remote(repo) if mode != "store" else None
        if mode == "remote" and self._upload is None:
            raise MergeError(
                f"{ray_output.OUTPUT_ENV}=remote: this store has no remote for Ray workers to "
                "send their output through (mergestore remote add NAME URL)"
            )
        self._remote_places = (
            ray_output.RemotePlaces(repo, self._upload.name) if self._upload else None
        )
        with ray_output.probe(repo) if mode == "auto" else _no_probe() as probe:
            self._probe = probe
            return self._run_many(repo, preps, mode, progress, on_done, on_bytes)

    def _run_many(
        self,
        repo: Repository,
        preps: Sequence[PreparedMerge],
        mode: str,
        progress: Progress | None,
        on_done: Callable[[int, RayExecution | BaseException], None] | None,
        on_bytes: Callable[[int], None] | None,
    ) -> list[RayExecution | BaseException]:
        ray = self.ray = connect(self.address)
        with _remote_lock:
            global _remote
            if _remote is None:
                _remote = ray.remote(run_group)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        states = [_MergeState(p) for p in preps]
        jobs = self._jobs(repo, preps, states, cpus, mode)
        node_memory = largest_node_memory(ray.nodes())
        for job, groups in jobs:
            fp = check_fits(_footprint(job), node_memory)  # raises: no node holds the task
            job.cache_bytes, job.memory = fp.cache, fp.total
            for g in groups:
                st = states[g.merge]
                st.task_memory = max(st.task_memory, job.memory)
        refs: dict[Any, int] = {}
        for j, (job, _groups) in enumerate(jobs):
            opts: dict[str, Any] = {
                "num_cpus": self.cpus_per_task,
                "memory": job.memory,
                "max_retries": 3,
            }
            if (job.remote_slots or job.upload_remote) and (env := remote_env()):
                opts["runtime_env"] = {"env_vars": env}
            refs[_remote.options(**opts).remote(job)] = j
        out: list[RayExecution | BaseException | None] = [None] * len(preps)

        def finish(i: int) -> None:
            st = states[i]
            res: RayExecution | BaseException
            try:
                res = st.error or _assemble(st, repo.config.block_size)
                if isinstance(res, RayExecution):
                    res.upload_remote = self._upload
            except MergestoreError as e:
                res = e
            out[i] = res
            if on_done is not None:
                on_done(i, res)

        for i, st in enumerate(states):
            if st.jobs_left == 0:
                finish(i)
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    j = refs.pop(ref)
                    faults.kill_point("ray-task-done")  # tests: the driver dies mid-merge
                    job, groups = jobs[j]
                    try:
                        result: GroupResult | None = ray.get(ref)
                        err = None
                    except Exception as e:  # a task that failed for good
                        result, err = None, _task_error(e)
                    if result is not None:
                        repo.fetch_meter.add(result.bytes_fetched)  # merge --json reports it
                        if on_bytes is not None:
                            on_bytes(result.pack_bytes_read)
                    for part, g in enumerate(groups):
                        st = states[g.merge]
                        if err is not None:
                            st.error = st.error or err
                        else:
                            assert result is not None
                            st.results[(j, part)] = result.parts[part]
                            st.written.update((w.id, w) for w in result.written)
                            st.uploaded.update(result.uploaded)
                            st.task_seconds.append(result.seconds)
                            st.task_cpu_seconds.append(result.cpu_seconds)
                            st.worker_peak_rss = max(st.worker_peak_rss, result.peak_rss_bytes)
                            st.task_memory_granted = max(
                                st.task_memory_granted, result.memory_granted or 0
                            )
                            if part == 0:
                                st.pack_bytes_read += result.pack_bytes_read
                                st.bytes_fetched += result.bytes_fetched
                                st.bytes_uploaded += result.bytes_uploaded
                        st.jobs_left -= 1
                        if progress is not None:
                            progress(len(g.indexes))
                        if st.jobs_left == 0:
                            finish(g.merge)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        return [r if r is not None else MergeError("merge did not run") for r in out]

    def _jobs(
        self,
        repo: Repository,
        preps: Sequence[PreparedMerge],
        states: list[_MergeState],
        cpus: int,
        mode: str = "store",
    ) -> list[tuple[GroupJob, list[_Group]]]:
        """Tasks: each merge's tensors cut into groups by bytes; merges of one sweep (the same
        tensors of the same model commits) share tasks, BATCH_MERGES at a time."""
        batches: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(preps):
            key = (tuple(t.plan.name for t in p.tasks), tuple(m.commit for m in p.models))
            batches.setdefault(key, []).append(i)
        jobs = []
        for members in batches.values():
            for b0 in range(0, len(members), BATCH_MERGES):
                batch = members[b0 : b0 + BATCH_MERGES]
                first = preps[batch[0]]
                for indexes in group_tasks(first.tasks, self._target(first.tasks, cpus)):
                    parts, groups, tasks_all = [], [], []
                    for part, i in enumerate(batch):
                        tasks = [preps[i].tasks[k] for k in indexes]
                        parts.append(MergePart(**part_settings(preps[i]), tasks=tasks))
                        groups.append(_Group(i, indexes))
                        states[i].groups.append((len(jobs), part, groups[-1]))
                        tasks_all.extend(tasks)
                        states[i].jobs_left += 1
                    job = self._job(repo, tasks_all, parts, cache=len(batch) > 1, mode=mode)
                    jobs.append((job, groups))
        return jobs

    def _target(self, tasks: Sequence[TensorTask], cpus: int) -> int:
        if self.task_bytes is not None:
            return self.task_bytes
        total = sum(task_bytes(t) for t in tasks)
        return min(MAX_TASK_BYTES, max(1, total // (TASKS_PER_CPU * cpus)))

    def _job(
        self,
        repo: Repository,
        tasks: list[TensorTask],
        parts: list[MergePart],
        cache: bool,
        mode: str = "store",
    ) -> GroupJob:
        ids: dict[bytes, None] = {}
        for t in tasks:
            for rec in (t.reference, t.base, *t.inputs):
                if rec is not None:
                    ids.update(dict.fromkeys(rec.blocks))
        places = block_places(repo, ids)
        stored = sum(p.length for p in places.values())
        slots = remote_slots(repo, places.values())
        urls = {}
        if slots:
            from mergestore.remote.config import load_remotes

            specs = load_remotes(repo.path)
            urls = {r: specs[r].url for r, _pack in slots.values() if r in specs}
        fallback: dict[bytes, Any] = {}
        if self._upload is not None and self._remote_places is not None:
            fallback, more = self._remote_places.for_job(places)
            slots = {**slots, **more}
            urls[self._upload.name] = self._upload.url
        return GroupJob(
            pack_dir=str(repo.pack_dir.resolve()),
            config=repo.config,
            block_size=repo.config.block_size,
            places=places,
            parts=parts,
            # spans read also cover entry headers: room for all, or LRU thrashes
            cache_bytes=min(2 * stored + (1 << 20), CACHE_BYTES) if cache else 0,
            remote_slots=slots,
            remote_urls=urls,
            threads=self.cpus_per_task,
            fault=self.fault,
            output=mode,
            probe=self._probe,
            upload_remote=self._upload.name if self._upload is not None else None,
            remote_places=fallback,
        )


@contextlib.contextmanager
def _no_probe() -> Iterator[None]:
    yield None


def _footprint(job: GroupJob) -> Any:
    return footprint(
        [(part.tasks, part.dtype) for part in job.parts],
        cache_bytes=job.cache_bytes,
    )


def remote_env() -> dict[str, str]:
    """The driver's object-store settings, given to the tasks that read a remote's packs
    (Ray's runtime_env), so workers reach it as the driver does: AWS_* credentials, region
    and endpoint, and the MERGESTORE_REMOTE_* retry settings."""
    keep = ("AWS_", "MERGESTORE_REMOTE_")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}


def group_tasks(tasks: Sequence[TensorTask], target: int) -> list[list[int]]:
    """Consecutive tasks in groups of at most `target` input bytes (a larger tensor alone)."""
    groups: list[list[int]] = []
    size = 0
    for k, t in enumerate(tasks):
        n = task_bytes(t)
        if not groups or size + n > target:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += n
    return groups


def _task_error(e: BaseException) -> BaseException:
    """A failed task's error as one line: the worker's own MergestoreError where there is one."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, MergestoreError):
        return type(cause)(_first_line(cause))
    if isinstance(cause, BaseException):
        return MergeError(f"a ray task failed: {type(cause).__name__}: {_first_line(cause)}")
    return MergeError(f"a ray task failed: {type(e).__name__}: {_first_line(e)}")


def _assemble(st: _MergeState, block_size: int) -> RayExecution:
    """One merge's outputs in task order, its statistics summed in task order."""
    prep = st.prep
    n_models = len(prep.models)
    ordered: list[tuple[int, Any]] = []
    for j, part, g in st.groups:
        ordered.append((g.indexes[0], st.results[(j, part)]))
    ordered.sort(key=lambda x: x[0])
    outputs: list[OutputTensor] = []
    expert = [ReadMeter() for _ in range(n_models)]
    stats = EngineStats(expert_meters=expert)
    taken = 0
    seconds = 0.0
    torch_free = True
    for _k, r in ordered:
        outputs.extend(r.outputs)
        for m in range(n_models):
            expert[m].bytes_read += r.expert_bytes[m]
            expert[m].blocks_read += r.expert_blocks[m]
        stats.base_meter.bytes_read += r.base_bytes
        stats.base_meter.blocks_read += r.base_blocks
        stats.blocks_read += r.blocks_read
        stats.merged_delta_sq += r.merged_delta_sq
        seconds += r.seconds
        torch_free = torch_free and r.torch_free
        taken += r.blocks_from_base
    stats.tensors = len(outputs)
    stats.seconds = seconds
    stats.torch_free = torch_free
    if [o.name for o in outputs] != [t.plan.name for t in prep.tasks]:
        raise CorruptionError("ray tasks returned the wrong tensors")
    for o in outputs:
        want = tensor_blocking(o.shape, DTYPE_SIZES[o.dtype], block_size).num_blocks
        if len(o.blocks) != want:
            raise CorruptionError(f"tensor {o.name!r}: a ray task returned {len(o.blocks)} blocks")
    used = {b for o in outputs for b in o.blocks}
    written = [w for w in st.written.values() if w.id in used]
    extra = {
        "tasks": len(st.groups),
        "pack_bytes_read": st.pack_bytes_read,
        "bytes_fetched": st.bytes_fetched,
        "task_seconds_sum": round(sum(st.task_seconds), 4),
        "task_seconds_max": round(max(st.task_seconds, default=0.0), 4),
        # CPU time of the tasks: what the cluster model divides (wall per task grows with load)
        "task_cpu_seconds_sum": round(sum(st.task_cpu_seconds), 4),
        "task_cpu_seconds_max": round(max(st.task_cpu_seconds, default=0.0), 4),
        "worker_peak_rss_bytes": st.worker_peak_rss,
        "task_memory_bytes": st.task_memory,
        "task_memory_granted_bytes": st.task_memory_granted,
        "output_packs_uploaded": len(st.uploaded),
        "bytes_uploaded": st.bytes_uploaded,
        "output_bytes_fetched": 0,  # what adopting fetches back from the remote to check it
    }
    return RayExecution(prep, outputs, stats, taken, written, extra, sorted(st.uploaded.items()))


def compute_result(done: RayExecution) -> ComputeResult:
    from mergestore.merge.journal import ComputeResult

    st = done.stats
    return ComputeResult(
        outputs={o.name: o for o in done.outputs},
        computed=len(done.outputs),
        blocks_from_base=done.blocks_from_base,
        expert_bytes_read=[m.bytes_read for m in st.expert_meters],
        base_bytes_read=st.base_meter.bytes_read,
        blocks_read=st.blocks_read,
        engine_seconds=st.seconds,
        merged_delta_sq=st.merged_delta_sq,
        torch_free=st.torch_free,
        chunks=done.extra.get("tasks", 0),
    )


def adopt(session: WriteSession, done: RayExecution, res: ComputeResult) -> None:
    """Take a merge's worker-written blocks into the session and check that every output
    block is now stored: in the index already, or adopted from a worker's pack."""
    before = len(session.blocks)
    res.bytes_written += adopt_blocks(session, done.written)
    repo = session.repo
    ids = {b for o in done.outputs for b in o.blocks}
    if done.uploaded:
        from mergestore.remote.worker_output import adopt_uploaded

        up = done.upload_remote
        b0 = session.bytes_written
        _n, fetched = adopt_uploaded(session, up.url, up.name, done.uploaded, ids)
        res.bytes_written += session.bytes_written - b0
        done.extra["output_bytes_fetched"] = fetched
    res.blocks_written += len(session.blocks) - before
    pending = {b for b in ids if b in session.blocks}
    missing = ids - pending - set(repo.block_locations(ids - pending))
    if missing:
        bid = next(iter(missing))
        name = next(o.name for o in done.outputs if bid in o.blocks)
        raise CorruptionError(
            f"tensor {name!r}: block {bid.hex()[:12]} came back from a ray task; no pack holds it"
        )


class Finished(RayExecutor):
    """An executor for run.execute whose Ray work is done already (merge_many)."""

    def __init__(self, done: RayExecution) -> None:
        super().__init__()
        self._given = done

    def compute(
        self,
        repo: Repository,
        prep: PreparedMerge,
        *,
        ref: str,
        progress: Progress | None = None,
        folder: Any = None,
    ) -> ComputeResult:
        del repo, prep, ref, progress, folder
        return self.take(self._given)
