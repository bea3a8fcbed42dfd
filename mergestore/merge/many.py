"""Many merges at once: a sweep of configs, each its own commit and branch.

On Ray every merge's tasks are submitted together and each merge is published (its own
transaction) as soon as its last task is back; merges of one sweep that read the same tensors
of the same model commits share tasks, so their common blocks are read once per task. The
local executor runs them one after another. A config that fails (invalid, a corrupt block, a
ref that moved) is reported on its own; the others still run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mergestore.errors import MergeError, MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.merge.config import MergeConfig, load_config
from mergestore.merge.prepared import MergeResult, PreparedMerge
from mergestore.merge.run import execute, prepare
from mergestore.store.refs import check_new_ref_name
from mergestore.store.repo import Repository


@dataclass
class ManyResult:
    """One config's outcome: its branch and either a MergeResult or an error line."""

    index: int
    label: str  # the config's file, or "config N"
    branch: str | None
    result: MergeResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "config": self.label,
            "branch": self.branch,
            "ok": self.ok,
            "error": self.error,
            "commit": r.commit.hex() if r is not None and r.commit else None,
            "plan": r.plan.hex() if r is not None else None,
            "run": r.run if r is not None else None,
        }


def branch_for(config: Any, index: int, given: str | None) -> str:
    """The branch a config's merge goes to: the given name, else the YAML file's stem."""
    if given:
        return given
    if isinstance(config, (str, os.PathLike)) and Path(config).suffix in (".yml", ".yaml"):
        return Path(config).stem
    raise MergeError(f"config {index + 1}: give a branch name (only YAML files name their own)")


def _label(config: Any, index: int) -> str:
    if isinstance(config, (str, os.PathLike)) and Path(config).suffix in (".yml", ".yaml"):
        return str(config)
    return f"config {index + 1}"


def merge_many(
    repo: Repository,
    configs: Sequence[Any],
    *,
    executor: str | None = None,
    ray_address: str | None = None,
    branches: Sequence[str | None] | None = None,
    budget: str | int | None = None,
    max_error: float | None = None,
    message: str = "",
    force: bool = False,
    on_merge: Callable[[ManyResult], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> list[ManyResult]:
    """Run every config's merge; results in input order, failures reported per config.

    `configs`: MergeConfig objects, YAML paths or YAML text. `on_merge` is called as each
    merge is published or fails, `on_bytes` with pack bytes read as they are read (on Ray,
    as each task is back; locally, as each merge is published)."""
    from mergestore.store.repo import in_progress

    given = list(branches) if branches is not None else [None] * len(configs)
    if len(given) != len(configs):
        raise MergeError(f"merge_many: {len(given)} branch name(s) for {len(configs)} configs")
    out = [ManyResult(i, _label(c, i), None) for i, c in enumerate(configs)]

    def fail(i: int, e: BaseException) -> None:
        out[i].error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if on_merge is not None:
            on_merge(out[i])

    from mergestore.merge.ray_warm import warm_for

    warm_for(executor, ray_address)  # Ray joins and starts workers while the configs plan
    preps: list[tuple[int, PreparedMerge]] = []
    seen: dict[str, int] = {}
    with in_progress(repo):  # gc waits until every merge is published
        for i, c in enumerate(configs):
            try:
                name = branch_for(c, i, given[i])
                check_new_ref_name(name)
                if name in seen:
                    raise MergeError(f"branch {name!r} is also config {seen[name] + 1}'s")
                seen[name] = i
                out[i].branch = name
                cfg = c if isinstance(c, MergeConfig) else load_config(c)
                preps.append((i, prepare(repo, cfg, budget=budget, max_error=max_error)))
            except MergestoreError as e:
                fail(i, e)

        def publish(i: int, prep: PreparedMerge, runner: Any, count_read: bool = False) -> None:
            try:
                out[i].result = execute(
                    repo, prep, branch=out[i].branch, message=message, force=force, executor=runner
                )
            except MergestoreError as e:
                fail(i, e)
                return
            run = out[i].result.run
            if count_read and on_bytes is not None and not run.get("memo"):
                on_bytes(run["expert_bytes_read"] + run["base_bytes_read"])  # blocks it read
            if on_merge is not None:
                on_merge(out[i])

        if executor in (None, "local"):
            for i, prep in preps:
                publish(i, prep, None, count_read=True)
            return out
        if executor != "ray":
            raise MergeError(f"unknown executor {executor!r} (choose from local, ray)")
        from mergestore.merge import memo
        from mergestore.merge.ray_executor import Finished, RayExecutor

        remote = []
        for i, prep in preps:
            if not force and memo.lookup(repo, prep.plan.id) is not None:
                publish(i, prep, None)  # merged before: its commit, nothing computed
            else:
                remote.append((i, prep))

        def done(k: int, res: Any) -> None:
            i, prep = remote[k]
            if isinstance(res, BaseException):
                fail(i, res)
            else:
                publish(i, prep, Finished(res))

        if remote:
            RayExecutor(ray_address).run_many(
                repo, [p for _i, p in remote], on_done=done, on_bytes=on_bytes
            )
    return out
