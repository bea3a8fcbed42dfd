"""Merge configurations: the mergekit-0.1.5 YAML format, the CLI form, and validation.

A config is parsed into small frozen objects (``MergeConfig`` and friends) and checked against a
method's declaration (``ops.spec.MethodSpec``) before any tensor is read. Per-tensor resolution of
parameter values (filters, gradients, precedence) lives in ``merge.tensorplan``.

Every problem a user can cause raises ``MergeError`` with a one-line message that says where in
the config the problem is. See docs/merge-config.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from mergestore.errors import MergeError, did_you_mean
from mergestore.fast_dataclass import dataclass
from mergestore.ops.spec import BaseRule, MethodSpec, ParamSpec, Scope

# ---------------------------------------------------------------------------------------------
# dtypes

# Canonical dtype names, and the spellings accepted for each ("torch." prefixes are stripped
# first, as mergekit does).
DTYPE_NAMES: dict[str, str] = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float64": "float64",
    "fp64": "float64",
    "double": "float64",
}


def normalize_dtype(name: Any, where: str = "dtype") -> str | None:
    """The canonical name ("bfloat16", ...) for a dtype spelling, or None for None."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise MergeError(f"merge config: {where} must be a dtype name, got {name!r}")
    key = name.strip().lower()
    if key.startswith("torch."):
        key = key[len("torch.") :]
    if key not in DTYPE_NAMES:
        known = "float16, bfloat16, float32, float64"
        raise MergeError(f"merge config: {where}: unknown dtype {name!r} (known: {known})")
    return DTYPE_NAMES[key]


# ---------------------------------------------------------------------------------------------
# parameter values: scalar, gradient, or a list of filtered conditionals

Leaf = bool | int | float | str


@dataclass(frozen=True)
class Scalar:
    """One value for every tensor."""

    value: Leaf

    def evaluate(self, tensor_name: str, t: float) -> Leaf:
        return self.value

    def to_json(self) -> Any:
        return self.value


@dataclass(frozen=True)
class Gradient:
    """A list of values spread evenly over t in [0, 1].

    Numbers are interpolated piecewise-linearly (mergekit's exact float expression, so results
    match it bit for bit); bools and strings pick the entry at floor(t * (n - 1)).
    """

    values: tuple[Leaf, ...]

    @property
    def numeric(self) -> bool:
        return all(_is_number(v) for v in self.values)

    def evaluate(self, tensor_name: str, t: float) -> Leaf:
        n = len(self.values)
        if not self.numeric:
            return self.values[int(t * (n - 1))]
        scaled = t * (n - 1)
        i0 = int(scaled)
        i1 = min(n - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * self.values[i0] + frac * self.values[i1]

    def to_json(self) -> Any:
        return list(self.values)


@dataclass(frozen=True)
class Conditional:
    """One ``{filter, value}`` entry; filter None or "*" matches every tensor."""

    filter: str | None
    value: Scalar | Gradient

    def matches(self, tensor_name: str) -> bool:
        return self.filter is None or self.filter == "*" or self.filter in tensor_name

    def to_json(self) -> Any:
        out: dict[str, Any] = {}
        if self.filter is not None:
            out["filter"] = self.filter
        out["value"] = self.value.to_json()
        return out


@dataclass(frozen=True)
class Conditionals:
    """Filtered values: the first entry whose filter is a substring of the tensor name wins."""

    entries: tuple[Conditional, ...]

    def evaluate(self, tensor_name: str, t: float) -> Leaf | None:
        """The value for this tensor, or None when no filter matches (try the next level)."""
        for entry in self.entries:
            if entry.matches(tensor_name):
                return entry.value.evaluate(tensor_name, t)
        return None

    def to_json(self) -> Any:
        return [e.to_json() for e in self.entries]


ParamValue = Scalar | Gradient | Conditionals


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_leaf(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str))


def _parse_scalar_or_gradient(raw: Any, where: str) -> Scalar | Gradient:
    if _is_leaf(raw):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise MergeError(f"merge config: {where}: value must be finite, got {raw}")
        return Scalar(raw)
    if isinstance(raw, list):
        if not raw:
            raise MergeError(f"merge config: {where}: a gradient needs at least one value")
        if not all(_is_leaf(v) for v in raw):
            raise MergeError(
                f"merge config: {where}: a gradient is a list of numbers, got {_short(raw)}"
            )
        if all(_is_number(v) for v in raw):
            if not all(math.isfinite(v) for v in raw):
                raise MergeError(f"merge config: {where}: gradient values must be finite")
        elif not (all(isinstance(v, bool) for v in raw) or all(isinstance(v, str) for v in raw)):
            raise MergeError(
                f"merge config: {where}: a gradient mixes numbers, bools or strings: {_short(raw)}"
            )
        return Gradient(tuple(raw))
    raise MergeError(
        f"merge config: {where}: expected a number, a gradient list or {{filter, value}} entries,"
        f" got {_short(raw)}"
    )


