"""`merge`: plan a merge, execute it from the store, and publish it as one commit with its plan."""

from __future__ import annotations

import contextlib
import os
import time
from types import SimpleNamespace
from typing import Any

from mergestore import native
from mergestore.author import default_author
from mergestore.errors import MergeError
from mergestore.merge import budget as budget_mod
from mergestore.merge import materialize as _registers_materializer  # noqa: F401
from mergestore.merge import trim as trim_mod
from mergestore.merge.config import MergeConfig, models_in_config
from mergestore.merge.engine import (
    HashSink,
)
from mergestore.merge.executor import Executor, LocalExecutor
from mergestore.merge.inputs import (
    PathInputs,
    ResolvedModel,
    refuse_duplicate_commits,
    resolve_models,
    store_folders,
)
from mergestore.merge.outfolder import FolderOutput
from mergestore.merge.pieces import omitted_mode, run_tasks
from mergestore.merge.preflight import preflight
from mergestore.merge.prepared import (
    ENGINE,
    MergeResult,
    PreparedMerge,
    Progress,
    find_base_index,
    make_engine,
    make_tasks,
    publish_tree,
    set_output_files,
)
from mergestore.merge.summary import summarize
from mergestore.merge.target import merge_target
from mergestore.merge.tensorplan import plan_tensors
from mergestore.ops import get_method
from mergestore.ops.spec import BaseRule
from mergestore.store.objects import Commit, Plan
from mergestore.store.repo import RefUpdate, Repository


def prepare(
    repo: Repository,
    cfg: MergeConfig,
    *,
    budget: str | int | None = None,
    max_error: float | None = None,
    commit_paths: bool = True,
    model_commits: list[bytes] | None = None,
    analyze_progress: Progress | None = None,
    verify_inputs: bool = False,
    saliency: Any = None,
    saliency_kind: str | None = None,
    branch: str | None = None,
    force_branch: bool = False,
    session: Any = None,
) -> PreparedMerge:
    """Validate the config, resolve inputs, plan every tensor and choose the blocks to read.
    With `session` (a merge/session.py MergeSession, open around prepare and execute), the
    folder inputs are stored into it, unpublished: a merge that fails later stores nothing.
    Folder inputs are checked from their headers before they are stored (precheck.py); `branch`
    and `force_branch`, the target execute() will be given, are checked then too. `saliency` (a
    safetensors path, a commit ref or a dict of tensors) ranks the blocks a budget keeps by
    their predicted effect on the loss (merge/saliency.py)."""
    # before any folder input is stored: a bad saliency file leaves the store unchanged
    sal = None
    if saliency is not None:
        from mergestore.merge.saliency import open_saliency

        sal = open_saliency(repo, saliency, saliency_kind)
    spec = get_method(cfg.merge_method)
    refs = models_in_config(cfg)
    path_inputs = PathInputs()
    if model_commits is not None:  # replay: the plan's recorded commits, not today's refs
        from mergestore.merge.inputs import _tensors

        models = [
            ResolvedModel(r, c, _tensors(repo, c)) for r, c in zip(refs, model_commits, strict=True)
        ]
    else:
        if commit_paths:
            from mergestore.merge.precheck import precheck

            precheck(
                repo,
                cfg,
                refs,
                budget=budget,
                max_error=max_error,
                branch=branch,
                force_branch=force_branch,
            )
        commit_path = None
        if commit_paths:  # every folder stored in one session (a failure stores none)
            commit_path = store_folders(
                repo,
                refs,
                verify=verify_inputs,
                tally=path_inputs,
                session=session.ws if session is not None else None,
            )
        models = resolve_models(repo, refs, commit_path=commit_path)
        refuse_duplicate_commits(repo, cfg, models)
    plans = plan_tensors(cfg, spec, refs, {i: list(m.tensors) for i, m in enumerate(models)})
    if not plans:
        raise MergeError("the merge has no tensors to produce")
    preflight(plans, models, compute_dtype=cfg.dtype, tokenizer_source=cfg.tokenizer_source)
    base_index = find_base_index(cfg, models)
    vocab = None
    if cfg.tokenizer_source is not None:  # merge/vocab.py is loaded for a tokenizer merge only
        from mergestore.merge.vocab import build_vocab

        vocab = build_vocab(repo, cfg, models, base_index)
    tasks = make_tasks(plans, models, base_index)
    selection = budget_mod.select(
        repo,
        spec,
        tasks,
        models,
        base_index,
        budget=budget,
        max_error=max_error,
        dtype=cfg.dtype,
        out_dtype=cfg.out_dtype,
        progress=analyze_progress,
        saliency=sal,
    )
    for t in tasks:
        t.selected = [selection.for_input(t.plan.name, m) for m in t.input_models]
    trim_mod.apply(tasks, selection.trim)
    body = {
        "type": "merge_plan",
        "version": 1,
        "engine": ENGINE,
        "method": spec.name,
        "config": cfg.to_dict(),
        "config_yaml": cfg.raw_text,
        "models": [{"ref": m.ref.text, "commit": m.commit.hex()} for m in models],
        "base": models[base_index].commit.hex() if base_index is not None else None,
        "dtype": cfg.dtype,
        "out_dtype": cfg.out_dtype,
        "seed": cfg.seed or 0,
        "rng": "per_tensor",
        "block_size": repo.config.block_size,
        "tensors": [
            {
                "name": p.name,
                "t": p.t,
                "shared": p.shared,
                "per_input": list(p.per_input),
                "base": [p.base.model_index, p.base.tensor_name] if p.base else None,
                "inputs": [[s.model_index, s.tensor_name] for s in p.inputs],
                "copy_from": (
                    [p.copy_from.model_index, p.copy_from.tensor_name] if p.copy_from else None
                ),
            }
            for p in plans
        ],
        **selection.to_plan(),
    }
    if selection.active and omitted_mode(spec.name):
        # see base_pieces(); replay follows what the plan says
        body["omitted_from_base"] = omitted_mode(spec.name)
    return PreparedMerge(
        cfg, models, plans, tasks, base_index, selection, body, path_inputs, vocab=vocab,
        session=session,
    )  # fmt: skip


