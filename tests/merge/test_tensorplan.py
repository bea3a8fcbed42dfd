"""Per-output-tensor plans: inputs, renumbered layers, position t, and resolved parameters.

Every expected t and parameter value below is computed by hand from the reference's rules
(t = i/(L-1), piecewise-linear gradients, first matching filter, precedence
source > slice > top level).
"""

from __future__ import annotations

import pytest

from mergestore.errors import MergeError
from mergestore.merge.config import ModelRef, load_config, models_in_config
from mergestore.merge.tensorplan import (
    OutputTensorPlan,
    TensorSource,
    is_pre_weight,
    layer_index,
    plan_tensors,
    with_layer_index,
)
from mergestore.ops import get_method, method_names
from mergestore.ops.spec import BaseRule, MethodSpec, OptionalTensorRule, ParamSpec, Scope

LAYER_PARTS = ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight")


def llama_names(n_layers: int, lm_head: bool = True) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if lm_head:
        names.append("lm_head.weight")
    names += [f"model.layers.{i}.{part}" for i in range(n_layers) for part in LAYER_PARTS]
    return names


def plan(text: str, method: str | MethodSpec, names: dict[str, list[str]], **kw):
    cfg = load_config(text)
    spec = get_method(method) if isinstance(method, str) else method
    models = models_in_config(cfg)
    by_index = {i: names[m.text] for i, m in enumerate(models) if m.text in names}
    plans = plan_tensors(cfg, spec, models, by_index, **kw)
    return {p.name: p for p in plans}, models


# --- names ---------------------------------------------------------------------------------------


def test_layer_index() -> None:
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("layers.3.attention.wq.weight") == 3
    assert layer_index("transformer.h.5.attn.c_attn.weight") == 5
    assert layer_index("model.layers.1.mlp.experts.7.w1.weight") == 1  # the first index wins
    assert layer_index("model.embed_tokens.weight") is None
    assert layer_index("lm_head.weight") is None
    assert layer_index("model.norm.weight") is None
    assert layer_index("model.mylayers.2.x") is None  # must be a whole name component
    assert with_layer_index("model.layers.12.mlp.up_proj.weight", 3) == (
        "model.layers.3.mlp.up_proj.weight"
    )
    with pytest.raises(ValueError):
        with_layer_index("lm_head.weight", 1)


def test_pre_weights() -> None:
    assert is_pre_weight("model.embed_tokens.weight")
    assert is_pre_weight("transformer.wte.weight")
    assert not is_pre_weight("lm_head.weight")
    assert not is_pre_weight("model.norm.weight")


# --- the gradient-slerp example ------------------------------------------------------------------

SLERP_3 = """\
slices:
  - sources:
      - model: orca
        layer_range: [0, 3]
      - model: platypus
        layer_range: [0, 3]
merge_method: slerp
base_model: orca
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float16
"""


def test_gradient_slerp_three_layers() -> None:
    names = llama_names(3)
    plans, models = plan(SLERP_3, "slerp", {"orca": names, "platypus": names})
    assert models == [ModelRef("orca"), ModelRef("platypus")]
    assert sorted(plans) == sorted(names)
    # hand-computed: layer i of 3 has t = i/2; s = t*4 indexes the 5-entry gradients
    expected = {
        0: (0.0, 0.0, 1.0),  # (t, self_attn, mlp)
        1: (0.5, 0.3, 0.7),  # s = 2
        2: (1.0, 1.0, 0.0),
    }
    for i, (t, attn, mlp) in expected.items():
        q = plans[f"model.layers.{i}.self_attn.q_proj.weight"]
        up = plans[f"model.layers.{i}.mlp.up_proj.weight"]
        norm = plans[f"model.layers.{i}.input_layernorm.weight"]
        assert q.t == up.t == norm.t == t
        assert q.shared == {"t": pytest.approx(attn)}
        assert up.shared == {"t": pytest.approx(mlp)}
        assert norm.shared == {"t": 0.5}  # the catch-all entry
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert plans[name].t == 0.0
        assert plans[name].shared == {"t": 0.5}
    # base first, the other model as the single input; slerp has no per-input parameters
    q = plans["model.layers.1.self_attn.q_proj.weight"]
    assert q.base == TensorSource(0, "model.layers.1.self_attn.q_proj.weight")
    assert q.inputs == (TensorSource(1, "model.layers.1.self_attn.q_proj.weight"),)
    assert q.per_input == ({},)
    assert q.copy_from is None