def _parse_conditional(raw: Mapping[str, Any], where: str) -> Conditional:
    unknown = set(raw) - {"filter", "value"}
    if unknown:
        raise MergeError(
            f"merge config: {where}: unknown key {sorted(map(str, unknown))[0]!r}"
            " in a {filter, value} entry"
        )
    if "value" not in raw:
        raise MergeError(f"merge config: {where}: a {{filter, value}} entry needs 'value'")
    flt = raw.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise MergeError(f"merge config: {where}: filter must be a string, got {flt!r}")
    return Conditional(flt, _parse_scalar_or_gradient(raw["value"], where + ".value"))


def parse_param_value(raw: Any, where: str = "parameter") -> ParamValue:
    """Parse one parameter setting as written in YAML (or JSON) into a typed value."""
    if isinstance(raw, Mapping):  # a lone {filter, value} (accepted by mergekit 0.1.5)
        return Conditionals((_parse_conditional(raw, where),))
    if isinstance(raw, list) and raw and any(isinstance(e, Mapping) for e in raw):
        if not all(isinstance(e, Mapping) for e in raw):
            raise MergeError(
                f"merge config: {where}: a list mixes {{filter, value}} entries and plain values"
            )
        return Conditionals(
            tuple(_parse_conditional(e, f"{where}[{i}]") for i, e in enumerate(raw))
        )
    return _parse_scalar_or_gradient(raw, where)


def _parse_parameters(raw: Any, where: str) -> dict[str, ParamValue]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise MergeError(f"merge config: {where} must be a mapping of name: value")
    out: dict[str, ParamValue] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name:
            raise MergeError(
                f"merge config: {where}: parameter names must be strings, got {name!r}"
            )
        out[name] = parse_param_value(value, f"{where}.{name}")
    return out


def coerce_param(value: Any, spec: ParamSpec, where: str) -> Any:
    """Convert a resolved value to the parameter's declared kind, or raise MergeError."""
    if value is None:
        return None
    kind = spec.kind
    bad = MergeError(
        f"merge config: {where}: parameter {spec.name!r} must be {_kind_name(kind)}, got {value!r}"
    )
    if kind is bool:
        if isinstance(value, bool):
            return value
        if _is_number(value) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if _is_number(value):
            return float(value)
        if isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise bad from None
            if math.isfinite(out):
                return out
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    return value


def _kind_name(kind: type) -> str:
    return {bool: "a bool", int: "an integer", float: "a number", str: "a string"}.get(
        kind, kind.__name__
    )


# ---------------------------------------------------------------------------------------------
# the config objects


@dataclass(frozen=True)
class ModelRef:
    """A model as written in the config: a store ref ("main", "math", a commit id) or a path.

    Resolution to a commit or a directory happens elsewhere; two refs are the same model when
    their text is equal.
    """

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class InputModel:
    """One input: a model, its own parameters, and (slices form only) the layers it supplies."""

    ref: ModelRef
    parameters: dict[str, ParamValue] = field(default_factory=dict, hash=False)
    layer_range: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.ref.text}
        if self.layer_range is not None:
            out["layer_range"] = list(self.layer_range)
        if self.parameters:
            out["parameters"] = _params_to_json(self.parameters)
        return out


@dataclass(frozen=True)
class Slice:
    """One output slice: the same number of layers taken from each source, merged."""

    sources: tuple[InputModel, ...]
    parameters: dict[str, ParamValue] = field(default_factory=dict, hash=False)
    base_model: ModelRef | None = None

    @property
    def num_layers(self) -> int:
        lr = self.sources[0].layer_range
        assert lr is not None
        return lr[1] - lr[0]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sources": [s.to_dict() for s in self.sources]}
        if self.base_model is not None:
            out["base_model"] = self.base_model.text
        if self.parameters:
            out["parameters"] = _params_to_json(self.parameters)
        return out


@dataclass(frozen=True)
class TokenSpec:
    """mergekit's ``tokenizer.tokens.<token>``: where an added token's embedding row comes from.

    kind: "model" (the token's row in model `model`), "model_token" (the row of `token` or
    `token_id` in model `model`'s own vocabulary), "zero", or None (mergekit's default choice).
    `force`: use this source even for models that have the token.
    """

    kind: str | None = None
    model: str | None = None
    token: str | None = None
    token_id: int | None = None
    force: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kind == "model":
            out["source"] = self.model
        elif self.kind == "zero":
            out["source"] = {"kind": "zero"}
        elif self.kind == "model_token":
            src: dict[str, Any] = {"kind": "model_token", "model": self.model}
            src.update({"token": self.token} if self.token is not None else {})
            src.update({"token_id": self.token_id} if self.token_id is not None else {})
            out["source"] = src
        if self.force:
            out["force"] = True
        return out