def _parents(prep: PreparedMerge) -> tuple[bytes, ...]:
    order: list[bytes] = []
    if prep.base_index is not None:
        order.append(prep.models[prep.base_index].commit)
    for m in prep.models:
        if m.commit not in order:
            order.append(m.commit)
    return tuple(order)


def execute(
    repo: Repository,
    prep: PreparedMerge,
    *,
    branch: str | None,
    message: str,
    author: str | None = None,
    progress: Progress | None = None,
    lazy: bool = False,
    force: bool = False,
    out: str | os.PathLike[str] | None = None,
    executor: Executor | None = None,
    force_branch: bool = False,
    write_card: bool = True,
    shard_bytes: int | None = None,
    copy_tokenizer: bool = True,
    device: str | None = None,
    overwrite: bool = False,
) -> MergeResult:
    """Run the merge into the store and publish commit, plan and ref move in one transaction.
    `executor` computes the tensors: the local engine by default (merge/executor.py).

    A plan already merged returns its commit (the memo, merge/memo.py) unless `force`;
    `lazy` publishes the commit and plan without computing. Output blocks are published in
    journaled chunks as they are computed (merge/journal.py), so a re-run resumes.
    With `out`, also write the merged HF folder there in the same pass (outfolder.py); an
    existing non-empty folder only with `overwrite` (checkout --force's rule, formats/outdir.py).
    `branch` None makes a new branch `merge/<method>-N`; a branch that points at an input or
    the base is refused unless `force_branch` (mergestore/merge/target.py).

    `write_card` puts a model card (README.md, merge/modelcard.py) in the output tree;
    `shard_bytes` and `copy_tokenizer` shape the output files (see layout.build_tree). Those
    that differ from the defaults are recorded in the plan ("output"), so the memo, lazy
    merges and materialize give the files that were asked for.
    """
    set_output_files(prep, write_card, shard_bytes, copy_tokenizer)
    prep.device = device
    if lazy and out is not None:
        raise MergeError("--lazy computes nothing, so it cannot write --out (materialize first)")
    if overwrite and out is None:
        raise MergeError("--overwrite replaces the --out folder: give --out DIR")
    folder = FolderOutput(out, overwrite=overwrite) if out is not None else None
    try:
        res = _execute(
            repo,
            prep,
            branch,
            message,
            author,
            progress,
            folder,
            lazy,
            force,
            executor,
            force_branch,
        )
        if folder is not None:
            assert res.commit is not None
            res.out = folder.finish(repo, res.commit)
        return res
    except BaseException:
        if folder is not None:
            folder.abort()
        raise