def test_gradient_slerp_five_layers_and_non_layer_tensors_at_t0() -> None:
    text = SLERP_3.replace("[0, 3]", "[0, 5]")
    names = llama_names(5)
    plans, _ = plan(text, "slerp", {"orca": names, "platypus": names})
    # layer 1 of 5: t = 0.25, s = 1 -> second entries; layer 3: t = 0.75, s = 3
    assert plans["model.layers.1.self_attn.q_proj.weight"].shared["t"] == pytest.approx(0.5)
    assert plans["model.layers.1.mlp.up_proj.weight"].shared["t"] == pytest.approx(0.5)
    assert plans["model.layers.3.self_attn.q_proj.weight"].shared["t"] == pytest.approx(0.7)
    assert plans["model.layers.3.mlp.up_proj.weight"].shared["t"] == pytest.approx(0.3)
    # a plain two-point gradient: lm_head (t = 0) gets the first value, as verified in mergekit
    text = SLERP_3.split("parameters:")[0] + "parameters:\n  t: [0.2, 0.8]\n"
    plans, _ = plan(text, "slerp", {"orca": llama_names(3), "platypus": llama_names(3)})
    assert plans["lm_head.weight"].shared["t"] == pytest.approx(0.2)
    assert plans["model.embed_tokens.weight"].shared["t"] == pytest.approx(0.2)
    assert plans["model.layers.0.mlp.up_proj.weight"].shared["t"] == pytest.approx(0.2)
    assert plans["model.layers.1.mlp.up_proj.weight"].shared["t"] == pytest.approx(0.5)
    assert plans["model.layers.2.mlp.up_proj.weight"].shared["t"] == pytest.approx(0.8)


def test_single_layer_slice_is_planned_at_t1() -> None:
    text = SLERP_3.split("parameters:")[0] + "parameters:\n  t: [0.2, 0.8]\n"
    text = text.replace("[0, 3]", "[2, 3]")
    plans, _ = plan(text, "slerp", {"orca": llama_names(3), "platypus": llama_names(3)})
    q = plans["model.layers.0.self_attn.q_proj.weight"]  # renumbered from input layer 2
    assert q.t == 1
    assert q.shared["t"] == pytest.approx(0.8)
    assert q.base.tensor_name == "model.layers.2.self_attn.q_proj.weight"
    assert not any(layer_index(n) == 1 for n in plans)


# --- the TIES example (models form) --------------------------------------------------------------

TIES = """\
merge_method: ties
base_model: base
models:
  - model: base
  - model: math
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: code
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: chat
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
parameters:
  normalize: true
  int8_mask: true
  lambda: 1.0
"""


def test_ties_example_per_model_parameters() -> None:
    names = llama_names(3)
    plans, models = plan(TIES, "ties", {m: names for m in ("base", "math", "code", "chat")})
    assert [m.text for m in models] == ["base", "math", "code", "chat"]
    shared = {"normalize": True, "int8_mask": True, "lambda": 1.0, "rescale": False}

    up1 = plans["model.layers.1.mlp.up_proj.weight"]  # t = 0.5
    assert up1.base == TensorSource(0, up1.name)
    assert up1.inputs == tuple(TensorSource(i, up1.name) for i in (1, 2, 3))
    assert up1.shared == shared
    math_, code, chat = up1.per_input
    assert math_ == {"weight": 1.0, "density": pytest.approx(0.7)}  # s = 1
    assert code["weight"] == pytest.approx(0.5) and code["density"] == 0.5  # s = 1.5: (0.3+0.7)/2
    assert chat == {"weight": 0.5, "density": 0.33}

    q2 = plans["model.layers.2.self_attn.q_proj.weight"]  # t = 1
    math_, code, chat = q2.per_input
    assert math_["density"] == pytest.approx(0.1)
    assert code["weight"] == pytest.approx(1.0)
    assert chat["weight"] == 0.0  # not an mlp tensor: the catch-all 0

    embed = plans["model.embed_tokens.weight"]  # t = 0
    math_, code, chat = embed.per_input
    assert math_["density"] == 1.0 and code["weight"] == 0.0 and chat["weight"] == 0.0
    assert all(isinstance(v, float) for d in embed.per_input for v in d.values())


