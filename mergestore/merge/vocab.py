"""Tokenizer merges as mergekit 0.1.5 makes them: ``tokenizer_source: union | base | MODEL`` and
``tokenizer: {source, tokens, pad_to_multiple_of}``.

Two halves, each a port of mergekit's own code (mergekit/tokenizer/build.py and embed.py):

- `build_vocab` (before any tensor is read): the output tokenizer, built with the ``tokenizers``
  library from the inputs' tokenizer.json files, and for every input model the row of each
  output token in that model's vocabulary tensors (-1: the model lacks the token).
  ``union`` starts from the base's tokenizer (stripped of tokens beyond its config's
  ``vocab_size``), adds the other models' plain tokens it lacks, then every model's added
  tokens (chat tokens like ``<|im_start|>``) with their settings; ``tokenizer.tokens`` keys are
  added last.
- `VocabFit.fit` (per vocabulary tensor, embed_tokens and lm_head, in the engine's loader):
  each input's tensor laid out in the output vocabulary. A token a model lacks gets a default
  row: the only model that has it, else the base's row, else the mean of the models that have
  it (in config order), else zeros; or what ``tokenizer.tokens`` says (``force`` applies it to
  every model). Rows added by ``pad_to_multiple_of`` are the mean of the real rows.

Where mergekit's result depends on Python's set or hash order (the order of the models whose
new tokens a union adds, and of plain new tokens within one model), this takes the config's
order (base first) and each model's token ids: the same vocabulary on every run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mergestore.errors import MergeError
from mergestore.fast_dataclass import dataclass
from mergestore.merge.preflight import VOCAB_MARKERS

if TYPE_CHECKING:
    import torch

    from mergestore.merge.config import MergeConfig, TokenSpec
    from mergestore.merge.inputs import ResolvedModel
    from mergestore.store.repo import Repository

TOKENIZER_JSON = "tokenizer.json"
# Written with the merged tokenizer.json: the source model's settings (chat template, special
# token names). Other tokenizer files (tokenizer.model, vocab.json, merges.txt, ...) would
# disagree with the merged vocabulary, so they are left out, as mergekit's output has none.
KEPT_FILES = ("tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Recipe:
    """How a token's default row is made: kind "model" (row `row` of model `model`, or its row
    for the token when row is None), "zero", or "average" (of the models that have it)."""

    kind: str
    model: int | None = None
    row: int | None = None


@dataclass(frozen=True)
class VocabFit:
    """The merged vocabulary and each model's rows in it (picklable: Ray workers get it)."""

    n_tokens: int  # tokens in the output vocabulary
    rows: int  # output rows: n_tokens padded to pad_to_multiple_of
    perm: dict[int, tuple[int, ...]]  # model index -> its row for each output token id, or -1
    base: int | None  # model index of the base model
    configured: dict[int, tuple[Recipe | None, bool]]  # token id -> (tokens: source, force)
    tokenizer_json: bytes
    source: int  # model index whose tokenizer_config.json / special_tokens_map.json are kept

    def applies(self, name: str) -> bool:
        """A vocabulary tensor: the weight of a module named as embeddings or LM heads are
        (model.embed_tokens.weight, lm_head.weight, wte, word_embeddings, embed_in/out);
        not, say, BLOOM's word_embeddings_layernorm.weight."""
        parts = name.split(".")
        return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in VOCAB_MARKERS

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (self.rows, *shape[1:])

    def fit(
        self, tensors: Sequence[tuple[int, torch.Tensor]], dtype: torch.dtype | None
    ) -> list[torch.Tensor]:
        """mergekit's PermutedVocabulary: each (model index, tensor) laid out in the output
        vocabulary, in the inputs' promoted dtype (after the config's dtype, as mergekit's
        GatherTensors casts). Same order as given; that order is the averaging order."""
        import torch

        models = [m for m, _ in tensors]
        views = [t if dtype is None else t.to(dtype) for _, t in tensors]
        for m, v in zip(models, views, strict=True):
            if v.dim() == 0 or v.shape[1:] != views[0].shape[1:]:
                raise MergeError(
                    f"vocabulary tensor shapes {[tuple(x.shape) for x in views]} differ beyond"
                    " the vocabulary axis"
                )
            bad = max(self.perm[m], default=-1)
            if bad >= v.shape[0]:
                raise MergeError(
                    f"a vocabulary tensor of model #{m} has {v.shape[0]} rows but its"
                    f" tokenizer uses row {bad}"
                )
        out_dtype = views[0].dtype
        for v in views:
            out_dtype = torch.promote_types(out_dtype, v.dtype)
        token_shape = tuple(views[0].shape[1:])
        perms = [self.perm[m] for m in models]
        defaults = self._defaults(models, views, perms, out_dtype, token_shape)
        result = []
        for v, p in zip(views, perms, strict=True):
            new = torch.zeros((self.rows, *token_shape), dtype=out_dtype)
            src = torch.tensor(p, dtype=torch.long)
            keep = src >= 0
            for tid, (_recipe, force) in self.configured.items():
                if force:
                    keep[tid] = False
            ids = torch.nonzero(keep).flatten()
            new[ids] = v[src[ids]].to(out_dtype)
            for tid, embed in defaults.items():
                if not keep[tid]:
                    new[tid] = embed
            if self.rows > self.n_tokens:
                # as mergekit: https://nlp.stanford.edu/~johnhew/vocab-expansion.html
                new[self.n_tokens :] = torch.mean(new[: self.n_tokens], dim=0)
            result.append(new)
        return result

    def _defaults(
        self,
        models: list[int],
        views: list[torch.Tensor],
        perms: list[tuple[int, ...]],
        dtype: torch.dtype,
        token_shape: tuple[int, ...],
    ) -> dict[int, torch.Tensor]:
        """mergekit's assign_embedding_sources + compute_default_embedding, for the tokens
        some model lacks (or whose tokens: entry says force)."""
        import torch

        out: dict[int, torch.Tensor] = {}
        wanted = set(self.configured)
        for p in perms:
            wanted.update(i for i, r in enumerate(p) if r < 0)
        for tid in sorted(wanted):
            has = [p[tid] >= 0 for p in perms]
            recipe, force = self.configured.get(tid, (None, False))
            if all(has) and not force:
                continue
            if recipe is None:
                recipe = self._assign(models, has, tid)
            if recipe.kind == "average":
                embed = torch.zeros(token_shape, dtype=dtype)
                count = 0
                for v, p in zip(views, perms, strict=True):
                    if p[tid] < 0:
                        continue
                    embed = embed + v[p[tid]]
                    count += 1
                embed /= count
            elif recipe.kind == "zero":
                embed = views[0].new_zeros(token_shape)
            else:
                assert recipe.model is not None
                if recipe.model not in models:
                    raise MergeError(
                        f"tokenizer.tokens: token #{tid} takes its row from model"
                        f" #{recipe.model}, which does not have this tensor"
                    )
                k = models.index(recipe.model)
                row = recipe.row if recipe.row is not None else perms[k][tid]
                if row < 0 or row >= views[k].shape[0]:
                    raise MergeError(
                        f"tokenizer.tokens: token #{tid}: model #{recipe.model} has no row for it"
                    )
                embed = views[k][row]
            out[tid] = embed
        return out

    def _assign(self, models: list[int], has: list[bool], tid: int) -> Recipe:
        present = sum(has)
        if present == 1:
            return Recipe("model", models[has.index(True)])
        if present == 0:
            return Recipe("zero")
        if self.base is not None and self.base in models and has[models.index(self.base)]:
            return Recipe("model", self.base)
        return Recipe("average")


