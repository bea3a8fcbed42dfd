"""Executors: where a prepared merge's tensors are computed.

The driver (run.execute) plans the merge, opens one write session, asks an executor for every
output tensor's block ids, then builds the tree and publishes the commit in one transaction.
An executor only turns a PreparedMerge into output blocks that are durable in the session's
store and known to the session (so its publish indexes them):

- LocalExecutor: the streaming engine in this process, writing through the session.
- RayExecutor (merge/ray_executor.py): tasks on a Ray cluster that read blocks straight from
  the packs and write packs of their own, which the session then adopts.

Both give the same outputs, block for block (the engine is deterministic per tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mergestore.merge.engine import Engine, EngineStats, OutputTensor

if TYPE_CHECKING:
    from mergestore.merge.outfolder import FolderOutput
    from mergestore.merge.run import PreparedMerge
    from mergestore.store.repo import Repository, WriteSession

Progress = Callable[[int], None]
EXECUTORS = ("local", "ray")


@dataclass
class Execution:
    """What an executor hands back: outputs in task order, read statistics, blocks taken
    from the base without computing (see run.base_pieces)."""

    outputs: list[OutputTensor]
    stats: EngineStats
    blocks_from_base: int
    extra: dict[str, Any] | None = None  # executor-specific figures for the run record


class Executor(Protocol):
    name: str

    def run(
        self,
        repo: Repository,
        prep: PreparedMerge,
        session: WriteSession,
        progress: Progress | None = None,
        folder: FolderOutput | None = None,
    ) -> Execution:
        """Compute every output tensor of `prep` into blocks the session will publish.
        `folder` (merge --out): an executor that holds output bytes may write them there as
        it goes; whatever it leaves is filled from the store after the commit."""
        ...


def make_engine(
    repo: Any, prep: PreparedMerge, *, block_size: int | None = None, seed: int | None = None
) -> Engine:
    """The engine for a prepared merge; `repo` is anything the engine reads blocks through."""
    from mergestore.ops import get_method

    cfg = prep.cfg
    return Engine(
        repo,
        method=get_method(cfg.merge_method).name,
        dtype=cfg.dtype,
        out_dtype=cfg.out_dtype,
        seed=(cfg.seed or 0) if seed is None else seed,
        tokenizer_source=cfg.tokenizer_source,
        block_size=block_size,
    )


class LocalExecutor:
    """The streaming engine in this process (both cores), writing through the session."""

    name = "local"

    def run(
        self,
        repo: Repository,
        prep: PreparedMerge,
        session: WriteSession,
        progress: Progress | None = None,
        folder: FolderOutput | None = None,
    ) -> Execution:
        from mergestore.merge.engine import StoreSink
        from mergestore.merge.run import run_tasks

        sink: Any = StoreSink(repo, session)
        if folder is not None:
            sink = folder.sink(sink)
        outputs, stats, n_base = run_tasks(
            make_engine(repo, prep),
            prep.tasks,
            sink,
            len(prep.models),
            progress=progress,
            track_delta=prep.selection.active,
            omitted=prep.plan_body.get("omitted_from_base"),
        )
        return Execution(outputs, stats, n_base)


def get_executor(name: str | Executor | None, **options: Any) -> Executor:
    """An executor by name ("local", "ray"), or the one given."""
    if name is None or name == "local":
        return LocalExecutor()
    if not isinstance(name, str):
        return name
    if name == "ray":
        from mergestore.merge.ray_executor import RayExecutor

        return RayExecutor(**options)
    from mergestore.errors import MergeError

    raise MergeError(f"unknown executor {name!r} (choose from {', '.join(EXECUTORS)})")
