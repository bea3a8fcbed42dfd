"""The ``mergekit_config.yml`` a merge writes into its output: a config mergekit can run.

mergekit writes the config it ran next to its output; so does a merge here. The store's own
names (``main``, ``math``, a folder, ``base+adapter``) mean nothing outside the store, so every
model is named by what reproduces it elsewhere:

- the Hugging Face id and the revision sha (``org/name@<sha>``) where the input commit was
  committed from the Hub (its metadata records both): mergekit fetches it itself;
- else the input's commit id (all 64 hex digits). mergekit reads a model name that is a local
  folder as that folder, so a user checks each commit out under its id, in the folder where
  mergekit-yaml runs: ``mergestore checkout <id> <id>``. A ``base+adapter`` input is named by
  the commit of the adapter applied to the base, which checks out as a full model.

The store-local names are kept in comments (one per model line, and a table in the header),
with the commands to run. ``seed:`` (mergestore's extension) is not written, as mergekit takes
the seed on its command line (``--random-seed``, given in the header for methods that draw
random numbers). The text is a pure function of the merge (config and input commits), so the
same merge gives the same tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from mergestore.merge.config import MergeConfig
    from mergestore.merge.inputs import ResolvedModel
    from mergestore.store.repo import Repository

CONFIG_FILE = "mergekit_config.yml"


def runnable_name(repo: Repository, model: ResolvedModel) -> str:
    """What mergekit is given for one input: ``hub_id@sha`` if it came from the Hub, else the
    commit id (a folder of that name, made by ``mergestore checkout``)."""
    meta = repo.get_commit(model.commit).meta
    hub, rev = meta.get("hub_id"), meta.get("hub_revision")
    if hub:
        return f"{hub}@{rev}" if rev else hub
    return model.commit.hex()


def _renamed(data: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """``MergeConfig.to_dict()`` with every model reference replaced through `names`."""

    def ref(text: str) -> str:
        return names.get(text, text)

    out = dict(data)
    out.pop("seed", None)
    if "base_model" in out:
        out["base_model"] = ref(out["base_model"])
    if "models" in out:
        out["models"] = [{**m, "model": ref(m["model"])} for m in out["models"]]
    if "slices" in out:
        slices = []
        for sl in out["slices"]:
            sl = {**sl, "sources": [{**s, "model": ref(s["model"])} for s in sl["sources"]]}
            if "base_model" in sl:
                sl["base_model"] = ref(sl["base_model"])
            slices.append(sl)
        out["slices"] = slices
    if out.get("tokenizer_source") not in (None, "base", "union"):
        out["tokenizer_source"] = ref(out["tokenizer_source"])
    if out.get("tokenizer"):  # the tokenizer: block (source, tokens.<t>.source)
        tok = dict(out["tokenizer"])
        if tok.get("source") not in (None, "base", "union"):
            tok["source"] = ref(tok["source"])
        tokens = {}
        for name, spec in (tok.get("tokens") or {}).items():
            spec = dict(spec)
            src = spec.get("source")
            if isinstance(src, str):
                spec["source"] = ref(src)
            elif isinstance(src, dict) and "model" in src:
                spec["source"] = {**src, "model": ref(src["model"])}
            tokens[name] = spec
        if tokens:
            tok["tokens"] = tokens
        out["tokenizer"] = tok
    return out


def mergekit_config_text(
    repo: Repository, cfg: MergeConfig, models: Sequence[ResolvedModel]
) -> str:
    """The text of ``mergekit_config.yml`` for a merge of `models` (resolved from `cfg`)."""
    from mergestore.ops import get_method

    names = {m.ref.text: runnable_name(repo, m) for m in models}
    from_hub = {names[m.ref.text] for m in models if repo.get_commit(m.commit).meta.get("hub_id")}
    labels: dict[str, list[str]] = {}  # runnable name -> the store names it stands for
    for text, name in names.items():
        labels.setdefault(name, []).append(text)
    body = yaml.safe_dump(
        _renamed(cfg.to_dict(), names), sort_keys=False, default_flow_style=None, width=10_000
    )
    lines = []
    for line in body.splitlines():
        value = line.rstrip().rstrip("'\"")
        hit = next((n for n in labels if value.endswith(n)), None)
        lines.append(f"{line}  # {', '.join(labels[hit])}" if hit else line)
    head = [
        "# This merge's config, for mergekit (written by mergestore). Models are named by their",
        "# mergestore commit id, or org/name@revision where one came from the Hugging Face Hub.",
        "# mergekit reads a model name that is a local folder as that folder; to run this, check",
        "# each commit out under its id in the folder where you run mergekit-yaml:",
    ]
    head += [f"#   mergestore checkout {n} {n}" for n in labels if n not in from_hub]
    random = get_method(cfg.merge_method).random
    seed = f" --random-seed {cfg.seed or 0}" if random else ""
    head.append(f"#   mergekit-yaml mergekit_config.yml ./merged{seed}")
    head.append(
        "# (offline, add --no-write-model-card: mergekit's card asks the Hub about each name)"
    )
    if random:
        head.append("# (this method draws random numbers; mergekit draws them in another order")
        head.append("# than mergestore, so its tensors will differ from this merge's)")
    head.append("# The models as this store names them:")
    width = max(len(n) for n in labels)
    head += [f"#   {n:<{width}}  {', '.join(texts)}" for n, texts in labels.items()]
    return "\n".join(head + lines) + "\n"
