"""Executors: where a prepared merge's tensors are computed.

The driver (run.execute) plans the merge, asks an executor for every output tensor's block
ids, then builds the tree and publishes the commit in one transaction. An executor turns a
PreparedMerge into output blocks, through two calls:

- `compute(repo, prep, ...)` -> journal.ComputeResult: outputs by tensor name and statistics;
- `adopt(session, result)`: inside the transaction that publishes the commit, make the blocks
  computed elsewhere part of it (nothing to do for the local executor).

- LocalExecutor: the streaming engine in this process, in journaled chunks saved as it goes
  (merge/journal.py: a re-run resumes), into the merge's one session (merge/session.py).
- RayExecutor (merge/ray_executor.py): tasks on a Ray cluster that read blocks straight from
  the packs and write packs of their own, which `adopt` adds to the commit's transaction.

Both give the same outputs, block for block (the engine is deterministic per tensor).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from mergestore.merge.prepared import Progress

if TYPE_CHECKING:
    from mergestore.merge.journal import ComputeResult
    from mergestore.merge.outfolder import FolderOutput
    from mergestore.merge.prepared import PreparedMerge
    from mergestore.store.repo import Repository, WriteSession

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    name: str
    extra: dict[str, Any] | None  # executor-specific figures for the run record

    def compute(
        self,
        repo: Repository,
        prep: PreparedMerge,
        *,
        ref: str,
        progress: Progress | None = None,
        folder: FolderOutput | None = None,
    ) -> ComputeResult:
        """Compute every output tensor of `prep`. `folder` (merge --out): an executor that
        holds output bytes may write them there as it goes; whatever it leaves is filled from
        the store after the commit."""
        ...

    def adopt(self, session: WriteSession, res: ComputeResult) -> None:
        """Add the blocks computed elsewhere to the session that publishes the commit."""
        ...


class LocalExecutor:
    """The streaming engine in this process (both cores), in journaled chunks."""

    name = "local"
    extra: dict[str, Any] | None = None

    def compute(
        self,
        repo: Repository,
        prep: PreparedMerge,
        *,
        ref: str,
        progress: Progress | None = None,
        folder: FolderOutput | None = None,
    ) -> ComputeResult:
        from mergestore.merge import journal, memo, outfolder, prepared

        engine = prepared.make_engine(repo, prep)
        engine.device = prep.device
        plan_id = prep.plan.id
        names = {t.plan.name for t in prep.tasks}
        ms = prep.session  # the merge's one write session (merge/session.py), or None
        ws = ms.ws if ms is not None else None
        memo.drop_stale_journals(repo, ref, plan_id, ws)
        wrap = None
        if folder is not None:
            layout_index = prep.base_index if prep.base_index is not None else 0
            layout_commit = prep.models[layout_index].commit
            folder.prepare(
                repo,
                outfolder.predict_outputs(engine, prep.tasks),
                layout_commit,
                prepared.output_files(prep)["shard_bytes"],
            )
            wrap = folder.sink
        return journal.compute(
            repo,
            engine,
            prep.tasks,
            len(prep.models),
            plan_id,
            reuse=journal.journaled_outputs(repo, plan_id, prepared.ENGINE, names, ws),
            track_delta=prep.selection.active,
            omitted=prep.plan_body.get("omitted_from_base"),
            progress=progress,
            ref=ref,
            wrap_sink=wrap,
            session=ws,
            save=None if ms is None else lambda done: ms.save(plan_id, ref, done, len(names)),
        )

    def adopt(self, session: WriteSession, res: ComputeResult) -> None:
        del session, res  # its chunks are published already


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