def _execute(
    repo: Repository,
    prep: PreparedMerge,
    branch: str | None,
    message: str,
    author: str | None,
    progress: Progress | None,
    folder: FolderOutput | None,
    lazy: bool,
    force: bool,
    executor: Executor | None = None,
    force_branch: bool = False,
) -> MergeResult:
    from mergestore.merge import memo
    from mergestore.store import merges

    t0 = time.perf_counter()
    spec = get_method(prep.cfg.merge_method)
    ref = merge_target(
        repo,
        spec.name,
        branch,
        [
            (
                f"{m.ref.text!r}, the {'base' if i == prep.base_index else 'input'} of this merge",
                m.commit,
            )
            for i, m in enumerate(prep.models)
        ],
        force=force_branch,
    )
    plan_id = prep.plan.id
    hit = memo.lookup(repo, plan_id)
    ms = prep.session  # the merge's one write session (merge/session.py), or None
    if hit is not None and not force:
        # --out on a memo hit: the folder finds nothing laid out and is written by checkout
        before = repo.read_ref(ref)
        hit_res = memo.use(repo, hit, prep, ref, materialize=not lazy, progress=progress)
        hit_res.branch, hit_res.previous = ref, before
        hit_res.run.update(prep.path_inputs.to_json())  # this run's inputs, not the recorded
        if ms is not None and ms.ws.holds_anything:
            ms.ws.publish()  # the inputs' stat-cache entries, say
        return hit_res
    res = None
    executor = executor or LocalExecutor()
    if ms is not None and executor.name != "local":
        # workers in other processes read the inputs from the index: the folders stored go
        # in first (a failed Ray merge keeps them; gc reclaims them after its grace period)
        ms.ws.publish()
        prep.session = ms = None
    if not lazy:
        res = executor.compute(repo, prep, ref=ref, progress=progress, folder=folder)
    with repo.writer() if ms is None else contextlib.nullcontext(ms.ws) as session:
        assert session is not None
        if res is not None:
            executor.adopt(session, res)  # blocks computed elsewhere: published with the commit
        if res is None:
            tree = session.put_object(merges.EMPTY_TREE)
        else:
            outputs = [res.outputs[t.plan.name] for t in prep.tasks]
            tree = publish_tree(repo, session, prep, outputs)
        run = lazy_run_record(prep) if res is None else run_record_from(prep, res)
        run["wall_seconds"] = round(time.perf_counter() - t0, 4)
        if res is not None and executor.name != "local":
            run["executor"] = {"name": executor.name, **(executor.extra or {})}
        run["device"] = prep.device or "cpu"
        if hit is not None:  # --force: the recomputed output must be the memo commit's
            before = repo.read_ref(ref)
            forced = memo.check_forced(repo, session, hit, tree, prep, ref, run)
            forced.branch, forced.previous = ref, before
            return forced
        session.put_object(prep.plan)
        run_id = session.put_object(Plan(body={"type": "merge_run", "plan": plan_id.hex(), **run}))
        base = prep.models[prep.base_index].commit if prep.base_index is not None else None
        commit = Commit(
            tree=tree,
            parents=_parents(prep),
            message=message
            or f"merge: {spec.name} of {', '.join(m.ref.text for m in prep.models)}",
            author=author or default_author(),
            time=round(time.time(), 3),
            base=base,
            meta={merges.LAZY_META: "1"} if lazy else {},
            plan=plan_id,
            run=run_id,
        )
        cid = session.put_object(commit)
        merges.set_memo(session, plan_id, cid)
        merges.set_journal(session, plan_id, None)
        old = repo.read_ref(ref)
        what = f"merge{' --lazy' if lazy else ''}: {spec.name}"
        if folder is not None and ms is not None:
            folder.complete(repo, cid)  # an error writing --out publishes nothing
        session.publish([RefUpdate(ref, cid, what, old=old)])
    return MergeResult(cid, plan_id, run, [] if res is None else outputs, branch=ref, previous=old)


def lazy_run_record(prep: PreparedMerge) -> dict[str, Any]:
    return {"lazy": True, "tensors": len(prep.tasks), "tensors_computed": 0}


