"""Multi-step recipes: mergekit-multi's multi-document YAML, each step a commit.

Every document is a merge config with a `name` (one document may leave it out: the final
merge). A step refers to an earlier one by using its name as a model (in `models`, `slices`
sources, `base_model` or `tokenizer_source`). Steps run in dependency order; step NAME becomes
a commit on branch `<prefix>/NAME` (the unnamed one on `<prefix>/final`), and a later step
reads it through that branch. With the memo, a step whose plan is unchanged is not computed
again (as make skips targets that are up to date). Duplicate names, cycles and model names
that are neither a step, a store ref nor a path are refused before any work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from mergestore.errors import MergeError, RefError
from mergestore.fast_dataclass import dataclass
from mergestore.merge.config import MergeConfig, _Loader, config_from_mapping, models_in_config
from mergestore.store.refs import check_new_ref_name, check_ref_name
from mergestore.store.repo import Repository

FINAL = "final"
_REF_KEYS = frozenset({"model", "base_model", "tokenizer_source", "path"})


@dataclass
class Step:
    """One merge of a recipe: its name, config document and the steps it needs."""

    name: str
    doc: dict[str, Any]
    deps: list[str] = field(default_factory=list)


def is_recipe(text: str) -> bool:
    """More than one YAML document, or one with a `name`: a recipe, not a single merge."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]  # noqa: S506
    except yaml.YAMLError:
        return False  # load_config reports the problem
    return len(docs) > 1 or (len(docs) == 1 and isinstance(docs[0], Mapping) and "name" in docs[0])


def load_recipe(text: str) -> list[Step]:
    """The recipe's steps in dependency order (validated: names, configs, no cycles)."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]  # noqa: S506
    except yaml.YAMLError as e:
        raise MergeError(f"recipe: invalid YAML: {e}") from None
    steps: dict[str, Step] = {}
    for i, doc in enumerate(docs):
        if not isinstance(doc, Mapping):
            raise MergeError(f"recipe: document {i + 1} is not a mapping")
        doc = dict(doc)
        name = doc.pop("name", None)
        if name is None:
            name = FINAL
            if FINAL in steps:
                raise MergeError("recipe: more than one unnamed step (only the final may be)")
        if not isinstance(name, str) or not name:
            raise MergeError(f"recipe: document {i + 1}: name must be a string")
        try:
            check_ref_name(name, "step")
        except RefError as e:
            raise MergeError(f"recipe: {e}") from None
        if name in steps:
            raise MergeError(f"recipe: duplicate step name {name!r}")
        try:
            config_from_mapping(doc)
        except MergeError as e:
            raise MergeError(f"recipe step {name!r}: {e}") from None
        steps[name] = Step(name, doc)
    for s in steps.values():
        cfg = config_from_mapping(s.doc)
        s.deps = [m.text for m in models_in_config(cfg) if m.text in steps]
        if cfg.tokenizer_source in steps and cfg.tokenizer_source not in s.deps:
            s.deps.append(cfg.tokenizer_source)
    return _order(steps)


def _order(steps: dict[str, Step]) -> list[Step]:
    out: list[Step] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*chain[chain.index(name) :], name])
            raise MergeError(f"recipe: steps depend on each other in a cycle: {cycle}")
        state[name] = 1
        for d in steps[name].deps:
            visit(d, [*chain, name])
        state[name] = 2
        out.append(steps[name])

    for name in steps:
        visit(name, [])
    return out


def _patch(value: Any, names: Mapping[str, str], key: str | None = None) -> Any:
    """Replace step names used as models by their branches (as mergekit-multi patches paths)."""
    if isinstance(value, list):
        return [_patch(v, names, key) for v in value]
    if isinstance(value, Mapping):
        return {k: _patch(v, names, k) for k, v in value.items()}
    if isinstance(value, str) and key in (*_REF_KEYS, "models", "sources") and value in names:
        return names[value]
    return value


def step_config(step: Step, branches: Mapping[str, str]) -> MergeConfig:
    """The step's config with earlier steps' names replaced by their branches."""
    doc = _patch(step.doc, branches)
    raw = f"# recipe step {step.name}\n" + yaml.safe_dump(doc, sort_keys=False)
    return config_from_mapping(doc, raw_text=raw)


def check_models(repo: Repository, steps: list[Step]) -> None:
    """Every model a step names is a step, a store ref or a path: else refuse, before work."""
    names = {s.name for s in steps}
    for s in steps:
        for m in models_in_config(config_from_mapping(s.doc)):
            if m.text in names:
                continue
            try:
                repo.resolve(m.text)
                continue
            except RefError:
                pass
            if not Path(os.path.expanduser(m.text)).exists():
                raise MergeError(
                    f"recipe step {s.name!r}: unknown step or model {m.text!r} "
                    "(not a step name, a store ref nor a path)"
                )


Runner = Callable[[Step, MergeConfig, str], Any]


def run_recipe(repo: Repository, text: str, prefix: str, run_step: Runner) -> list[Any]:
    """Validate the whole recipe, then run its steps in order; `run_step(step, cfg, branch)`
    publishes one (the memo skips an unchanged one). Returns what each call returned."""
    check_new_ref_name(prefix)
    steps = load_recipe(text)
    check_models(repo, steps)
    branches = {s.name: f"{prefix}/{s.name}" for s in steps}
    for b in branches.values():
        check_new_ref_name(b)
    return [run_step(s, step_config(s, branches), branches[s.name]) for s in steps]
