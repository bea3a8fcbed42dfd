"""`merge`: plan a merge, execute it from the store, and publish it as one commit with its plan."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from mergestore import __version__, native
from mergestore.errors import MergeError
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.ingest import default_author
from mergestore.merge import budget as budget_mod
from mergestore.merge import materialize as _registers_materializer  # noqa: F401
from mergestore.merge import trim as trim_mod
from mergestore.merge.config import MergeConfig, models_in_config
from mergestore.merge.engine import (
    Engine,
    HashSink,
    OutputTensor,
    TensorTask,
    task_bytes,
)
from mergestore.merge.executor import Executor, LocalExecutor
from mergestore.merge.inputs import (
    PathInputs,
    ResolvedModel,
    refuse_duplicate_commits,
    resolve_models,
    store_folders,
    validate_tensor_plans,
)
from mergestore.merge.layout import build_tree
from mergestore.merge.outfolder import FolderOutput, predict_outputs  # noqa: F401 (executor)
from mergestore.merge.saliency import open_saliency
from mergestore.merge.summary import summarize
from mergestore.merge.target import merge_target
from mergestore.merge.tensorplan import OutputTensorPlan, plan_tensors
from mergestore.ops import get_method
from mergestore.ops.spec import BaseRule
from mergestore.store.blocks import tensor_blocking
from mergestore.store.objects import Commit, Plan, TensorRecord
from mergestore.store.repo import RefUpdate, Repository

ENGINE = f"mergestore {__version__} (engine 2)"
Progress = Callable[[int], None]


@dataclass
class PreparedMerge:
    """Everything decided before any tensor data is read."""

    cfg: MergeConfig
    models: list[ResolvedModel]
    plans: list[OutputTensorPlan]
    tasks: list[TensorTask]
    base_index: int | None  # model index of the base (reference for omitted blocks)
    selection: budget_mod.Selection
    plan_body: dict[str, Any]
    path_inputs: PathInputs = field(default_factory=PathInputs)  # folders committed first
    device: str | None = None  # merge --device: where the torch lane computes (not in the plan)
    vocab: Any = None  # merge.vocab.VocabFit: a tokenizer merge's vocabulary (from the inputs)
    # merge/session.py's MergeSession: the one write session the folders it stored, what it
    # computes and its commit go into, published at once (None: each step publishes its own)
    session: Any = None

    @property
    def plan(self) -> Plan:
        return Plan(body=self.plan_body)


@dataclass
class MergeResult:
    commit: bytes | None
    plan: bytes
    run: dict[str, Any]
    outputs: list[OutputTensor] = field(default_factory=list)
    out: dict[str, Any] | None = None  # merge --out: the folder written (outfolder.py)
    branch: str | None = None  # the full ref that moved
    previous: bytes | None = None  # where it was before (None: a new branch)


def _base_index(cfg: MergeConfig, models: list[ResolvedModel]) -> int | None:
    if cfg.base_model is None:
        return None
    for i, m in enumerate(models):
        if m.ref == cfg.base_model:
            return i
    return None


def make_tasks(
    plans: list[OutputTensorPlan], models: list[ResolvedModel], base_index: int | None
) -> list[TensorTask]:
    tasks = []
    for p in plans:
        ref = None
        if base_index is not None:
            ref = models[base_index].tensors.get(p.name)
            if ref is None and p.base is not None:
                ref = models[p.base.model_index].tensors[p.base.tensor_name]
        if p.copy_from is not None:
            src = models[p.copy_from.model_index].tensors[p.copy_from.tensor_name]
            tasks.append(TensorTask(p, src, [], [], ref, []))
            continue
        base = models[p.base.model_index].tensors[p.base.tensor_name] if p.base else None
        inputs = [models[s.model_index].tensors[s.tensor_name] for s in p.inputs]
        idx = [s.model_index for s in p.inputs]
        tasks.append(TensorTask(p, base, inputs, idx, ref, [None] * len(inputs)))
    return tasks


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
    sal = open_saliency(repo, saliency, saliency_kind) if saliency is not None else None
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
    validate_tensor_plans(
        plans, models, compute_dtype=cfg.dtype, tokenizer_source=cfg.tokenizer_source
    )
    base_index = _base_index(cfg, models)
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


def make_engine(repo: Repository, prep: PreparedMerge) -> Engine:
    return Engine(
        repo,
        method=get_method(prep.cfg.merge_method).name,
        dtype=prep.cfg.dtype,
        out_dtype=prep.cfg.out_dtype,
        seed=int(prep.plan_body.get("seed", prep.cfg.seed or 0)),
        tokenizer_source=prep.cfg.tokenizer_source,
        block_size=int(prep.plan_body.get("block_size", repo.config.block_size)),
        vocab=prep.vocab,
    )


def publish_tree(
    repo: Repository, session: Any, prep: PreparedMerge, outputs: list[OutputTensor]
) -> bytes:
    """The merge's tree (the layout model's files with the outputs), into `session`."""
    layout_index = prep.base_index if prep.base_index is not None else 0
    tok_index = layout_index
    extra = {}
    if prep.vocab is not None:  # a tokenizer merge: its own tokenizer files (merge/vocab.py)
        from mergestore.merge.vocab import tokenizer_files

        tok_index = prep.vocab.source
        extra.update(tokenizer_files(repo, prep.vocab, prep.models))
    from mergestore.merge.mergekit_yaml import CONFIG_FILE, mergekit_config_text

    config_yaml = mergekit_config_text(repo, prep.cfg, prep.models)  # mergekit can run it
    extra[CONFIG_FILE] = config_yaml.encode()
    files = output_files(prep)
    if prep.cfg.chat_template and (files["copy_tokenizer"] or prep.vocab is not None):
        from mergestore.merge.chat_template import chat_template_files

        extra.update(
            chat_template_files(
                repo,
                prep.cfg.chat_template,
                [m.commit for m in prep.models],
                prep.models[tok_index].commit,
            )
        )
    if files["write_card"]:
        from mergestore.merge.modelcard import CARD_FILE, model_card

        extra[CARD_FILE] = model_card(
            repo, prep.cfg, prep.models, plan_id=prep.plan.id, config_yaml=config_yaml
        ).encode()
    return build_tree(
        repo,
        session,
        outputs,
        layout_commit=prep.models[layout_index].commit,
        tokenizer_commit=prep.models[tok_index].commit,
        out_dtype=prep.cfg.out_dtype,
        extra_files=extra,
        shard_bytes=files["shard_bytes"],
        # a tokenizer merge writes the merged tokenizer (as mergekit does, even with
        # --no-copy-tokenizer), and no input's tokenizer files
        copy_tokenizer=files["copy_tokenizer"] and prep.vocab is None,
    )


OUTPUT_DEFAULTS: dict[str, Any] = {"write_card": True, "shard_bytes": None, "copy_tokenizer": True}


def set_output_files(
    prep: PreparedMerge, write_card: bool, shard_bytes: int | None, copy_tokenizer: bool
) -> None:
    """Record the output options that differ from the defaults in the plan (a default merge's
    plan, and so its id, stays as it was)."""
    asked = {"write_card": write_card, "shard_bytes": shard_bytes, "copy_tokenizer": copy_tokenizer}
    diff = {k: v for k, v in asked.items() if v != OUTPUT_DEFAULTS[k]}
    if diff:
        prep.plan_body["output"] = diff
    else:
        prep.plan_body.pop("output", None)


def output_files(prep: PreparedMerge) -> dict[str, Any]:
    """The plan's output options (model card, shard size, tokenizer files)."""
    return {**OUTPUT_DEFAULTS, **(prep.plan_body.get("output") or {})}


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