def test_models_form_appends_unlisted_base() -> None:
    text = (
        "merge_method: ties\nbase_model: base\nmodels:\n  - {model: a, parameters: {weight: 1}}\n"
    )
    names = llama_names(1)
    plans, models = plan(text, "ties", {"a": names, "base": names})
    assert models == [ModelRef("a"), ModelRef("base")]
    p = plans["model.layers.0.mlp.up_proj.weight"]
    assert p.base == TensorSource(1, p.name) and p.inputs == (TensorSource(0, p.name),)
    assert p.t == 1  # one layer


def test_ignored_base_is_an_ordinary_input_in_model_order() -> None:
    # linear ignores the base rule: the appended base is the last input and needs a weight
    text = (
        "merge_method: linear\nbase_model: z\nmodels:\n"
        "  - {model: a, parameters: {weight: 2}}\n  - {model: b}\nparameters: {weight: 1}\n"
    )
    names = llama_names(2)
    plans, models = plan(text, "linear", {"a": names, "b": names, "z": names})
    p = plans["model.norm.weight"]
    assert p.base is None
    assert [s.model_index for s in p.inputs] == [0, 1, 2]
    assert [m.text for m in models] == ["a", "b", "z"]
    assert p.per_input == ({"weight": 2.0}, {"weight": 1.0}, {"weight": 1.0})
    assert p.shared == {"normalize": True}
    # listed in the middle, the base keeps its place
    text = "merge_method: linear\nbase_model: z\nmodels: [a, z, b]\nparameters: {weight: 1}\n"
    plans, _ = plan(text, "linear", {"a": names, "b": names, "z": names})
    assert [s.model_index for s in plans["model.norm.weight"].inputs] == [0, 1, 2]
    # without a top-level weight the appended base has none
    text = "merge_method: linear\nbase_model: z\nmodels:\n  - {model: a, parameters: {weight: 1}}\n"
    with pytest.raises(MergeError, match="missing required parameter 'weight' for model 'z'"):
        plan(text, "linear", {"a": names, "z": names})


# --- precedence ----------------------------------------------------------------------------------

PREC = MethodSpec(
    name="prec",
    params=(
        ParamSpec("w", Scope.NON_BASE, 9.0),
        ParamSpec("s", Scope.SHARED, 9.0),
        ParamSpec("b", Scope.INPUT, 9.0),
    ),
    base=BaseRule.OPTIONAL,
    min_inputs=1,
)


def test_precedence_source_over_slice_over_top_level() -> None:
    text = """\
merge_method: prec
parameters: {w: 3.0, s: 3.0}
slices:
  - sources:
      - model: a
        layer_range: [0, 2]
        parameters: {w: [{filter: mlp, value: 1.0}]}
      - model: b
        layer_range: [0, 2]
    parameters: {w: [{filter: self_attn, value: 2.0}], s: [{filter: norm, value: 2.0}]}
"""
    names = llama_names(2)
    plans, _ = plan(text, PREC, {"a": names, "b": names})
    mlp = plans["model.layers.0.mlp.up_proj.weight"]
    attn = plans["model.layers.0.self_attn.q_proj.weight"]
    norm = plans["model.layers.0.input_layernorm.weight"]
    # model a: its own filter for mlp; slice level for self_attn; top level otherwise
    assert [d["w"] for d in mlp.per_input] == [1.0, 3.0]
    assert [d["w"] for d in attn.per_input] == [2.0, 2.0]
    assert [d["w"] for d in norm.per_input] == [3.0, 3.0]
    # shared: slice level for norms, then top level
    assert norm.shared["s"] == 2.0 and mlp.shared["s"] == 3.0
    assert plans["model.norm.weight"].shared["s"] == 2.0  # "norm" is a substring
    # nothing set anywhere: the declared default
    assert [d["b"] for d in mlp.per_input] == [9.0, 9.0]