@dataclass(frozen=True)
class MergeConfig:
    """A whole merge: method, inputs (``models`` or ``slices`` form) and options."""

    merge_method: str
    base_model: ModelRef | None = None
    models: tuple[InputModel, ...] | None = None
    slices: tuple[Slice, ...] | None = None
    parameters: dict[str, ParamValue] = field(default_factory=dict, hash=False)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None  # "base" | "union" | a model ref
    chat_template: str | None = None
    seed: int | None = None  # our extension (mergekit uses --random-seed)
    raw_text: str | None = field(default=None, compare=False)  # the verbatim YAML
    # mergekit's tokenizer: {tokens, pad_to_multiple_of} (tokenizer.source is tokenizer_source)
    tokenizer_tokens: tuple[tuple[str, TokenSpec], ...] = ()
    pad_to_multiple_of: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form (``raw_text`` is not part of it); parses back identically."""
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            out["base_model"] = self.base_model.text
        if self.models is not None:
            out["models"] = [m.to_dict() for m in self.models]
        if self.slices is not None:
            out["slices"] = [s.to_dict() for s in self.slices]
        if self.parameters:
            out["parameters"] = _params_to_json(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template", "seed"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.tokenizer_tokens or self.pad_to_multiple_of is not None:
            block: dict[str, Any] = {"source": out.pop("tokenizer_source")}
            if self.tokenizer_tokens:
                block["tokens"] = {tok: spec.to_dict() for tok, spec in self.tokenizer_tokens}
            if self.pad_to_multiple_of is not None:
                block["pad_to_multiple_of"] = self.pad_to_multiple_of
            out["tokenizer"] = block
        return out


def _params_to_json(params: Mapping[str, ParamValue]) -> dict[str, Any]:
    return {name: value.to_json() for name, value in params.items()}


# ---------------------------------------------------------------------------------------------
# YAML reading


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads 1e-5 as a float (YAML 1.1 needs a dot)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # complex keys are refused later as non-string names
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

_TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "modules",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "seed",
)


def load_config(path_or_text: str | Path) -> MergeConfig:
    """Read a merge config from a YAML file (a ``Path`` or a path string) or from YAML text."""
    if isinstance(path_or_text, Path) or _looks_like_path(path_or_text):
        path = Path(path_or_text)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MergeError(f"merge config {str(path)!r}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise MergeError(f"merge config {str(path)!r}: cannot read: {e}") from None
    elif isinstance(path_or_text, str):
        text = path_or_text
    else:
        raise MergeError(f"merge config must be a path or YAML text, got {type(path_or_text)}")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.composer.ComposerError as e:
        if "single document" in str(e):
            raise MergeError(
                "merge config: several YAML documents (mergekit-multi) are not supported"
            ) from None
        raise MergeError(f"merge config: invalid YAML: {_yaml_problem(e)}") from None
    except yaml.YAMLError as e:
        raise MergeError(f"merge config: invalid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, Mapping):
        got = "an empty document" if data is None else f"a {type(data).__name__}"
        raise MergeError(f"merge config must be a YAML mapping, got {got}")
    return config_from_mapping(data, raw_text=text)


def _looks_like_path(s: Any) -> bool:
    # YAML text for a config always has a "key: value" somewhere; a path never has ": " or "\n".
    return isinstance(s, str) and "\n" not in s and ": " not in s and not s.lstrip().startswith("{")


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"{e.problem or e.context}{where}"
    return " ".join(str(e).split())


def config_from_mapping(data: Mapping[str, Any], raw_text: str | None = None) -> MergeConfig:
    """Build a MergeConfig from an already-parsed mapping (YAML or ``MergeConfig.to_dict()``)."""
    for key in data:
        if key not in _TOP_KEYS:
            raise MergeError(f"merge config: unknown key {key!r} (known: {', '.join(_TOP_KEYS)})")
    if data.get("modules"):
        raise MergeError("merge config: 'modules:' (multi-module merges) is not supported yet")

    method = data.get("merge_method")
    if method is None:
        raise MergeError("merge config: 'merge_method' is required")
    if not isinstance(method, str) or not method.strip():
        raise MergeError(f"merge config: merge_method must be a name, got {method!r}")

    has_models, has_slices = bool(data.get("models")), bool(data.get("slices"))
    if has_models == has_slices:
        which = "both" if has_models else "neither"
        raise MergeError(f"merge config: give exactly one of 'models' or 'slices' (got {which})")

    base = _parse_ref(data["base_model"], "base_model") if data.get("base_model") else None
    models = _parse_models(data["models"]) if has_models else None
    slices = _parse_slices(data["slices"]) if has_slices else None

    if data.get("tokenizer_source") is not None and data.get("tokenizer") is not None:
        raise MergeError("merge config: give either 'tokenizer_source' or 'tokenizer', not both")
    tokenizer_source = None
    tokens: tuple[tuple[str, TokenSpec], ...] = ()
    pad_to = None
    if data.get("tokenizer_source") is not None:
        tokenizer_source = _parse_tokenizer_source(data["tokenizer_source"], "tokenizer_source")
    elif data.get("tokenizer") is not None:
        tokenizer_source, tokens, pad_to = _parse_tokenizer_block(data["tokenizer"])

    chat_template = data.get("chat_template")
    if chat_template is not None and not isinstance(chat_template, str):
        raise MergeError(f"merge config: chat_template must be a string, got {chat_template!r}")

    seed = data.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise MergeError(f"merge config: seed must be a non-negative integer, got {seed!r}")
    if seed is not None and seed >= 2**63:
        raise MergeError(f"merge config: seed must be below 2**63, got {seed}")

    return MergeConfig(
        merge_method=method.strip(),
        base_model=base,
        models=models,
        slices=slices,
        parameters=_parse_parameters(data.get("parameters"), "parameters"),
        dtype=normalize_dtype(data.get("dtype"), "dtype"),
        out_dtype=normalize_dtype(data.get("out_dtype"), "out_dtype"),
        tokenizer_source=tokenizer_source,
        chat_template=chat_template,
        seed=seed,
        raw_text=raw_text,
        tokenizer_tokens=tokens,
        pad_to_multiple_of=pad_to,
    )


def _parse_ref(raw: Any, where: str) -> ModelRef:
    """A model reference: a string, or mergekit's dict form ``{model, lora, ...}``."""
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"model", "lora", "override_architecture"}
        if unknown:
            raise MergeError(
                f"merge config: {where}: unknown key {sorted(map(str, unknown))[0]!r}"
                " in a model reference"
            )
        lora = raw.get("lora")
        if raw.get("override_architecture"):
            raise MergeError(f"merge config: {where}: override_architecture is not supported")
        if "model" not in raw:
            raise MergeError(f"merge config: {where}: a model reference needs 'model'")
        if lora:  # mergekit's {model, lora}: the same as "model+lora"
            base = _parse_ref({"model": raw["model"]}, where).text
            return _check_ref(f"{base}+{_ref_text(lora, where)}", where)
        inner = raw["model"]
        if isinstance(inner, Mapping):  # mergekit's ModelPath {path, revision}
            unknown = set(inner) - {"path", "revision"}
            if unknown or "path" not in inner:
                raise MergeError(f"merge config: {where}.model: expected {{path, revision}}")
            text = _ref_text(inner["path"], where)
            if inner.get("revision"):
                text = f"{text}@{_ref_text(inner['revision'], where)}"
            return _check_ref(text, where)
        return _check_ref(_ref_text(inner, where), where)
    return _check_ref(_ref_text(raw, where), where)


