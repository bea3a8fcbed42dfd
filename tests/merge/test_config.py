"""Merge config parsing (mergekit 0.1.5 YAML), the CLI form, and validation against method specs.

Expected values are read off the YAML by hand; gradients are hand-computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergestore.errors import MergeError, MergestoreError
from mergestore.merge.config import (
    Conditional,
    Conditionals,
    Gradient,
    InputModel,
    MergeConfig,
    ModelRef,
    Scalar,
    Slice,
    coerce_param,
    config_from_cli,
    config_from_mapping,
    config_warnings,
    load_config,
    models_in_config,
    normalize_dtype,
    parse_cli_value,
    parse_param_value,
    validate_config,
)
from mergestore.ops import get_method
from mergestore.ops.spec import BaseRule, MethodSpec, ParamSpec, Scope

# --- the examples of the reference's section 3 and 2.15 -------------------------------------

TIES_EXAMPLE = """\
# TIES with per-model weights/densities, gradients and filters
merge_method: ties
base_model: /models/llama-base
models:
  - model: /models/llama-base          # base needs no weight for GTA methods
  - model: /models/llama-math
    parameters:
      density: [1, 0.7, 0.1]           # gradient over layers
      weight: 1.0
  - model: /models/llama-code
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: /models/llama-chat
    parameters:
      density: 0.33
      weight:
        - filter: mlp                  # substring of tensor name
          value: 0.5
        - value: 0
parameters:
  normalize: true
  int8_mask: true
  lambda: 1.0
dtype: bfloat16
out_dtype: bfloat16
tokenizer:
  source: base
chat_template: auto
"""

FRANKEN_EXAMPLE = """\
# Frankenmerge / layer stacking: passthrough with slices (output has 24 layers)
slices:
  - sources: [{model: /m/a, layer_range: [0, 16]}]
  - sources: [{model: /m/b, layer_range: [8, 16]}]
merge_method: passthrough
dtype: bfloat16
"""

PER_SLICE_EXAMPLE = """\
# Per-slice base and parameters (slices[*].base_model / residual_weight exist in the schema)
slices:
  - sources:
      - {model: /m/a, layer_range: [0, 32]}
      - {model: /m/b, layer_range: [0, 32], parameters: {weight: 0.3}}
    parameters: {weight: 0.7}