def test_per_model_filters_see_input_names_shared_filters_see_output_names() -> None:
    text = """\
merge_method: prec
slices:
  - sources:
      - model: a
        layer_range: [2, 4]
    parameters:
      w: [{filter: layers.2., value: 1.0}, {value: 0.0}]
      s: [{filter: layers.2., value: 1.0}, {filter: layers.0., value: 2.0}]
"""
    plans, _ = plan(text, PREC, {"a": llama_names(4)})
    p = plans["model.layers.0.mlp.up_proj.weight"]  # from input layer 2
    assert p.inputs == (TensorSource(0, "model.layers.2.mlp.up_proj.weight"),)
    assert p.per_input[0]["w"] == 1.0  # matched against the input name
    assert p.shared["s"] == 2.0  # matched against the output name


def test_base_input_scope_values_trail_per_input() -> None:
    text = (
        "merge_method: prec\nbase_model: a\nmodels:\n  - {model: a, parameters: {b: 5.0}}\n"
        "  - {model: x, parameters: {b: 6.0, w: 1.5}}\n"
    )
    names = llama_names(1)
    plans, _ = plan(text, PREC, {"a": names, "x": names})
    p = plans["model.layers.0.mlp.up_proj.weight"]
    assert p.per_input == ({"w": 1.5, "b": 6.0}, {"b": 5.0})  # the base's entry: INPUT params only


def test_required_parameter_unmatched_by_every_filter() -> None:
    text = (
        "merge_method: ties\nbase_model: b\nmodels:\n"
        "  - {model: x, parameters: {weight: [{filter: mlp, value: 1}]}}\n"
    )
    names = llama_names(1)
    with pytest.raises(MergeError, match="missing required parameter 'weight' for model 'x'"):
        plan(text, "ties", {"b": names, "x": names})


def test_values_are_coerced_and_checked_per_tensor() -> None:
    spec = MethodSpec(
        name="kinds",
        params=(ParamSpec("n", Scope.SHARED, 1, int), ParamSpec("flag", Scope.SHARED, False, bool)),
        base=BaseRule.IGNORED,
    )
    names = llama_names(3)
    plans, _ = plan(
        "merge_method: kinds\nmodels: [a]\nparameters: {n: [2, 4], flag: 1}\n", spec, {"a": names}
    )
    assert plans["model.layers.0.mlp.up_proj.weight"].shared == {"n": 2, "flag": True}
    assert plans["model.layers.1.mlp.up_proj.weight"].shared["n"] == 3  # (2 + 4) / 2
    # t = 0.5 on layer 1 of 3 interpolates [2, 3] to 2.5, which is not an integer
    with pytest.raises(MergeError, match="'n' must be an integer, got 2.5"):
        plan("merge_method: kinds\nmodels: [a]\nparameters: {n: [2, 3]}\n", spec, {"a": names})


def test_method_value_checks_run_at_plan_time() -> None:
    # della refuses density +/- epsilon outside [0, 1]; caught before any tensor is read
    text = (
        "merge_method: della\nbase_model: b\nmodels:\n"
        "  - {model: x, parameters: {weight: 1, density: 0.95, epsilon: 0.1}}\n"
    )
    names = llama_names(1)
    with pytest.raises(MergeError, match="merge: tensor '.+': della: epsilon"):
        plan(text, "della", {"b": names, "x": names})


# --- slices: frankenmerge stacking ---------------------------------------------------------------


def test_frankenmerge_renumbers_layers_and_takes_ends_from_first_and_last_slice() -> None:
    text = """\
slices:
  - sources: [{model: a, layer_range: [0, 4]}]
  - sources: [{model: b, layer_range: [2, 4]}]
merge_method: passthrough
parameters:
  scale: [{filter: mlp, value: [1.0, 2.0]}]
"""
    plans, _ = plan(text, "passthrough", {"a": llama_names(4), "b": llama_names(4)})
    out_layers = sorted({layer_index(n) for n in plans if layer_index(n) is not None})
    assert out_layers == list(range(6))
    assert len(plans) == 6 * len(LAYER_PARTS) + 3
    # output layers 0-3 from a's 0-3 (t = i/3), 4-5 from b's 2-3 (t = 0, 1)
    for out, (model, src, t) in enumerate(
        [(0, 0, 0.0), (0, 1, 1 / 3), (0, 2, 2 / 3), (0, 3, 1.0), (1, 2, 0.0), (1, 3, 1.0)]
    ):
        p = plans[f"model.layers.{out}.mlp.up_proj.weight"]
        assert p.base is None
        assert p.inputs == (TensorSource(model, f"model.layers.{src}.mlp.up_proj.weight"),)
        assert p.t == pytest.approx(t)
        assert p.per_input[0]["scale"] == pytest.approx(1.0 + t)
        assert plans[f"model.layers.{out}.self_attn.q_proj.weight"].per_input[0]["scale"] is None
    # embeddings from the first slice, final norm and lm_head from the last (mergekit's planner)
    assert plans["model.embed_tokens.weight"].inputs == (
        TensorSource(0, "model.embed_tokens.weight"),
    )
    assert plans["model.norm.weight"].inputs == (TensorSource(1, "model.norm.weight"),)
    assert plans["lm_head.weight"].inputs == (TensorSource(1, "lm_head.weight"),)
    assert plans["lm_head.weight"].t == 0.0