def _ref_text(raw: Any, where: str) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise MergeError(f"merge config: {where}: expected a model reference, got {_short(raw)}")
    # A commit id made only of digits arrives from YAML as an int; keep it as written.
    return str(raw).strip()


def _check_ref(text: str, where: str) -> ModelRef:
    if not text:
        raise MergeError(f"merge config: {where}: empty model reference")
    if "+" in text:  # mergekit's "base+lora" syntax: a LoRA adapter applied to its base
        base, _, lora = text.partition("+")
        if not base.strip() or not lora.strip() or "+" in lora:
            raise MergeError(f"merge config: {where}: expected BASE+ADAPTER, got {text!r}")
    return ModelRef(text)


def _parse_tokenizer_source(raw: Any, where: str) -> str:
    if isinstance(raw, str) and raw.strip() in ("base", "union"):
        return raw.strip()
    return _parse_ref(raw, where).text


def _parse_tokenizer_block(
    raw: Any,
) -> tuple[str, tuple[tuple[str, TokenSpec], ...], int | None]:
    """mergekit's TokenizerConfig: (source, tokens, pad_to_multiple_of)."""
    if not isinstance(raw, Mapping):
        raise MergeError("merge config: tokenizer must be a mapping like {source: base}")
    unknown = set(raw) - {"source", "tokens", "pad_to_multiple_of"}
    if unknown:
        raise MergeError(f"merge config: tokenizer: unknown key {sorted(map(str, unknown))[0]!r}")
    pad = raw.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
        raise MergeError(
            f"merge config: tokenizer.pad_to_multiple_of must be a positive integer, got {pad!r}"
        )
    tokens = raw.get("tokens")
    if tokens is not None and not isinstance(tokens, Mapping):
        raise MergeError("merge config: tokenizer.tokens must be a mapping of token -> settings")
    specs = tuple(
        (_token_text(tok), _parse_token_spec(spec, f"tokenizer.tokens[{tok!r}]"))
        for tok, spec in (tokens or {}).items()
    )
    source = raw.get("source")
    # mergekit's TokenizerConfig defaults the source to "union".
    src = "union" if source is None else _parse_tokenizer_source(source, "tokenizer.source")
    return src, specs, pad


def _token_text(tok: Any) -> str:
    if not isinstance(tok, str) or not tok:
        raise MergeError(f"merge config: tokenizer.tokens: a token must be a string, got {tok!r}")
    return tok


