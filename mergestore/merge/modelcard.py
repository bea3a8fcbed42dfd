"""The model card (README.md) a merge writes into its output tree, as mergekit 0.1.5 does.

The front matter and the body follow mergekit's card.py: ``base_model``, ``library_name:
transformers`` and ``tags: [mergekit, merge]``; the method linked to its paper; the models; the
exact YAML. mergestore adds what mergekit's card lacks: each input's commit id and source, the
plan id, and the command that replays the merge.

A commit cannot name itself inside its own tree (its id is the hash of that tree), so the card
names the plan id, and `mergestore replay <plan id>` finds the merge commit by its plan. The
card depends only on the merge (not on the branch or the time), so the same merge gives the
same tree; it is part of the commit, so `checkout` and `merge --out` give it byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from mergestore.merge.config import MergeConfig
    from mergestore.merge.inputs import ResolvedModel
    from mergestore.store.repo import Repository

CARD_FILE = "README.md"

# method: (mergekit's pretty name, its reference link, one line on what it does)
METHODS: dict[str, tuple[str, str | None, str]] = {
    "linear": ("Linear", "https://arxiv.org/abs/2203.05482", "a weighted average of the models"),
    "slerp": (
        "SLERP",
        "https://en.wikipedia.org/wiki/Slerp",
        "spherical interpolation between two models",
    ),
    "nuslerp": (
        "NuSLERP",
        None,
        "spherical interpolation of two models (or their task vectors), row or column wise",
    ),
    "multislerp": (
        "Multi-SLERP",
        "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
        "barycentric spherical interpolation of several models",
    ),
    "karcher": (
        "Karcher Mean",
        "https://arxiv.org/abs/2603.04972",
        "the Riemannian (Karcher) mean of the models on the sphere",
    ),
    "task_arithmetic": (
        "Task Arithmetic",
        "https://arxiv.org/abs/2212.04089",
        "the base plus a weighted sum of task vectors (model minus base)",
    ),
    "ties": (
        "TIES",
        "https://arxiv.org/abs/2306.01708",
        "task vectors trimmed to their largest entries, signs elected, disjoint mean",
    ),
    "dare_ties": (
        "DARE TIES",
        "https://arxiv.org/abs/2311.03099",
        "task vectors randomly dropped and rescaled, then TIES sign election",
    ),
    "dare_linear": (
        "Linear DARE",
        "https://arxiv.org/abs/2311.03099",
        "task vectors randomly dropped and rescaled, then summed",
    ),
    "breadcrumbs": (
        "Model Breadcrumbs",
        "https://arxiv.org/abs/2312.06795",
        "task vectors with their largest and smallest entries removed, then summed",
    ),
    "breadcrumbs_ties": (
        "Model Breadcrumbs with TIES",
        "https://arxiv.org/abs/2312.06795",
        "breadcrumbs sparsification, then TIES sign election",
    ),
    "della": (
        "DELLA",
        "https://arxiv.org/abs/2406.11617",
        "task vectors dropped with magnitude-ranked probabilities, then TIES sign election",
    ),
    "della_linear": (
        "Linear DELLA",
        "https://arxiv.org/abs/2406.11617",
        "task vectors dropped with magnitude-ranked probabilities, then summed",
    ),
    "model_stock": (
        "Model Stock",
        "https://arxiv.org/abs/2403.19522",
        "the models' average pulled toward the base by their angle",
    ),
    "sce": (
        "SCE",
        "https://arxiv.org/abs/2408.07990",
        "select high-variance entries, calculate weights, erase minority signs",
    ),
    "nearswap": (
        "NearSwap",
        "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
        "the base's values kept where they are near the secondary model's",
    ),
    "arcee_fusion": (
        "Arcee Fusion",
        "https://arcee.ai",
        "the base with the model's most important changes fused in",
    ),
    "ram": (
        "Reinforced Agent Merging",
        "https://arxiv.org/abs/2601.13572",
        "task vectors averaged where they overlap, kept where they do not",
    ),
    "ramplus_tl": (
        "Reinforced Agent Merging Plus (Tensor-Local)",
        "https://arxiv.org/abs/2601.13572",
        "RAM with overlap rescaling decided per tensor",
    ),
    "passthrough": ("Passthrough", None, "tensors copied unchanged (layer stacking)"),
}


def method_md(method: str) -> str:
    name, url, _ = METHODS.get(method, (method, None, ""))
    return f"[{name}]({url})" if url else name


def source_name(repo: Repository, model: ResolvedModel) -> str:
    """The name an input was recorded under: its hub id (and revision) if it came from the
    Hugging Face Hub, else the reference as the config writes it."""
    meta = repo.get_commit(model.commit).meta
    hub = meta.get("hub_id")
    if hub:
        return hub
    return model.ref.text


def _md_ref(name: str, repo_id: bool) -> str:
    return f"[{name}](https://huggingface.co/{name})" if repo_id else name


def model_card(
    repo: Repository,
    cfg: MergeConfig,
    models: Sequence[ResolvedModel],
    *,
    plan_id: bytes,
    config_yaml: str,
) -> str:
    """README.md text for a merge (deterministic: the same inputs give the same bytes);
    `config_yaml` is the merge's mergekit_config.yml, shown as mergekit's card shows it."""
    names = {m.ref.text: source_name(repo, m) for m in models}
    hub = {m.ref.text: bool(repo.get_commit(m.commit).meta.get("hub_id")) for m in models}

    def ref_md(text: str) -> str:
        return _md_ref(names.get(text, text), hub.get(text, False))

    base = cfg.base_model.text if cfg.base_model is not None else None
    actual_base = None if cfg.merge_method == "slerp" else base  # as mergekit's card does
    base_text = f" using {ref_md(actual_base)} as a base" if actual_base else ""
    bullets = [f"* {ref_md(m.ref.text)}" for m in models if m.ref.text != actual_base]
    seen: list[str] = []
    for m in models:
        if names[m.ref.text] not in seen:
            seen.append(names[m.ref.text])
    metadata = yaml.dump(
        {"base_model": seen, "tags": ["mergekit", "merge"], "library_name": "transformers"}
    ).rstrip("\n")
    _, _, line = METHODS.get(cfg.merge_method, (cfg.merge_method, None, ""))
    rows = "\n".join(f"| {m.ref.text} | `{m.commit.hex()}` | {names[m.ref.text]} |" for m in models)
    config_yaml = config_yaml.rstrip("\n")
    return f"""---
{metadata}
---
# Untitled Model (1)

This is a merge of pre-trained language models created with mergekit's methods \
([mergekit](https://github.com/cg123/mergekit)), run and stored by mergestore.

## Merge Details
### Merge Method

This model was merged using the {method_md(cfg.merge_method)} merge method{base_text}: \
{line}.

### Models Merged

The following models were included in the merge:
{chr(10).join(bullets)}

### Configuration

The following YAML configuration was used to produce this model:

```yaml
{config_yaml}
```

## Provenance (mergestore)

| input | commit | source |
|---|---|---|
{rows}

- plan: `{plan_id.hex()}`
- replay: `mergestore replay {plan_id.hex()[:16]}` re-executes the plan and checks every
  output block (a plan id, or the merge commit's id or branch).
- merge commit: `mergestore log --oneline --all` lists it; a commit cannot name itself inside
  its own files, whose hash it is, so the card names the plan, which the commit points at.
"""