def test_slices_per_slice_base_and_parameters() -> None:
    text = """\
merge_method: slerp
base_model: a
parameters: {t: 0.1}
slices:
  - sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 2]}]
    parameters: {t: 0.9}
  - sources: [{model: b, layer_range: [2, 4]}, {model: c, layer_range: [2, 4]}]
    base_model: c
"""
    names = llama_names(4)
    plans, models = plan(text, "slerp", {"a": names, "b": names, "c": names})
    assert [m.text for m in models] == ["a", "b", "c"]
    first = plans["model.layers.1.mlp.up_proj.weight"]
    assert first.base.model_index == 0 and first.inputs[0].model_index == 1
    assert first.shared["t"] == 0.9
    second = plans["model.layers.2.mlp.up_proj.weight"]
    assert second.base == TensorSource(2, "model.layers.2.mlp.up_proj.weight")
    assert second.inputs == (TensorSource(1, "model.layers.2.mlp.up_proj.weight"),)
    assert second.shared["t"] == 0.1
    assert plans["model.embed_tokens.weight"].shared["t"] == 0.9  # first slice's parameters
    assert plans["lm_head.weight"].base.model_index == 2  # last slice's base


# --- missing tensors and layer counts ------------------------------------------------------------


def test_missing_layer_tensor_is_refused() -> None:
    names = llama_names(2)
    short = [n for n in names if n != "model.layers.1.mlp.up_proj.weight"]
    text = "merge_method: slerp\nbase_model: a\nmodels: [a, b]\nparameters: {t: 0.5}\n"
    with pytest.raises(
        MergeError, match="'model.layers.1.mlp.up_proj.weight' is missing from model 'b'"
    ):
        plan(text, "slerp", {"a": names, "b": short})


def test_layer_count_mismatch_and_range_beyond_model() -> None:
    text = "merge_method: linear\nmodels: [a, b]\nparameters: {weight: 1}\n"
    with pytest.raises(MergeError, match="different numbers of layers \\('a' has 2, 'b' has 3\\)"):
        plan(text, "linear", {"a": llama_names(2), "b": llama_names(3)})
    text = "merge_method: passthrough\nslices:\n  - sources: [{model: a, layer_range: [0, 5]}]\n"
    with pytest.raises(MergeError, match="layer_range \\[0, 5\\] is beyond 'a''s 4 layers"):
        plan(text, "passthrough", {"a": llama_names(4)})


def test_explicit_num_layers() -> None:
    text = "merge_method: passthrough\nslices:\n  - sources: [{model: a, layer_range: [0, 2]}]\n"
    with pytest.raises(MergeError, match="beyond 'a''s 1 layers"):
        plan(text, "passthrough", {"a": llama_names(2)}, num_layers=1)
    plans, _ = plan(text, "passthrough", {"a": llama_names(2)}, num_layers={0: 2})
    assert plans["model.layers.1.mlp.up_proj.weight"].t == 1.0


# --- optional tensors (present in only some inputs) ----------------------------------------------


def test_optional_tensor_error_rule() -> None:
    text = "merge_method: ties\nbase_model: b\nmodels:\n  - {model: x, parameters: {weight: 1}}\n"
    with pytest.raises(
        MergeError, match="'lm_head.weight' is missing from model 'b' \\(ties needs"
    ):
        plan(text, "ties", {"b": llama_names(1, lm_head=False), "x": llama_names(1)})