def _parse_token_spec(raw: Any, where: str) -> TokenSpec:
    """mergekit's TokenEmbeddingConfig: {source: MODEL | {kind: zero} | {kind: model_token,
    model, token | token_id}, force: bool}."""
    if raw is None:
        return TokenSpec()
    if not isinstance(raw, Mapping):
        raise MergeError(f"merge config: {where} must be a mapping like {{source: MODEL}}")
    unknown = set(raw) - {"source", "force"}
    if unknown:
        raise MergeError(f"merge config: {where}: unknown key {sorted(map(str, unknown))[0]!r}")
    force = raw.get("force", False)
    if not isinstance(force, bool):
        raise MergeError(f"merge config: {where}.force must be true or false, got {force!r}")
    src = raw.get("source")
    if src is None:
        return TokenSpec(force=force)
    if not isinstance(src, Mapping):
        return TokenSpec("model", _parse_ref(src, f"{where}.source").text, force=force)
    kind = src.get("kind")
    if kind == "zero":
        if set(src) != {"kind"}:
            raise MergeError(f"merge config: {where}.source: kind zero takes no other keys")
        return TokenSpec("zero", force=force)
    if kind != "model_token":
        raise MergeError(
            f"merge config: {where}.source: kind must be 'zero' or 'model_token', got {kind!r}"
        )
    unknown = set(src) - {"kind", "model", "token", "token_id"}
    if unknown:
        raise MergeError(
            f"merge config: {where}.source: unknown key {sorted(map(str, unknown))[0]!r}"
        )
    if "model" not in src:
        raise MergeError(f"merge config: {where}.source: model_token needs 'model'")
    token, token_id = src.get("token"), src.get("token_id")
    if (token is None) == (token_id is None):
        raise MergeError(f"merge config: {where}.source: give exactly one of token or token_id")
    if token is not None and not isinstance(token, str):
        raise MergeError(f"merge config: {where}.source.token must be a string, got {token!r}")
    if token_id is not None and (
        not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0
    ):
        raise MergeError(
            f"merge config: {where}.source.token_id must be a non-negative integer,"
            f" got {token_id!r}"
        )
    model = _parse_ref(src["model"], f"{where}.source.model").text
    return TokenSpec("model_token", model, token, token_id, force)


def _parse_models(raw: Any) -> tuple[InputModel, ...]:
    if not isinstance(raw, list):
        raise MergeError("merge config: models must be a list")
    out = []
    for i, entry in enumerate(raw):
        where = f"models[{i}]"
        if isinstance(entry, (str, int)) and not isinstance(entry, bool):
            out.append(InputModel(_check_ref(_ref_text(entry, where), where)))
            continue
        if not isinstance(entry, Mapping):
            raise MergeError(f"merge config: {where} must be a mapping with 'model'")
        if "layer_range" in entry:
            raise MergeError(
                f"merge config: {where}: layer_range is only valid in slices[*].sources"
            )
        unknown = set(entry) - {"model", "parameters"}
        if unknown:
            raise MergeError(f"merge config: {where}: unknown key {sorted(map(str, unknown))[0]!r}")
        if "model" not in entry:
            raise MergeError(f"merge config: {where} needs 'model'")
        ref = _parse_ref(entry["model"], f"{where}.model")
        params = _parse_parameters(entry.get("parameters"), f"{where} ({ref.text}).parameters")
        out.append(InputModel(ref, params))
    return tuple(out)


def _parse_slices(raw: Any) -> tuple[Slice, ...]:
    if not isinstance(raw, list):
        raise MergeError("merge config: slices must be a list")
    out = []
    for i, entry in enumerate(raw):
        where = f"slices[{i}]"
        if not isinstance(entry, Mapping):
            raise MergeError(f"merge config: {where} must be a mapping with 'sources'")
        unknown = set(entry) - {"sources", "parameters", "base_model", "residual_weight"}
        if unknown:
            raise MergeError(f"merge config: {where}: unknown key {sorted(map(str, unknown))[0]!r}")
        if entry.get("residual_weight") is not None:
            raise MergeError(f"merge config: {where}: residual_weight is not supported")
        sources = entry.get("sources")
        if not isinstance(sources, list) or not sources:
            raise MergeError(f"merge config: {where} needs a non-empty 'sources' list")
        base = entry.get("base_model")
        out.append(
            Slice(
                tuple(_parse_source(s, f"{where}.sources[{j}]") for j, s in enumerate(sources)),
                _parse_parameters(entry.get("parameters"), f"{where}.parameters"),
                _parse_ref(base, f"{where}.base_model") if base else None,
            )
        )
    return tuple(out)