# Methods whose kernel returns the base when every input equals it (all deltas are zero):
# checked kernel by kernel in tests/merge/test_budget.py. della's rescaling is left out.
BASE_PRESERVING = frozenset(
    {"task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties"}
)
# ... and whose kernel is elementwise and draws no random numbers, so a run of rows merged on
# its own gives the same values as inside the whole tensor.
ROWWISE = frozenset({"task_arithmetic"})
_EXACT_IN = {"F32": {"BF16", "F16", "F32"}, "F64": {"BF16", "F16", "F32", "F64"}}


def omitted_mode(method: str) -> str | None:
    """What a budgeted merge of `method` takes from the base: "blocks", "tensors" or nothing."""
    if method in ROWWISE:
        return "blocks"
    return "tensors" if method in BASE_PRESERVING else None


def base_pieces(
    task: TensorTask, compute: str | None, out: str | None, block_size: int, mode: str
) -> list[tuple[int, int, bool]] | None:
    """Runs of output blocks [b0, b1) and whether each is the base's; None: compute it whole.

    A block is the base's when the budget omitted some input block there and read none: every
    input then equals the base (omitted blocks are taken from it), so a base-preserving kernel
    would return base + 0, the same values. Taking the base's blocks skips reading the base,
    the kernel, hashing and writing; only the sign of a zero base element (+0.0 from base + 0)
    and NaN payloads could differ. Blocks where no input differs from the base are computed as
    usual, so a 100% budget stays bit-identical to the unbudgeted merge. Mode "tensors" does
    this only for a whole tensor. Only where the kernel's output dtype is the base's and the
    compute dtype (`compute`, `out`: safetensors names or None) holds it exactly.
    """
    ref, p = task.reference, task.plan
    if ref is None or p.copy_from is not None or task.base is None or not task.inputs:
        return None
    if task.base.blocks != ref.blocks or not ref.shape:
        return None
    for rec in task.inputs:
        if rec.shape != ref.shape or rec.dtype != ref.dtype:
            return None
    c = compute or ref.dtype  # without a compute dtype, the inputs' (all the base's here)
    o = out or c
    if o != ref.dtype or (c != ref.dtype and ref.dtype not in _EXACT_IN.get(c, ())):
        return None
    blocking = tensor_blocking(tuple(ref.shape), DTYPE_SIZES[ref.dtype], block_size)
    if blocking.rows_per_block != ref.rows_per_block:
        return None
    omitted, read = [], []
    for i, rid in enumerate(ref.blocks):
        o_i = r_i = False
        for rec, sel in zip(task.inputs, task.selected, strict=True):
            if rec.blocks[i] == rid:
                continue
            if sel is not None and i not in sel:
                o_i = True
            else:
                r_i = True
        omitted.append(o_i)
        read.append(r_i)
    if mode == "tensors":
        if any(read) or not any(omitted):
            return None
        return [(0, len(ref.blocks), True)]  # blocks where nothing differs: the base's too
    flags = [o_i and not r_i for o_i, r_i in zip(omitted, read, strict=True)]
    if not any(flags):
        return None
    runs: list[tuple[int, int, bool]] = []
    for i, f in enumerate(flags):
        if runs and runs[-1][2] == f:
            runs[-1] = (runs[-1][0], i + 1, f)
        else:
            runs.append((i, i + 1, f))
    return runs