def test_optional_tensor_passthrough_singleton() -> None:
    text = "merge_method: slerp\nbase_model: b\nmodels: [b, x]\nparameters: {t: 0.5}\n"
    plans, _ = plan(text, "slerp", {"b": llama_names(1, lm_head=False), "x": llama_names(1)})
    p = plans["lm_head.weight"]
    assert p.copy_from == TensorSource(1, "lm_head.weight")
    assert p.base is None and p.inputs == (p.copy_from,)
    assert plans["model.norm.weight"].copy_from is None


def test_optional_tensor_passthrough_base_singleton() -> None:
    text = "merge_method: nearswap\nbase_model: b\nmodels: [b, x]\nparameters: {t: 0.001}\n"
    plans, _ = plan(text, "nearswap", {"b": llama_names(1), "x": llama_names(1, lm_head=False)})
    assert plans["lm_head.weight"].copy_from == TensorSource(0, "lm_head.weight")
    assert plans["lm_head.weight"].base == TensorSource(0, "lm_head.weight")
    with pytest.raises(MergeError, match="nearswap cannot merge the remaining inputs"):
        plan(text, "nearswap", {"b": llama_names(1, lm_head=False), "x": llama_names(1)})


def test_optional_tensor_base_or_skip() -> None:
    text = "merge_method: model_stock\nbase_model: b\nmodels: [b, x, y]\n"
    full, tied = llama_names(1), llama_names(1, lm_head=False)
    plans, _ = plan(text, "model_stock", {"b": full, "x": tied, "y": tied})
    assert plans["lm_head.weight"].copy_from == TensorSource(0, "lm_head.weight")
    plans, _ = plan(text, "model_stock", {"b": full, "x": full, "y": tied})
    assert "lm_head.weight" not in plans  # skipped: too few inputs have it
    plans, _ = plan(text, "model_stock", {"b": tied, "x": full, "y": full})
    assert "lm_head.weight" not in plans


def test_optional_tensor_subset_merge() -> None:
    spec = MethodSpec(
        name="subset",
        params=(ParamSpec("w", Scope.NON_BASE, 1.0),),
        base=BaseRule.REQUIRED,
        min_inputs=1,
        optional_tensor=OptionalTensorRule.PASSTHROUGH_SINGLETON,
    )
    text = (
        "merge_method: subset\nbase_model: b\n"
        "models:\n  - b\n  - x\n  - {model: y, parameters: {w: 2}}\n"
    )
    full, tied = llama_names(1), llama_names(1, lm_head=False)
    plans, _ = plan(text, spec, {"b": full, "x": tied, "y": full})
    p = plans["lm_head.weight"]
    assert p.copy_from is None
    assert p.base == TensorSource(0, "lm_head.weight")
    assert p.inputs == (TensorSource(2, "lm_head.weight"),)
    assert p.per_input == ({"w": 2.0},)


# --- every registered method ---------------------------------------------------------------------


def _config_for(spec: MethodSpec) -> str:
    n_inputs = max(spec.min_inputs, 1) if spec.max_inputs is None else spec.max_inputs
    lines = [f"merge_method: {spec.name}"]
    if spec.base is not BaseRule.IGNORED:
        lines.append("base_model: base")
    lines.append("models:")
    lines += [f"  - m{i}" for i in range(n_inputs)]
    required = {p.name: 0.5 for p in spec.params if p.required}
    if required:
        lines.append("parameters: {" + ", ".join(f"{k}: {v}" for k, v in required.items()) + "}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", method_names())
def test_every_registered_method_plans(name: str) -> None:
    spec = get_method(name)
    text = _config_for(spec)
    names = llama_names(2)
    cfg = load_config(text)
    models = models_in_config(cfg)
    plans = plan_tensors(cfg, spec, models, {i: names for i in range(len(models))})
    assert [p.name for p in plans] == sorted(names)
    for p in plans:
        assert isinstance(p, OutputTensorPlan)
        has_base = spec.base is not BaseRule.IGNORED
        assert (p.base is not None) == has_base
        assert len(p.inputs) == len(models) - int(has_base)
        assert set(p.shared) == {q.name for q in spec.shared_params}
        for d in p.per_input[: len(p.inputs)]:
            assert set(d) == {q.name for q in spec.per_input_params}
        for q in spec.params:
            if not q.required and q.scope is Scope.SHARED:
                assert p.shared[q.name] == q.default
            if q.required and q.scope is Scope.SHARED:
                assert p.shared[q.name] == 0.5