def _parse_source(raw: Any, where: str) -> InputModel:
    if not isinstance(raw, Mapping):
        raise MergeError(f"merge config: {where} must be a mapping with 'model' and 'layer_range'")
    unknown = set(raw) - {"model", "layer_range", "parameters"}
    if unknown:
        raise MergeError(f"merge config: {where}: unknown key {sorted(map(str, unknown))[0]!r}")
    if "model" not in raw:
        raise MergeError(f"merge config: {where} needs 'model'")
    if "layer_range" not in raw:
        raise MergeError(f"merge config: {where} needs 'layer_range: [start, end]'")
    lr = raw["layer_range"]
    if (
        not isinstance(lr, (list, tuple))
        or len(lr) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
    ):
        raise MergeError(f"merge config: {where}.layer_range must be [start, end], got {lr!r}")
    start, end = lr
    if start < 0 or end <= start:
        raise MergeError(
            f"merge config: {where}.layer_range [{start}, {end}] must have 0 <= start < end"
        )
    ref = _parse_ref(raw["model"], f"{where}.model")
    params = _parse_parameters(raw.get("parameters"), f"{where} ({ref.text}).parameters")
    return InputModel(ref, params, (start, end))


def _short(raw: Any, limit: int = 60) -> str:
    s = repr(raw)
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# the CLI form


def parse_cli_value(text: str) -> Any:
    """A --param value: JSON (numbers, true/false, lists, {filter, value}), else a string."""
    s = text.strip()
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    try:
        return json.loads(s)
    except ValueError:
        pass
    try:
        return float(s)  # "1e-5", ".5", "nan" is refused later as not finite
    except ValueError:
        return s


def config_from_cli(
    method: str,
    base: str | None,
    models: list[str],
    weights: list[float] | None = None,
    params: Mapping[str, str] | None = None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    seed: int | None = None,
) -> MergeConfig:
    """The config for ``mergestore merge --method M --base B m1 m2 -w w1 -w w2 --param k=v``.

    ``weights`` are per-model weights in the order of ``models`` and must number exactly as many
    as the models (or none). ``params`` go to the top-level ``parameters``: that is the shared
    value for SHARED parameters and the per-model default for the others (``--param weight=0.5``
    gives every model weight 0.5).
    """
    weights = list(weights or [])
    if not models:
        raise MergeError("merge: give at least one model to merge")
    if weights and len(weights) != len(models):
        raise MergeError(
            f"merge: got {len(weights)} weight(s) for {len(models)} model(s); give one -w per"
            " model in order, or --param weight=X for all"
        )
    data: dict[str, Any] = {"merge_method": method}
    if base is not None:
        data["base_model"] = base
    entries = []
    for i, m in enumerate(models):
        entry: dict[str, Any] = {"model": m}
        if weights:
            entry["parameters"] = {"weight": weights[i]}
        entries.append(entry)
    data["models"] = entries
    if params:
        data["parameters"] = parse_cli_params(params)
    for key, value in (("dtype", dtype), ("out_dtype", out_dtype), ("seed", seed)):
        if value is not None:
            data[key] = value
    cfg = config_from_mapping(data)
    # Record an equivalent YAML so a CLI merge can be replayed like a YAML one.
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    return config_from_mapping(data, raw_text=text)


