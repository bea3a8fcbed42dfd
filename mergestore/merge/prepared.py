"""What a merge is before and after it runs, shared by the modules that run one: the prepared
merge (config, inputs, per-tensor tasks, block selection, plan body), its result, the engine
it is computed with, and the tree its outputs are published as.

Below run.py (prepare, execute, replay), executor.py, journal.py, materialize.py, memo.py and
the ray_* modules, which all take these from here: none of them imports run.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any

from mergestore import __version__
from mergestore.fast_dataclass import dataclass
from mergestore.merge import budget as budget_mod
from mergestore.merge.config import MergeConfig
from mergestore.merge.engine import Engine, OutputTensor, TensorTask
from mergestore.merge.inputs import PathInputs, ResolvedModel
from mergestore.merge.layout import build_tree
from mergestore.merge.tensorplan import OutputTensorPlan
from mergestore.ops import get_method
from mergestore.store.objects import Plan
from mergestore.store.repo import Repository

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
    """A finished merge: its commit, plan, run figures and outputs."""

    commit: bytes | None
    plan: bytes
    run: dict[str, Any]
    outputs: list[OutputTensor] = field(default_factory=list)
    out: dict[str, Any] | None = None  # merge --out: the folder written (outfolder.py)
    branch: str | None = None  # the full ref that moved
    previous: bytes | None = None  # where it was before (None: a new branch)


def find_base_index(cfg: MergeConfig, models: list[ResolvedModel]) -> int | None:
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