def _slice(rec: TensorRecord, b0: int, b1: int) -> TensorRecord:
    """Rows of blocks [b0, b1) of a tensor, as a record of its own (the same block ids)."""
    row_bytes = rec.nbytes // rec.shape[0] if rec.shape[0] else 0
    r0 = b0 * rec.rows_per_block
    r1 = min(rec.shape[0], b1 * rec.rows_per_block)
    return dataclasses.replace(
        rec,
        shape=(r1 - r0, *rec.shape[1:]),
        begin=rec.begin + r0 * row_bytes,
        end=rec.begin + r1 * row_bytes,
        blocks=rec.blocks[b0:b1],
    )


def _piece(task: TensorTask, b0: int, b1: int) -> TensorTask:
    return TensorTask(
        task.plan,
        _slice(task.base, b0, b1) if task.base is not None else None,
        [_slice(r, b0, b1) for r in task.inputs],
        task.input_models,
        _slice(task.reference, b0, b1) if task.reference is not None else None,
        [
            None if s is None else frozenset(i - b0 for i in s if b0 <= i < b1)
            for s in task.selected
        ],
        task.first_block + b0,
    )


# Elementwise merges stream large tensors in pieces of this many blocks, so the stages of the
# pipeline overlap (and both cores work) on embeddings and heads too, and memory follows the
# piece instead of the tensor.
PIECE_BLOCKS = 8
LANE_ELEMENTS = 64  # pieces start on a multiple of this: every element keeps its SIMD lane