def parse_cli_params(items: Mapping[str, Any] | None, flag: str = "--param") -> dict[str, Any]:
    """--param NAME=VALUE texts (or already-typed values) as parameter values by name."""
    parsed: dict[str, Any] = {}
    for key, value in (items or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise MergeError(f"merge: {flag} {key!r}: expected name=value")
        parsed[key] = parse_cli_value(value) if isinstance(value, str) else value
    return parsed


def with_overrides(
    cfg: MergeConfig,
    params: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    seed: int | None = None,
) -> MergeConfig:
    """``--config`` plus ``--param/--dtype/--out-dtype/--seed``: the options override the file.

    A --param sets the top-level ``parameters:`` entry of that name. If the config sets the
    same name per model, per slice or per source, a top-level value would have no effect
    (mergekit's nearer level wins), so that is refused rather than silently ignored. The
    returned config's YAML is the merged mapping, so the plan records what actually ran.
    """
    parsed = parse_cli_params(params)
    over: dict[str, Any] = {
        k: v
        for k, v in (("dtype", dtype), ("out_dtype", out_dtype), ("seed", seed))
        if v is not None
    }
    if not parsed and not over:
        return cfg
    levels: list[tuple[str, Mapping[str, ParamValue]]] = []
    for i, m in enumerate(cfg.models or ()):
        levels.append((f"models[{i}]", m.parameters))
    for i, sl in enumerate(cfg.slices or ()):
        levels.append((f"slices[{i}]", sl.parameters))
        for j, s in enumerate(sl.sources):
            levels.append((f"slices[{i}].sources[{j}]", s.parameters))
    for name in parsed:
        for where, lvl in levels:
            if name in lvl:
                raise MergeError(
                    f"merge: --param {name}: the config sets {name!r} in {where}, which takes"
                    " precedence over a top-level value; edit the config instead"
                )
    data = cfg.to_dict()
    if parsed:
        data["parameters"] = {**data.get("parameters", {}), **parsed}
    data.update(over)
    merged = config_from_mapping(data)
    text = yaml.safe_dump(merged.to_dict(), sort_keys=False, default_flow_style=None)
    return config_from_mapping(data, raw_text=text)


# ---------------------------------------------------------------------------------------------
# validation against a method declaration


@dataclass(frozen=True)
class SliceInputs:
    """Who takes part in one slice: the base (if the method uses one) and the other inputs."""

    base: InputModel | None
    inputs: tuple[InputModel, ...]  # non-base for base-aware methods; all for IGNORED


def effective_slices(cfg: MergeConfig) -> tuple[Slice, ...]:
    """The config as slices: the ``models`` form is one slice of all layers (no layer_range yet),
    with the base appended as an input without parameters when it is not listed (as mergekit's
    normalize_config does)."""
    if cfg.slices is not None:
        return cfg.slices
    assert cfg.models is not None
    sources = list(cfg.models)
    if cfg.base_model is not None and all(m.ref != cfg.base_model for m in sources):
        sources.append(InputModel(cfg.base_model))
    return (Slice(tuple(sources)),)


def slice_base(cfg: MergeConfig, sl: Slice) -> ModelRef | None:
    """The base model for a slice: the slice's own base_model, else the top-level one."""
    return sl.base_model if sl.base_model is not None else cfg.base_model


def split_inputs(cfg: MergeConfig, spec: MethodSpec, sl: Slice, where: str) -> SliceInputs:
    """Split a slice's sources into base and inputs per the method's base rule."""
    base_ref = slice_base(cfg, sl)
    if spec.base is BaseRule.IGNORED or base_ref is None:
        if spec.base is BaseRule.REQUIRED:
            raise MergeError(f"merge config: {spec.name} requires a base model (base_model:)")
        return SliceInputs(None, sl.sources)
    base = [s for s in sl.sources if s.ref == base_ref]
    if not base:
        raise MergeError(
            f"merge config: {where}: base model {base_ref.text!r} is not among the slice's sources"
        )
    return SliceInputs(base[0], tuple(s for s in sl.sources if s.ref != base_ref))


def validate_config(cfg: MergeConfig, spec: MethodSpec) -> None:
    """Check a config against the method's declaration before any tensor is read."""
    if cfg.merge_method != spec.name:
        raise MergeError(
            f"merge config: merge_method is {cfg.merge_method!r} but was checked against"
            f" {spec.name!r}"
        )
    if (cfg.models is None) == (cfg.slices is None) or not (cfg.models or cfg.slices):
        raise MergeError("merge config: give exactly one of 'models' or 'slices'")
    normalize_dtype(cfg.dtype, "dtype")
    normalize_dtype(cfg.out_dtype, "out_dtype")
    if cfg.tokenizer_source == "base" and cfg.base_model is None:
        raise MergeError("merge config: tokenizer source 'base' needs a base_model")

    _check_param_names(cfg, spec)
    if cfg.models is not None:
        seen: set[ModelRef] = set()
        for i, m in enumerate(cfg.models):
            if m.layer_range is not None:
                raise MergeError(
                    f"merge config: models[{i}]: layer_range is only valid in slices[*].sources"
                )
            if m.ref in seen:
                raise MergeError(f"merge config: model {m.ref.text!r} is listed twice")
            seen.add(m.ref)

    form = "models" if cfg.models is not None else "slices"
    for si, sl in enumerate(effective_slices(cfg)):
        where = "models" if form == "models" else f"slices[{si}]"
        _check_slice(cfg, spec, sl, where, form)


def _check_slice(cfg: MergeConfig, spec: MethodSpec, sl: Slice, where: str, form: str) -> None:
    refs = [s.ref for s in sl.sources]
    dup = next((r for i, r in enumerate(refs) if r in refs[:i]), None)
    if dup is not None:
        raise MergeError(f"merge config: {where}: model {dup.text!r} appears twice")
    if form == "slices":
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sl.sources if s.layer_range}
        if any(s.layer_range is None for s in sl.sources):
            raise MergeError(f"merge config: {where}: every source needs a layer_range")
        if len(lengths) > 1:
            raise MergeError(
                f"merge config: {where}: all sources must span the same number of layers"
                f" (got {sorted(lengths)})"
            )

    split = split_inputs(cfg, spec, sl, where)
    n = len(split.inputs)
    what = "non-base input model" if split.base is not None else "input model"
    lo, hi = spec.min_inputs, spec.max_inputs
    if hi is not None and lo == hi and n != lo:
        raise MergeError(
            f"merge config: {where}: {spec.name} takes exactly {lo} {what}(s), got {n}"
        )
    if n < lo:
        raise MergeError(
            f"merge config: {where}: {spec.name} needs at least {lo} {what}(s), got {n}"
        )
    if hi is not None and n > hi:
        raise MergeError(
            f"merge config: {where}: {spec.name} takes at most {hi} {what}(s), got {n}"
        )

    # Required parameters: some level on the precedence path must mention them. (Whether a
    # filter matches is only known per tensor; tensorplan raises then.)
    for p in spec.params:
        if not p.required:
            continue
        if p.scope is Scope.SHARED:
            if p.name not in sl.parameters and p.name not in cfg.parameters:
                raise MergeError(
                    f"merge config: missing required parameter {p.name!r} for {spec.name}"
                    f" (--param {p.name}=V, or parameters: {{{p.name}: V}} in a config)"
                )
            continue
        takers = list(split.inputs)
        if p.scope is Scope.INPUT and split.base is not None:
            takers.append(split.base)
        for m in takers:
            if not any(p.name in lvl for lvl in (m.parameters, sl.parameters, cfg.parameters)):
                cli = "-w V for each model, or " if p.name == "weight" else ""
                raise MergeError(
                    f"merge config: missing required parameter {p.name!r} for model"
                    f" {m.ref.text!r} ({spec.name}): give it per model ({cli}parameters:"
                    f" {{{p.name}: V}} under each model in a config) or to all"
                    f" (--param {p.name}=V)"
                )