merge_method: linear
"""

GRADIENT_SLERP = """\
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float16
"""


def write(tmp_path: Path, text: str, name: str = "merge.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refuses(text_or_mapping, match: str) -> None:
    with pytest.raises(MergeError, match=match) as info:
        if isinstance(text_or_mapping, str):
            load_config(text_or_mapping)
        else:
            config_from_mapping(text_or_mapping)
    assert "\n" not in str(info.value)  # one line


def test_ties_example(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TIES_EXAMPLE))
    assert cfg.merge_method == "ties"
    assert cfg.base_model == ModelRef("/models/llama-base")
    assert cfg.slices is None
    assert [m.ref.text for m in cfg.models] == [
        "/models/llama-base",
        "/models/llama-math",
        "/models/llama-code",
        "/models/llama-chat",
    ]
    base, math_, code, chat = cfg.models
    assert base.parameters == {} and base.layer_range is None
    assert math_.parameters == {"density": Gradient((1, 0.7, 0.1)), "weight": Scalar(1.0)}
    assert code.parameters["weight"] == Gradient((0, 0.3, 0.7, 1))
    assert chat.parameters["weight"] == Conditionals(
        (Conditional("mlp", Scalar(0.5)), Conditional(None, Scalar(0)))
    )
    assert cfg.parameters == {
        "normalize": Scalar(True),
        "int8_mask": Scalar(True),
        "lambda": Scalar(1.0),
    }
    assert (cfg.dtype, cfg.out_dtype) == ("bfloat16", "bfloat16")
    assert cfg.tokenizer_source == "base"
    assert cfg.chat_template == "auto"
    assert cfg.seed is None
    assert cfg.raw_text == TIES_EXAMPLE  # verbatim, comments included
    validate_config(cfg, get_method("ties"))
    assert models_in_config(cfg) == [m.ref for m in cfg.models]


def test_frankenmerge_example(tmp_path: Path) -> None:
    cfg = load_config(str(write(tmp_path, FRANKEN_EXAMPLE)))  # a path given as a string
    assert cfg.models is None and cfg.base_model is None
    assert [(s.sources[0].ref.text, s.sources[0].layer_range) for s in cfg.slices] == [
        ("/m/a", (0, 16)),
        ("/m/b", (8, 16)),
    ]
    assert sum(s.num_layers for s in cfg.slices) == 24
    assert cfg.dtype == "bfloat16"
    validate_config(cfg, get_method("passthrough"))
    assert models_in_config(cfg) == [ModelRef("/m/a"), ModelRef("/m/b")]


def test_per_slice_example(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, PER_SLICE_EXAMPLE))
    (sl,) = cfg.slices
    assert sl.parameters == {"weight": Scalar(0.7)}
    assert sl.sources[0].parameters == {}
    assert sl.sources[1].parameters == {"weight": Scalar(0.3)}
    assert sl.base_model is None
    # /m/a's required weight comes from the slice level.
    validate_config(cfg, get_method("linear"))


def test_gradient_slerp_example(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GRADIENT_SLERP))
    t = cfg.parameters["t"]
    assert isinstance(t, Conditionals)
    assert [e.filter for e in t.entries] == ["self_attn", "mlp", None]
    validate_config(cfg, get_method("slerp"))
    assert models_in_config(cfg) == [
        ModelRef("psmathur/orca_mini_v3_13b"),
        ModelRef("garage-bAInd/Platypus2-13B"),
    ]


@pytest.mark.parametrize("text", [TIES_EXAMPLE, FRANKEN_EXAMPLE, PER_SLICE_EXAMPLE, GRADIENT_SLERP])
def test_to_dict_is_json_and_round_trips(text: str) -> None:
    cfg = load_config(text)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    again = config_from_mapping(d)
    assert again == cfg  # raw_text is not compared
    assert again.to_dict() == d


def test_to_dict_canonical_shape() -> None:
    cfg = load_config(TIES_EXAMPLE)
    d = cfg.to_dict()
    assert d["models"][3]["parameters"]["weight"] == [{"filter": "mlp", "value": 0.5}, {"value": 0}]
    assert d["tokenizer_source"] == "base" and "tokenizer" not in d
    assert "raw_text" not in d


# --- parameter values --------------------------------------------------------------------------


def test_gradient_interpolation_hand_computed() -> None:
    g = Gradient((0, 0.3, 0.7, 1))
    assert g.evaluate("x", 0.0) == 0
    assert g.evaluate("x", 1.0) == 1
    assert g.evaluate("x", 0.5) == pytest.approx(0.5 * 0.3 + 0.5 * 0.7)  # s = 1.5
    assert g.evaluate("x", 1 / 3) == pytest.approx(0.3)  # s = 1
    d = Gradient((1, 0.7, 0.1))
    assert d.evaluate("x", 0.25) == pytest.approx(0.85)  # s = 0.5 between 1 and 0.7
    assert d.evaluate("x", 0.75) == pytest.approx(0.4)  # s = 1.5 between 0.7 and 0.1
    assert Gradient((0.4,)).evaluate("x", 0.7) == 0.4


def test_gradient_of_bools_and_strings_picks_entries() -> None:
    assert Gradient((True, False)).evaluate("x", 0.9) is True  # floor(0.9 * 1) = 0
    assert Gradient((True, False)).evaluate("x", 1.0) is False
    assert Gradient(("a", "b", "c")).evaluate("x", 0.6) == "b"  # floor(1.2) = 1


def test_conditionals_first_match_wins_and_unmatched_is_none() -> None:
    c = parse_param_value([{"filter": "mlp", "value": 1}, {"filter": "up", "value": 2}])
    assert c.evaluate("model.layers.0.mlp.up_proj.weight", 0) == 1
    assert c.evaluate("model.layers.0.up.weight", 0) == 2
    assert c.evaluate("model.layers.0.self_attn.q_proj.weight", 0) is None
    star = parse_param_value([{"filter": "*", "value": [0, 1]}])
    assert star.evaluate("anything", 0.25) == 0.25


def test_lone_filter_value_dict_is_accepted() -> None:
    c = parse_param_value({"filter": "self_attn", "value": 0.25})
    assert c == Conditionals((Conditional("self_attn", Scalar(0.25)),))
    assert c.to_json() == [{"filter": "self_attn", "value": 0.25}]


def test_exponent_floats_without_a_dot_are_floats() -> None:
    cfg = load_config("merge_method: multislerp\nmodels: [a, b]\nparameters: {eps: 1e-8}\n")
    assert cfg.parameters["eps"] == Scalar(1e-8)
    assert isinstance(cfg.parameters["eps"].value, float)


def test_plain_string_model_entries_and_digit_commit_ids() -> None:
    cfg = load_config("merge_method: karcher\nmodels: [main, 1234567]\n")
    assert [m.ref.text for m in cfg.models] == ["main", "1234567"]


def test_model_ref_dict_forms() -> None:
    cfg = load_config(
        "merge_method: karcher\nmodels:\n"
        "  - model: {model: org/a}\n"
        "  - model: {model: {path: org/b, revision: v2}}\n"
    )
    assert [m.ref.text for m in cfg.models] == ["org/a", "org/b@v2"]


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("torch.bfloat16", "bfloat16"),
        ("bfloat16", "bfloat16"),
        ("bf16", "bfloat16"),
        ("torch.float16", "float16"),
        ("fp32", "float32"),
        ("float", "float32"),
        ("torch.float64", "float64"),
    ],
)
def test_dtype_spellings(spelling: str, canonical: str) -> None:
    assert normalize_dtype(spelling) == canonical
    cfg = load_config(f"merge_method: karcher\nmodels: [a]\ndtype: {spelling}\n")
    assert cfg.dtype == canonical


def test_tokenizer_forms() -> None:
    base = "merge_method: karcher\nmodels: [a, b]\nbase_model: a\n"
    assert load_config(base + "tokenizer_source: union\n").tokenizer_source == "union"
    assert load_config(base + "tokenizer_source: b\n").tokenizer_source == "b"
    assert load_config(base + "tokenizer: {source: b}\n").tokenizer_source == "b"
    assert load_config(base + "tokenizer: {}\n").tokenizer_source == "union"  # mergekit default
    assert load_config(base).tokenizer_source is None


def test_tokenizer_block_tokens_and_pad_round_trip() -> None:
    from mergestore.merge.config import TokenSpec, config_from_mapping

    text = (
        "merge_method: linear\nmodels: [a, b]\nbase_model: a\n"
        "tokenizer:\n  pad_to_multiple_of: 64\n  tokens:\n"
        "    '<|im_start|>': {source: b, force: true}\n"
        "    '<z>': {source: {kind: zero}}\n"
        "    '<t>': {source: {kind: model_token, model: a, token_id: 3}}\n"
        "    '<u>': {source: {kind: model_token, model: b, token: '<s>'}}\n"
        "    '<d>': {}\n"
    )
    cfg = load_config(text)
    assert cfg.tokenizer_source == "union" and cfg.pad_to_multiple_of == 64
    assert dict(cfg.tokenizer_tokens) == {
        "<|im_start|>": TokenSpec("model", "b", force=True),
        "<z>": TokenSpec("zero"),
        "<t>": TokenSpec("model_token", "a", token_id=3),
        "<u>": TokenSpec("model_token", "b", token="<s>"),
        "<d>": TokenSpec(),
    }
    d = cfg.to_dict()
    assert "tokenizer_source" not in d and d["tokenizer"]["source"] == "union"
    assert config_from_mapping(d) == cfg


def test_seed_extension() -> None:
    assert load_config("merge_method: karcher\nmodels: [a]\nseed: 42\n").seed == 42


def test_slice_base_model_and_models_in_config_order() -> None:
    cfg = load_config(
        "merge_method: slerp\nbase_model: z\nparameters: {t: 0.5}\nslices:\n"
        "  - sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 2]}]\n"
        "    base_model: a\n"
        "  - sources: [{model: z, layer_range: [2, 4]}, {model: c, layer_range: [2, 4]}]\n"
    )
    assert cfg.slices[0].base_model == ModelRef("a")
    assert models_in_config(cfg) == [ModelRef(x) for x in ("a", "b", "z", "c")]
    validate_config(cfg, get_method("slerp"))


def test_models_in_config_appends_unlisted_base_last() -> None:
    cfg = load_config(
        "merge_method: ties\nbase_model: b\nmodels: [x, y]\nparameters: {weight: 1}\n"
    )
    assert models_in_config(cfg) == [ModelRef("x"), ModelRef("y"), ModelRef("b")]


# --- refusals while reading ---------------------------------------------------------------------


def test_malformed_yaml() -> None:
    refuses("merge_method: ties\nmodels: [a, b\n", "invalid YAML")


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- a\n- b\n", "a list"),
        ("--- 42\n", "a int"),
        ("just text\n", "a str"),
        ("---\n", "an empty document"),
        ("", "an empty document"),
    ],
)
def test_not_a_mapping(text: str, got: str) -> None:
    refuses(text if "\n" in text else text + "\n", f"must be a YAML mapping, got {got}")


def test_several_documents() -> None:
    refuses("merge_method: a\nmodels: [x]\n---\nmerge_method: b\nmodels: [y]\n", "mergekit-multi")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="no such file"):
        load_config(tmp_path / "nope.yml")
    with pytest.raises(MergeError, match="no such file"):
        load_config(str(tmp_path / "nope.yml"))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"models": [{"model": "a"}]}, "'merge_method' is required"),
        ({"merge_method": 3, "models": ["a"]}, "merge_method must be a name"),
        ({"merge_method": "linear", "modelz": ["a"]}, "unknown key 'modelz'"),
        ({"merge_method": "linear"}, "exactly one of 'models' or 'slices' \\(got neither\\)"),
        (
            {
                "merge_method": "linear",
                "models": ["a"],
                "slices": [{"sources": [{"model": "a", "layer_range": [0, 1]}]}],
            },
            "exactly one of 'models' or 'slices' \\(got both\\)",
        ),
        (
            {"merge_method": "linear", "modules": {"text": {"models": ["a"]}}},
            "'modules:' .* not supported yet",
        ),
        (
            {
                "merge_method": "linear",
                "models": ["a"],
                "tokenizer_source": "base",
                "tokenizer": {"source": "base"},
            },
            "either 'tokenizer_source' or 'tokenizer', not both",
        ),
        ({"merge_method": "linear", "models": ["a"], "dtype": "float8"}, "unknown dtype 'float8'"),
        ({"merge_method": "linear", "models": ["a"], "out_dtype": "int4"}, "out_dtype: unknown"),
        ({"merge_method": "linear", "models": ["a"], "dtype": 16}, "must be a dtype name"),
        ({"merge_method": "linear", "models": ["base+"]}, "expected BASE\\+ADAPTER"),
        (
            {"merge_method": "linear", "models": [{"model": "+adapters/x"}]},
            "models\\[0\\].model: expected BASE\\+ADAPTER",
        ),
        ({"merge_method": "linear", "base_model": "a+b+c", "models": ["a"]}, "base_model: exp"),
        (
            {
                "merge_method": "linear",
                "models": [{"model": {"model": "a", "override_architecture": "X"}}],
            },
            "override_architecture is not supported",
        ),
        ({"merge_method": "linear", "models": [{"model": ""}]}, "empty model reference"),
        ({"merge_method": "linear", "models": [{"parameters": {}}]}, "models\\[0\\] needs 'model'"),
        (
            {"merge_method": "linear", "models": [{"model": "a", "weight": 1}]},
            "unknown key 'weight'",
        ),
        ({"merge_method": "linear", "models": "a"}, "models must be a list"),
        (
            {"merge_method": "linear", "models": [{"model": "a", "layer_range": [0, 2]}]},
            "layer_range is only valid in slices",
        ),
        (
            {"merge_method": "linear", "slices": [{"sources": [{"model": "a"}]}]},
            "sources\\[0\\] needs 'layer_range",
        ),
        (
            {
                "merge_method": "linear",
                "slices": [{"sources": [{"model": "a", "layer_range": [4, 2]}]}],
            },
            "0 <= start < end",
        ),
        (
            {
                "merge_method": "linear",
                "slices": [{"sources": [{"model": "a", "layer_range": [0]}]}],
            },
            "layer_range must be \\[start, end\\]",
        ),
        ({"merge_method": "linear", "slices": [{"sources": []}]}, "non-empty 'sources'"),
        (
            {
                "merge_method": "linear",
                "slices": [
                    {"sources": [{"model": "a", "layer_range": [0, 1]}], "residual_weight": 0.5}
                ],
            },
            "residual_weight is not supported",
        ),
        ({"merge_method": "linear", "models": ["a"], "parameters": [1]}, "mapping of name: value"),
        (
            {"merge_method": "linear", "models": ["a"], "parameters": {"w": []}},
            "at least one value",
        ),
        (
            {"merge_method": "linear", "models": ["a"], "parameters": {"w": [1, {"value": 2}]}},
            "mixes \\{filter, value\\} entries and plain values",
        ),
        (
            {"merge_method": "linear", "models": ["a"], "parameters": {"w": [1, "x"]}},
            "mixes numbers, bools or strings",
        ),
        (
            {
                "merge_method": "linear",
                "models": ["a"],
                "parameters": {"w": [{"filter": "a", "value": [{"value": 1}]}]},
            },
            "w\\[0\\].value: a gradient is a list of numbers",
        ),
        (
            {"merge_method": "linear", "models": ["a"], "parameters": {"w": {"filter": "a"}}},
            "needs 'value'",
        ),
        (
            {
                "merge_method": "linear",
                "models": ["a"],
                "parameters": {"w": {"filtre": "a", "value": 1}},
            },
            "unknown key 'filtre'",
        ),
        (
            {
                "merge_method": "linear",
                "models": ["a"],
                "parameters": {"w": {"filter": 3, "value": 1}},
            },
            "filter must be a string",
        ),
        ({"merge_method": "linear", "models": ["a"], "parameters": {"w": float("inf")}}, "finite"),
        (
            {"merge_method": "linear", "models": ["a"], "parameters": {"w": None}},
            "expected a number",
        ),
        ({"merge_method": "linear", "models": ["a"], "seed": -1}, "non-negative integer"),
        ({"merge_method": "linear", "models": ["a"], "seed": True}, "non-negative integer"),
        ({"merge_method": "linear", "models": ["a"], "seed": 1.5}, "non-negative integer"),
        (
            {
                "merge_method": "linear",
                "models": ["a"],
                "tokenizer": {"tokens": {"<x>": {"source": {"kind": "nope"}}}},
            },
            "kind must be 'zero' or 'model_token'",
        ),
        (
            {"merge_method": "linear", "models": ["a"], "tokenizer": {"pad_to_multiple_of": 0}},
            "pad_to_multiple_of must be a positive integer",
        ),
        (
            {
                "merge_method": "linear",
                "models": ["a"],
                "tokenizer": {"tokens": {"<x>": {"source": {"kind": "model_token"}}}},
            },
            "model_token needs 'model'",
        ),
        (
            {
                "merge_method": "linear",
                "models": ["a"],
                "tokenizer": {"tokens": {"<x>": {"source": {"kind": "zero"}, "force": "yes"}}},
            },
            "force must be true or false",
        ),
        (
            {"merge_method": "linear", "models": ["a"], "tokenizer": "base"},
            "tokenizer must be a mapping",
        ),
        ({"merge_method": "linear", "models": ["a"], "chat_template": 1}, "chat_template must be"),
    ],
)
def test_refusals_while_reading(data: dict, match: str) -> None:
    refuses(data, match)


def test_refusal_text_forms() -> None:
    refuses(
        "merge_method: ties\nmerge_method: linear\nmodels: [a]\n", "duplicate key 'merge_method'"
    )
    refuses(
        "merge_method: linear\nmodels: [a]\ntokenizer_source: base\ntokenizer: {source: base}\n",
        "not both",
    )
    refuses("merge_method: linear\nmodels: [a]\ndtype: float8\n", "unknown dtype")


def test_merge_error_is_a_user_error() -> None:
    assert issubclass(MergeError, MergestoreError)


# --- validation against method specs ------------------------------------------------------------

# Hand-built declarations, independent of the registry.
GTA_LIKE = MethodSpec(
    name="gta_like",
    params=(
        ParamSpec("weight", Scope.NON_BASE),
        ParamSpec("density", Scope.NON_BASE, 1.0),
        ParamSpec("normalize", Scope.SHARED, False, bool),
        ParamSpec("steps", Scope.SHARED, 10, int),
    ),
    base=BaseRule.REQUIRED,
    min_inputs=1,
)
PAIR = MethodSpec(
    name="pair",
    params=(ParamSpec("t", Scope.SHARED),),
    base=BaseRule.REQUIRED,
    min_inputs=1,
    max_inputs=1,
)
AVERAGE = MethodSpec(
    name="average",
    params=(ParamSpec("weight", Scope.INPUT),),
    base=BaseRule.IGNORED,
    min_inputs=2,
    max_inputs=3,
)


def cfg_of(yaml_text: str) -> MergeConfig:
    return load_config(yaml_text)


def invalid(cfg: MergeConfig, spec: MethodSpec, match: str) -> None:
    with pytest.raises(MergeError, match=match) as info:
        validate_config(cfg, spec)
    assert "\n" not in str(info.value)


def test_validate_accepts_good_configs() -> None:
    validate_config(
        cfg_of(
            "merge_method: gta_like\nbase_model: b\nmodels:\n  - model: x\n"
            "    parameters: {weight: 1, density: [1, 0.5]}\nparameters: {normalize: true}\n"
        ),
        GTA_LIKE,
    )
    validate_config(
        cfg_of("merge_method: pair\nbase_model: b\nmodels: [b, x]\nparameters: {t: 0.3}\n"), PAIR
    )
    validate_config(
        cfg_of("merge_method: average\nmodels: [x, y, z]\nparameters: {weight: 1}\n"), AVERAGE
    )


def test_unknown_parameter() -> None:
    cfg = cfg_of(
        "merge_method: gta_like\nbase_model: b\nmodels: [x]\nparameters: {weight: 1, densty: 0.5}\n"
    )
    invalid(
        cfg,
        GTA_LIKE,
        "parameters: unknown parameter 'densty' for gta_like \\(did you mean 'density'\\?\\)",
    )
    cfg = cfg_of(
        "merge_method: ties\nbase_model: b\nmodels:\n  - model: x\n"
        "    parameters: {weight: 1, gamma: 0.1}\n"
    )
    invalid(
        cfg,
        get_method("ties"),
        "models\\[0\\] \\(x\\).parameters: unknown parameter 'gamma' for ties",
    )


def test_shared_parameter_set_per_model() -> None:
    cfg = cfg_of(
        "merge_method: slerp\nbase_model: b\nmodels:\n  - model: b\n  - model: x\n"
        "    parameters: {t: 0.5}\n"
    )
    invalid(cfg, get_method("slerp"), "'t' is a shared parameter of slerp")


def test_wrong_kind_of_value() -> None:
    base = "merge_method: gta_like\nbase_model: b\nmodels: [x]\nparameters: {weight: 1, "
    invalid(cfg_of(base + "normalize: 0.5}\n"), GTA_LIKE, "'normalize' must be a bool, got 0.5")
    invalid(cfg_of(base + "steps: 2.5}\n"), GTA_LIKE, "'steps' must be an integer")
    invalid(cfg_of(base + "density: abc}\n"), GTA_LIKE, "'density' must be a number, got 'abc'")
    invalid(cfg_of(base + "density: true}\n"), GTA_LIKE, "'density' must be a number, got True")
    invalid(
        cfg_of(base + "density: [{filter: mlp, value: [1, 2]}, {value: x}]}\n"),
        GTA_LIKE,
        "must be a number",
    )
    # numeric strings and integral floats are accepted, like mergekit's pydantic validation
    validate_config(cfg_of(base + "density: '0.5', steps: 4.0}\n"), GTA_LIKE)


def test_coerce_param_kinds() -> None:
    f, b, i = (
        ParamSpec("f", Scope.SHARED),
        ParamSpec("b", Scope.SHARED, False, bool),
        ParamSpec("i", Scope.SHARED, 1, int),
    )
    assert coerce_param(1, f, "x") == 1.0 and isinstance(coerce_param(1, f, "x"), float)
    assert coerce_param("1e-3", f, "x") == 1e-3
    assert coerce_param(1, b, "x") is True and coerce_param("false", b, "x") is False
    assert coerce_param(3.0, i, "x") == 3 and isinstance(coerce_param(3.0, i, "x"), int)
    with pytest.raises(MergeError):
        coerce_param(2, b, "x")
    with pytest.raises(MergeError):
        coerce_param(True, i, "x")
    with pytest.raises(MergeError):
        coerce_param("nan", f, "x")


def test_missing_required_parameter() -> None:
    # weight for model y is given nowhere on its precedence path
    cfg = cfg_of(
        "merge_method: gta_like\nbase_model: b\nmodels:\n  - model: x\n"
        "    parameters: {weight: 1}\n  - model: y\n"
    )
    invalid(cfg, GTA_LIKE, "missing required parameter 'weight' for model 'y'")
    # the base needs no NON_BASE parameter
    validate_config(
        cfg_of(
            "merge_method: gta_like\nbase_model: b\nmodels:\n  - model: b\n  - model: x\n"
            "    parameters: {weight: 1}\n"
        ),
        GTA_LIKE,
    )
    invalid(
        cfg_of("merge_method: slerp\nbase_model: b\nmodels: [b, x]\n"),
        get_method("slerp"),
        "missing required parameter 't' for slerp",
    )
    # an INPUT parameter is needed by the appended base of an IGNORED method too
    invalid(
        cfg_of(
            "merge_method: average\nbase_model: z\nmodels:\n  - {model: x, parameters: "
            "{weight: 1}}\n  - {model: y, parameters: {weight: 1}}\n"
        ),
        AVERAGE,
        "missing required parameter 'weight' for model 'z'",
    )
    # slices form: every slice (or the top level) must provide a shared required parameter
    cfg = cfg_of(
        "merge_method: pair\nbase_model: a\nslices:\n"
        "  - sources: [{model: a, layer_range: [0, 1]}, {model: b, layer_range: [0, 1]}]\n"
        "    parameters: {t: 0.5}\n"
        "  - sources: [{model: a, layer_range: [1, 2]}, {model: b, layer_range: [1, 2]}]\n"
    )
    invalid(cfg, PAIR, "missing required parameter 't' for pair")


def test_base_required_but_missing() -> None:
    cfg = cfg_of("merge_method: ties\nmodels:\n  - {model: x, parameters: {weight: 1}}\n")
    invalid(cfg, get_method("ties"), "ties requires a base model")


def test_wrong_input_count() -> None:
    invalid(
        cfg_of("merge_method: pair\nbase_model: b\nmodels: [b, x, y]\nparameters: {t: 1}\n"),
        PAIR,
        "pair takes exactly 1 non-base input model\\(s\\), got 2",
    )
    invalid(
        cfg_of("merge_method: pair\nbase_model: b\nmodels: [b]\nparameters: {t: 1}\n"),
        PAIR,
        "takes exactly 1 non-base input model\\(s\\), got 0",
    )
    invalid(
        cfg_of("merge_method: average\nmodels: [x]\nparameters: {weight: 1}\n"),
        AVERAGE,
        "needs at least 2 input model\\(s\\), got 1",
    )
    invalid(
        cfg_of("merge_method: average\nmodels: [w, x, y, z]\nparameters: {weight: 1}\n"),
        AVERAGE,
        "takes at most 3 input model\\(s\\), got 4",
    )
    # real declarations: passthrough takes one input; the appended base counts for IGNORED
    invalid(
        cfg_of("merge_method: passthrough\nbase_model: b\nmodels: [x]\n"),
        get_method("passthrough"),
        "passthrough takes exactly 1 input model\\(s\\), got 2",
    )
    invalid(
        cfg_of("merge_method: nuslerp\nmodels: [x]\nparameters: {weight: 1}\n"),
        get_method("nuslerp"),
        "nuslerp takes exactly 2 input model",
    )
    invalid(
        cfg_of("merge_method: model_stock\nbase_model: b\nmodels: [x]\n"),
        get_method("model_stock"),
        "model_stock needs at least 2 non-base",
    )


def test_slice_problems() -> None:
    cfg = cfg_of(
        "merge_method: pair\nbase_model: z\nparameters: {t: 1}\nslices:\n"
        "  - sources: [{model: a, layer_range: [0, 1]}, {model: b, layer_range: [0, 1]}]\n"
    )
    invalid(cfg, PAIR, "slices\\[0\\]: base model 'z' is not among the slice's sources")
    cfg = cfg_of(
        "merge_method: average\nparameters: {weight: 1}\nslices:\n"
        "  - sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 3]}]\n"
    )
    invalid(cfg, AVERAGE, "same number of layers \\(got \\[2, 3\\]\\)")
    cfg = cfg_of(
        "merge_method: average\nparameters: {weight: 1}\nslices:\n"
        "  - sources: [{model: a, layer_range: [0, 2]}, {model: a, layer_range: [2, 4]}]\n"
    )
    invalid(cfg, AVERAGE, "model 'a' appears twice")


def test_other_validation_refusals() -> None:
    invalid(
        cfg_of("merge_method: average\nmodels: [x, x]\nparameters: {weight: 1}\n"),
        AVERAGE,
        "model 'x' is listed twice",
    )
    invalid(
        cfg_of("merge_method: linear\nmodels: [x]\nparameters: {weight: 1}\n"),
        AVERAGE,
        "merge_method is 'linear' but was checked against 'average'",
    )
    invalid(
        cfg_of(
            "merge_method: average\nmodels: [x, y]\nparameters: {weight: 1}\n"
            "tokenizer_source: base\n"
        ),
        AVERAGE,
        "tokenizer source 'base' needs a base_model",
    )
    # objects built in code get the same checks as parsed ones
    built = MergeConfig(
        "average",
        models=(InputModel(ModelRef("x")), InputModel(ModelRef("y"))),
        parameters={"weight": Scalar(1)},
        dtype="float8",
    )
    invalid(built, AVERAGE, "unknown dtype 'float8'")
    neither = MergeConfig("average")
    invalid(neither, AVERAGE, "exactly one of 'models' or 'slices'")
    both = MergeConfig(
        "average",
        models=(InputModel(ModelRef("x")),),
        slices=(Slice((InputModel(ModelRef("x"), {}, (0, 1)),)),),
    )
    invalid(both, AVERAGE, "exactly one of 'models' or 'slices'")


def test_warnings_for_ignored_base_parameters() -> None:
    cfg = cfg_of(
        "merge_method: ties\nbase_model: b\nmodels:\n  - {model: b, parameters: "
        "{weight: 1, density: 1}}\n  - {model: x, parameters: {weight: 1}}\n"
    )
    validate_config(cfg, get_method("ties"))
    (warning,) = config_warnings(cfg, get_method("ties"))
    assert "weight, density" in warning and "'b'" in warning
    assert config_warnings(load_config(TIES_EXAMPLE), get_method("ties")) == []


# --- the CLI form --------------------------------------------------------------------------------


def test_cli_form_ties() -> None:
    cfg = config_from_cli(
        "ties",
        "main",
        ["math", "code"],
        [0.6, 0.4],
        {"density": "0.5", "normalize": "false", "lambda": "1e-1"},
        dtype="bf16",
        out_dtype=None,
        seed=7,
    )
    assert cfg.merge_method == "ties" and cfg.base_model == ModelRef("main")
    assert [(m.ref.text, m.parameters) for m in cfg.models] == [
        ("math", {"weight": Scalar(0.6)}),
        ("code", {"weight": Scalar(0.4)}),
    ]
    assert cfg.parameters == {
        "density": Scalar(0.5),
        "normalize": Scalar(False),
        "lambda": Scalar(0.1),
    }
    assert (cfg.dtype, cfg.out_dtype, cfg.seed) == ("bfloat16", None, 7)
    validate_config(cfg, get_method("ties"))
    # the recorded YAML reads back to the same config
    assert cfg.raw_text is not None
    assert load_config(cfg.raw_text) == cfg
    assert yaml.safe_load(cfg.raw_text) == cfg.to_dict()


def test_cli_form_weight_count_must_match() -> None:
    with pytest.raises(MergeError, match="got 1 weight\\(s\\) for 2 model\\(s\\)"):
        config_from_cli("ties", "main", ["a", "b"], [0.5], {}, None, None, None)
    with pytest.raises(MergeError, match="got 3 weight\\(s\\) for 2 model\\(s\\)"):
        config_from_cli("ties", "main", ["a", "b"], [0.5, 0.2, 0.1], {}, None, None, None)
    with pytest.raises(MergeError, match="at least one model"):
        config_from_cli("ties", "main", [], [], {}, None, None, None)


def test_cli_form_param_applies_to_every_model() -> None:
    # no -w: --param weight=X is the per-model default for every model (and the base of linear)
    cfg = config_from_cli("linear", None, ["a", "b"], [], {"weight": "0.5"}, None, None, None)
    assert all(m.parameters == {} for m in cfg.models)
    assert cfg.parameters == {"weight": Scalar(0.5)}
    validate_config(cfg, get_method("linear"))


def test_cli_form_shared_parameter_and_refusals() -> None:
    cfg = config_from_cli("slerp", "a", ["b"], [], {"t": "[0, 0.5, 1]"}, None, None, None)
    assert cfg.parameters == {"t": Gradient((0, 0.5, 1))}
    validate_config(cfg, get_method("slerp"))
    # weights for a method without a weight parameter are refused by validation
    cfg = config_from_cli("karcher", None, ["a", "b"], [1.0, 2.0], {}, None, None, None)
    invalid(cfg, get_method("karcher"), "unknown parameter 'weight' for karcher")
    with pytest.raises(MergeError, match="expected name=value"):
        config_from_cli("linear", None, ["a"], [], {"bad key": "1"}, None, None, None)
    with pytest.raises(MergeError, match="unknown dtype"):
        config_from_cli("linear", None, ["a"], [], {}, "float8", None, None)
    cfg = config_from_cli("linear", None, ["a+b"], [], {}, None, None, None)  # LoRA applied
    assert cfg.models[0].ref.text == "a+b"
    cfg = load_config("merge_method: linear\nmodels:\n  - model: {model: a, lora: l}\n")
    assert cfg.models[0].ref.text == "a+l"


def test_parse_cli_value() -> None:
    assert parse_cli_value("0.5") == 0.5
    assert parse_cli_value("3") == 3 and isinstance(parse_cli_value("3"), int)
    assert parse_cli_value("True") is True and parse_cli_value("false") is False
    assert parse_cli_value("1e-5") == 1e-5
    assert parse_cli_value(".5") == 0.5
    assert parse_cli_value("[1, 0.5]") == [1, 0.5]
    assert parse_cli_value('[{"filter": "mlp", "value": 1}]') == [{"filter": "mlp", "value": 1}]
    assert parse_cli_value("auto") == "auto"