def elementwise_pieces(
    task: TensorTask, out_dtype: str | None, block_size: int
) -> list[tuple[int, int, bool]] | None:
    """Runs of PIECE_BLOCKS blocks for a large tensor of an elementwise method; None: whole.

    Every input, the base and the reference must be cut into the same rows (same shape and
    rows per block), and so must the output (its dtype as wide as the inputs'). Each piece is
    then merged alone and its output blocks are exactly the whole tensor's.
    """
    if task.plan.copy_from is not None or not task.inputs:
        return None
    recs = [r for r in (task.base, task.reference, *task.inputs) if r is not None]
    first = recs[0]
    if not first.shape or len(first.blocks) < 2 * PIECE_BLOCKS:
        return None
    for r in recs:
        if r.shape != first.shape or r.rows_per_block != first.rows_per_block:
            return None
        if DTYPE_SIZES[r.dtype] != DTYPE_SIZES[first.dtype]:
            return None
    out_size = DTYPE_SIZES[out_dtype] if out_dtype is not None else DTYPE_SIZES[first.dtype]
    out_rows = tensor_blocking(tuple(first.shape), out_size, block_size).rows_per_block
    if out_rows != first.rows_per_block:
        return None
    if (first.rows_per_block * math.prod(first.shape[1:])) % LANE_ELEMENTS:
        return None
    n = len(first.blocks)
    return [(b0, min(n, b0 + PIECE_BLOCKS), False) for b0 in range(0, n, PIECE_BLOCKS)]


def run_tasks(
    engine: Engine,
    tasks: list[TensorTask],
    sink: Any,
    n_models: int,
    *,
    progress: Progress | None = None,
    track_delta: bool = False,
    omitted: str | None = None,
) -> tuple[list[OutputTensor], Any, int]:
    """engine.run, with output blocks whose differing input blocks were all omitted taken from
    the base (`omitted`: "blocks", "tensors" or None, as the plan records; see base_pieces).
    Returns the outputs in task order, the engine's stats and the number of blocks taken."""
    c, o = engine.compute_dtype_name, engine.out_dtype_name
    layout: list[list[tuple[int, int, bool]] | None] = []
    work: list[TensorTask] = []
    ends: list[int] = []  # per task: how many engine tasks are done when it is complete
    taken = 0
    elementwise = get_method(engine.method).elementwise and not engine.tokenizer_source
    for t in tasks:
        runs = base_pieces(t, c, o, engine.block_size, omitted) if omitted else None
        if runs is None and elementwise:
            runs = elementwise_pieces(t, o or c, engine.block_size)
        layout.append(runs)
        if runs is None:
            work.append(t)
        else:
            n_blocks = len(_shape_record(t).blocks)
            for b0, b1, from_base in runs:
                if from_base:
                    taken += b1 - b0
                else:
                    work.append(t if (b0, b1) == (0, n_blocks) else _piece(t, b0, b1))
        ends.append(len(work))

    done = [0]
    pending = iter(ends)
    nxt = [next(pending, None)]

    def piece_done(n: int) -> None:
        done[0] += n
        while nxt[0] is not None and nxt[0] <= done[0]:
            if progress:
                progress(1)
            nxt[0] = next(pending, None)

    piece_done(0)  # tensors needing no engine work at the start
    computed, stats = engine.run(
        work,
        sink,
        n_models,
        progress=piece_done if progress else None,
        track_delta=track_delta,
        memory_limit=max((task_bytes(t) for t in tasks), default=0),
    )
    it = iter(computed)
    outputs = []
    for t, runs in zip(tasks, layout, strict=True):
        if runs is None:
            outputs.append(next(it))
            continue
        ref = _shape_record(t)
        blocks: list[bytes] = []
        dtype = ref.dtype
        for b0, b1, from_base in runs:
            if from_base:
                assert t.reference is not None
                blocks.extend(t.reference.blocks[b0:b1])
            else:
                piece = next(it)
                assert piece.rows_per_block == ref.rows_per_block
                dtype = piece.dtype  # the base's where some blocks are (see base_pieces)
                blocks.extend(piece.blocks)
        outputs.append(
            OutputTensor(t.plan.name, dtype, tuple(ref.shape), ref.rows_per_block, tuple(blocks))
        )
    return outputs, stats, taken


def _shape_record(t: TensorTask) -> TensorRecord:
    """The record a task's pieces are cut along: the reference's, else the first input's."""
    rec = t.reference if t.reference is not None else (t.base or t.inputs[0])
    assert rec is not None
    return rec


def base_rule_allows_budget(spec_base: BaseRule, has_base: bool) -> bool:
    return has_base