def run_record_from(prep: PreparedMerge, res: Any) -> dict[str, Any]:
    """The run record of a journaled computation (journal.ComputeResult)."""
    stats = SimpleNamespace(
        expert_meters=[SimpleNamespace(bytes_read=b) for b in res.expert_bytes_read],
        base_meter=SimpleNamespace(bytes_read=res.base_bytes_read),
        blocks_read=res.blocks_read,
        seconds=res.engine_seconds,
        torch_free=res.torch_free,
        lanes=res.lanes,
        merged_delta_sq=res.merged_delta_sq,
    )
    run = run_record(prep, stats, res.bytes_written, 0.0)
    run["blocks_from_base"] = res.blocks_from_base
    run["tensors_computed"] = res.computed
    run["tensors_reused"] = res.reused
    layout_index = prep.base_index if prep.base_index is not None else 0
    run.update(
        summarize(
            [res.outputs[t.plan.name] for t in prep.tasks],
            prep.models[layout_index].tensors,
            asked_dtype=prep.cfg.out_dtype or prep.cfg.dtype,
            blocks_written=res.blocks_written,
        )
    )
    return run


def run_record(prep: PreparedMerge, stats: Any, written: int, seconds: float) -> dict[str, Any]:
    sel = prep.selection
    per_model = [m.bytes_read for m in stats.expert_meters]
    expert_read = sum(b for i, b in enumerate(per_model) if i != prep.base_index)
    out = {
        "expert_bytes_read": expert_read,
        "expert_bytes_read_by_model": per_model,
        "expert_bytes_full": sel.expert_bytes_full,
        "budget_bytes": sel.budget_bytes,
        "error_bound": sel.error_bound,
        "base_bytes_read": stats.base_meter.bytes_read,
        "analyze_bytes_read": sel.analyze_bytes_read,
        **({"planning_bytes_read": sel.planning_bytes_read} if sel.saliency else {}),
        "bytes_written": written,
        "blocks_read": stats.blocks_read,
        "tensors": len(prep.tasks),
        "wall_seconds": round(seconds, 4),
        "engine_seconds": round(stats.seconds, 4),
        "kernels": native.describe(),
        "torch_free": stats.torch_free,
        "lanes": stats.lanes,
        **prep.path_inputs.to_json(),
        "notes": list(sel.notes),
    }
    if sel.active:
        delta = stats.merged_delta_sq**0.5
        out["merged_delta_l2"] = delta
        bound = sel.error_bound
        out["error_bound_rel_posthoc"] = (
            bound / (delta - bound) if bound is not None and delta > bound else None
        )
    return out


def replay(repo: Repository, commit_id: bytes, progress: Progress | None = None) -> dict[str, Any]:
    """Re-execute a merge commit's plan and compare every output block id."""
    from mergestore.merge.materialize import prepared_from_commit
    from mergestore.store.objects import TensorFile

    c = repo.get_commit(commit_id)
    prep = prepared_from_commit(repo, c)
    models, tasks, body = prep.models, prep.tasks, prep.plan_body
    base_index = prep.base_index
    engine = make_engine(repo, prep)  # the same engine settings as the merge (and vocabulary)
    outputs, stats, _ = run_tasks(
        engine,
        tasks,
        HashSink(),
        len(models),
        progress=progress,
        omitted=body.get("omitted_from_base"),
    )
    stored: dict[str, tuple[bytes, ...]] = {}
    from mergestore.store.merges import readable_tree

    for e in readable_tree(repo, commit_id, ()).entries:  # an evicted merge keeps its ids
        if e.kind == "tensorfile":
            tf = repo.get_file(e.object)
            assert isinstance(tf, TensorFile)
            for t in tf.tensors:
                stored[t.name] = t.blocks
    first_diff = None
    n_blocks = matched = 0
    for o in outputs:
        want = stored.get(o.name)
        n_blocks += len(o.blocks)
        if want is None or tuple(want) != tuple(o.blocks):
            if first_diff is None:
                first_diff = o.name
        else:
            matched += len(o.blocks)
    missing = sorted(set(stored) - {o.name for o in outputs})
    if first_diff is None and missing:
        first_diff = missing[0]
    return {
        "commit": commit_id.hex(),
        "plan": c.plan.hex(),
        "identical": first_diff is None,
        "first_difference": first_diff,
        "tensors": len(outputs),
        "blocks": n_blocks,
        "blocks_matched": matched,
        "expert_bytes_read": sum(
            m.bytes_read for i, m in enumerate(stats.expert_meters) if i != base_index
        ),
        "seconds": round(stats.seconds, 4),
        "plan_engine": body.get("engine"),
        "engine": ENGINE,
    }


def base_rule_allows_budget(spec_base: BaseRule, has_base: bool) -> bool:
    return has_base