# -- building the tokenizer -----------------------------------------------------------------


def build_vocab(
    repo: Repository,
    cfg: MergeConfig,
    models: Sequence[ResolvedModel],
    base_index: int | None,
) -> VocabFit | None:
    """The merged tokenizer and each model's permutation (None without tokenizer_source).
    A model not stored yet (a folder, in merge/precheck.py) is read from its folder."""
    source = cfg.tokenizer_source
    if source is None:
        return None
    try:
        import tokenizers
    except ImportError:
        raise MergeError(
            f"tokenizer_source: {source} needs the tokenizers library:"
            " pip install 'mergestore[tokenizers]'"
        ) from None
    base = base_index if base_index is not None else 0
    base_tok = _load_tokenizer(repo, models[base], required=True)
    assert base_tok is not None
    base_tok = _stripped(base_tok, _config_vocab(repo, models[base]), models[base].ref.text)
    toks: dict[int, Any] = {base: base_tok}
    for i, m in enumerate(models):
        if i != base:
            tok = _load_tokenizer(repo, m, required=False)
            if tok is not None:  # mergekit: "Assuming same as base"
                toks[i] = tok
    if source == "union":
        out = _union(base_tok, toks, {i: _config_vocab(repo, models[i]) for i in toks})
        src_index = base
    elif source == "base":
        out = tokenizers.Tokenizer.from_str(base_tok.to_str())
        src_index = base
    else:
        src_index = _model_index(models, source, "tokenizer_source")
        out = _load_tokenizer(repo, models[src_index], required=True)
    existing = set(out.get_vocab(with_added_tokens=True))
    for tok, _spec in cfg.tokenizer_tokens:
        if tok not in existing:
            out.add_tokens([tok])
            existing.add(tok)
    vocab = out.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise MergeError("tokenizer: the merged vocabulary's token ids are not 0..N-1")
    perm = {}
    for i, m in enumerate(models):
        tok = toks.get(i, toks[base])
        mv = tok.get_vocab(with_added_tokens=True)
        size = _config_vocab(repo, m) or len(mv)
        perm[i] = tuple(
            r if (r := mv.get(t, -1)) < size else -1 for t, _ in by_id
        )  # mergekit skips (and then fails on) a row past the model's vocab_size
    n = len(by_id)
    rows = n
    pad = cfg.pad_to_multiple_of
    if pad and n % pad:
        rows = (n // pad + 1) * pad
    configured = {
        vocab[tok]: _recipe(spec, models, toks, base, tok) for tok, spec in cfg.tokenizer_tokens
    }
    return VocabFit(
        n_tokens=n,
        rows=rows,
        perm=perm,
        base=base_index,
        configured=configured,
        tokenizer_json=out.to_str(pretty=True).encode(),
        source=src_index,
    )


def tokenizer_files(repo: Repository, fit: VocabFit, models: Sequence[ResolvedModel]) -> dict:
    """The output's tokenizer files: the merged tokenizer.json and the source model's
    tokenizer_config.json and special_tokens_map.json (when it has them)."""
    files = {TOKENIZER_JSON: fit.tokenizer_json}
    for name in KEPT_FILES:
        data = _file(repo, models[fit.source], name)
        if data is not None:
            files[name] = data
    return files


def _recipe(
    spec: TokenSpec, models: Sequence[ResolvedModel], toks: dict[int, Any], base: int, tok: str
) -> tuple[Recipe | None, bool]:
    where = f"tokenizer.tokens[{tok!r}]"
    if spec.kind is None:
        return None, spec.force
    if spec.kind == "zero":
        return Recipe("zero"), spec.force
    assert spec.model is not None
    mi = _model_index(models, spec.model, f"{where}.source")
    if spec.kind == "model":
        return Recipe("model", mi), spec.force
    row = spec.token_id
    if spec.token is not None:
        mv = toks.get(mi, toks[base]).get_vocab(with_added_tokens=True)
        if spec.token not in mv:
            raise MergeError(f"{where}: token {spec.token!r} is not in {spec.model}'s vocabulary")
        row = mv[spec.token]
    return Recipe("model", mi, row), spec.force


def _model_index(models: Sequence[ResolvedModel], name: str, where: str) -> int:
    for i, m in enumerate(models):
        if m.ref.text == name:
            return i
    raise MergeError(f"{where}: {name!r} is not one of the merge's models")


def _union(base_tok: Any, toks: dict[int, Any], sizes: dict[int, int | None]) -> Any:
    """mergekit's build_union_tokenizer, models in config order (base first)."""
    import tokenizers

    out_vocab: dict[str, None] = {}
    out_added: dict[str, Any] = {}
    for i, tok in toks.items():
        size = sizes[i] or tok.get_vocab_size(with_added_tokens=False)
        vocab = tok.get_vocab(with_added_tokens=True)
        for t, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
            if idx < size:
                out_vocab.setdefault(t, None)
        for idx, info in sorted(tok.get_added_tokens_decoder().items()):
            if idx < size and info.content not in out_added:
                out_added[info.content] = info
    res = tokenizers.Tokenizer.from_str(base_tok.to_str())
    base_vocab = base_tok.get_vocab(with_added_tokens=True)
    for t in out_vocab:
        if t not in out_added and t not in base_vocab:
            res.add_tokens([t])
    for info in out_added.values():
        res.add_tokens([info])
    return res


def _stripped(tok: Any, vocab_size: int | None, name: str) -> Any:
    """mergekit's get_stripped_tokenizer: drop tokens with ids at or past the model's
    vocab_size (BPE only, as mergekit)."""
    import tokenizers

    size = vocab_size or tok.get_vocab_size(with_added_tokens=True)
    unused = {t for t, i in tok.get_vocab(with_added_tokens=True).items() if i >= size}
    if not unused:
        return tok
    doc = json.loads(tok.to_str())
    if doc["model"]["type"] != "BPE":
        raise MergeError(
            f"tokenizer of {name} has type {doc['model']['type']} and tokens past its"
            " vocab_size: only BPE tokenizers can be stripped for a tokenizer merge"
        )
    doc["added_tokens"] = [e for e in doc["added_tokens"] if e["id"] < size]
    for t in unused:
        doc["model"]["vocab"].pop(t, None)

    def keep(m: Any) -> bool:
        parts = m.split(" ") if isinstance(m, str) else m
        return not any(p in unused for p in parts)

    doc["model"]["merges"] = [m for m in doc["model"]["merges"] if keep(m)]
    return tokenizers.Tokenizer.from_str(json.dumps(doc))


def _load_tokenizer(repo: Repository, m: ResolvedModel, *, required: bool) -> Any:
    import tokenizers

    data = _file(repo, m, TOKENIZER_JSON)
    if data is None:
        if required:
            raise MergeError(f"tokenizer merge: {m.ref.text} has no {TOKENIZER_JSON}")
        return None
    try:
        return tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - the library's own parse errors, one line
        msg = " ".join(str(e).split())
        raise MergeError(f"tokenizer merge: {m.ref.text}'s {TOKENIZER_JSON}: {msg}") from None


def _config_vocab(repo: Repository, m: ResolvedModel) -> int | None:
    data = _file(repo, m, "config.json")
    try:
        cfg = json.loads(data) if data is not None else None
    except ValueError:
        return None
    if not isinstance(cfg, dict):
        return None
    v = cfg.get("vocab_size")
    if v is None and isinstance(cfg.get("text_config"), dict):
        v = cfg["text_config"].get("vocab_size")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _file(repo: Repository, m: ResolvedModel, path: str) -> bytes | None:
    """A file of model `m`: from its commit, or from its folder when it is not stored yet."""
    if m.committed_from_path and not m.commit:
        from pathlib import Path

        f = Path(m.ref.text).expanduser() / path
        try:
            return f.read_bytes() if f.is_file() else None
        except OSError as e:
            raise MergeError(f"tokenizer merge: cannot read {f}: {e.strerror}") from None
    from mergestore.merge.layout import _known_tree, _read_blob

    for e in _known_tree(repo, m.commit).entries:
        if e.path == path and e.kind == "blob":
            return _read_blob(repo, e.object)
    return None