def _check_param_names(cfg: MergeConfig, spec: MethodSpec) -> None:
    """Unknown names, shared parameters set per model, and values of the wrong kind."""
    known = {p.name: p for p in spec.params}

    def check(params: Mapping[str, ParamValue], where: str, per_model: bool) -> None:
        for name, value in params.items():
            p = known.get(name)
            if p is None:
                names = ", ".join(sorted(known)) or "none"
                raise MergeError(
                    f"merge config: {where}: unknown parameter {name!r} for {spec.name}"
                    f"{did_you_mean(name, known)} (known: {names})"
                )
            if per_model and p.scope is Scope.SHARED:
                raise MergeError(
                    f"merge config: {where}: {name!r} is a shared parameter of {spec.name};"
                    " set it under the top-level or slice parameters, not per model"
                )
            for leaf, filt in _leaves_with_filter(value):
                v = coerce_param(leaf, p, f"{where}.{name}")
                check_range(spec, p, v, where, filt)

    check(cfg.parameters, "parameters", False)
    for i, m in enumerate(cfg.models or ()):
        check(m.parameters, f"models[{i}] ({m.ref.text}).parameters", True)
    for i, sl in enumerate(cfg.slices or ()):
        check(sl.parameters, f"slices[{i}].parameters", False)
        for j, s in enumerate(sl.sources):
            check(s.parameters, f"slices[{i}].sources[{j}] ({s.ref.text}).parameters", True)


def check_range(
    spec: MethodSpec, p: ParamSpec, value: Any, where: str, filt: str | None = None
) -> None:
    """A numeric value outside the parameter's declared range: one line naming the parameter,
    its range, where it was set (which model) and the tensor filter it applies to."""
    bounds = p.range
    if bounds is None or value is None or not _is_number(value) or bounds.contains(value):
        return
    on = f" (filter {filt!r})" if filt not in (None, "*") else ""
    raise MergeError(
        f"merge config: {where}.{p.name}{on}: {p.name} must be {bounds} for {spec.name},"
        f" got {value!r}"
    )


def _leaves_with_filter(value: ParamValue) -> list[tuple[Leaf, str | None]]:
    if isinstance(value, Conditionals):
        return [(leaf, e.filter) for e in value.entries for leaf in _leaves(e.value)]
    return [(leaf, None) for leaf in _leaves(value)]


def _leaves(value: ParamValue) -> list[Leaf]:
    if isinstance(value, Scalar):
        return [value.value]
    if isinstance(value, Gradient):
        return list(value.values)
    return [leaf for e in value.entries for leaf in _leaves(e.value)]


def config_warnings(cfg: MergeConfig, spec: MethodSpec) -> list[str]:
    """Settings that are accepted (as mergekit accepts them) but have no effect."""
    out = []
    non_base = [p.name for p in spec.params if p.scope is Scope.NON_BASE]
    for si, sl in enumerate(effective_slices(cfg)):
        base_ref = slice_base(cfg, sl)
        if spec.base is BaseRule.IGNORED or base_ref is None:
            continue
        for s in sl.sources:
            ignored = [n for n in non_base if n in s.parameters and s.ref == base_ref]
            if ignored:
                where = "models" if cfg.slices is None else f"slices[{si}]"
                out.append(
                    f"{where}: parameter(s) {', '.join(ignored)} of the base model"
                    f" {base_ref.text!r} are ignored by {spec.name}"
                )
    return out


def models_in_config(cfg: MergeConfig) -> list[ModelRef]:
    """Every model the config references, once each, in model order.

    Inputs come in the order of ``models:`` / the slices' ``sources:``, then any base model not
    already listed (the top-level base last, as mergekit appends it).
    """
    out: list[ModelRef] = []

    def add(ref: ModelRef | None) -> None:
        if ref is not None and ref not in out:
            out.append(ref)

    for m in cfg.models or ():
        add(m.ref)
    for sl in cfg.slices or ():
        for s in sl.sources:
            add(s.ref)
    for sl in cfg.slices or ():
        add(sl.base_model)
    add(cfg.base_model)
    return out
