"""Per-output-tensor plans: which input tensors feed each output tensor, with which parameters.

This follows mergekit 0.1.5's planner (normalize_config, plan_module/plan_slice/plan_tensor and
the parameter resolver), but works from tensor names instead of architecture definitions:

- the ``models`` form is one slice over all layers; a base that is not listed is appended as an
  extra input without parameters; input order is the order of ``models``/``sources``;
- layer tensors (``...layers.{i}...``) are renumbered consecutively across slices; in a slice of
  L layers the idx-th layer is planned at t = idx/(L-1) (t = 1 when L = 1);
- non-layer tensors are planned at t = 0: embeddings ("pre" weights) from the first slice's
  sources, everything else (final norm, lm_head: "post" weights) from the last slice's sources;
- a parameter is looked up in the source's own parameters, then the slice's, then the top-level
  ones; the first level whose value matches the tensor wins (per-model parameters are matched
  against the input tensor name, shared ones against the output name).

See docs/merge-config.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

from mergestore.errors import MergeError
from mergestore.fast_dataclass import dataclass
from mergestore.merge.config import (
    InputModel,
    MergeConfig,
    ModelRef,
    ParamValue,
    Slice,
    coerce_param,
    effective_slices,
    models_in_config,
    split_inputs,
    validate_config,
)
from mergestore.ops.apply import validate_params
from mergestore.ops.spec import BaseRule, MethodSpec, OptionalTensorRule, ParamSpec, Scope

__all__ = [
    "OutputTensorPlan",
    "TensorSource",
    "is_pre_weight",
    "layer_index",
    "models_in_config",
    "plan_tensors",
    "with_layer_index",
]

# The first "<container>.<n>." in a name marks a layer tensor. "layers" covers Llama-style models;
# "h", "blocks" and "layer" cover GPT-2, many vision towers and BERT-style encoders.
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")

# Non-layer tensors that come before the layers (taken from the first slice's sources).
_PRE_MARKERS = ("embed", "wte", "wpe")


def layer_index(name: str) -> int | None:
    """The layer a tensor belongs to ("model.layers.3.mlp.up_proj.weight" -> 3), else None."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def with_layer_index(name: str, index: int) -> str:
    """The same tensor name in another layer."""
    m = _LAYER.search(name)
    if m is None:
        raise ValueError(f"{name!r} is not a layer tensor")
    return name[: m.start(1)] + str(index) + name[m.end(1) :]


def is_pre_weight(name: str) -> bool:
    """Whether a non-layer tensor sits before the layers (token/position embeddings)."""
    lowered = name.lower()
    return any(marker in lowered for marker in _PRE_MARKERS)


@dataclass(frozen=True)
class TensorSource:
    """One input tensor: which model (an index into the ``models`` list) and which tensor."""

    model_index: int
    tensor_name: str


@dataclass(frozen=True)
class OutputTensorPlan:
    """Everything needed to compute one output tensor.

    ``per_input[i]`` holds the INPUT/NON_BASE parameters of ``inputs[i]``; when the method has a
    base and INPUT-scope parameters, one extra trailing entry holds the base's own values.
    When ``copy_from`` is set (an optional tensor present in a single input, per the method's
    OptionalTensorRule) the output is that tensor unchanged and no parameters are resolved.
    """

    name: str
    base: TensorSource | None
    inputs: tuple[TensorSource, ...]
    shared: dict[str, Any] = field(hash=False)
    per_input: tuple[dict[str, Any], ...] = field(hash=False)
    t: float
    copy_from: TensorSource | None = None


@dataclass
class _ModelTensors:
    """One model's tensor names, split into layer tensors (by layer) and the rest."""

    layers: dict[int, dict[str, str]]  # layer -> {layer-free key: name}
    other: set[str]

    @classmethod
    def from_names(cls, names: Sequence[str]) -> _ModelTensors:
        layers: dict[int, dict[str, str]] = {}
        other: set[str] = set()
        for name in names:
            m = _LAYER.search(name)
            if m is None:
                other.add(name)
            else:
                key = name[: m.start(1)] + "#" + name[m.end(1) :]
                layers.setdefault(int(m.group(1)), {})[key] = name
        return cls(layers, other)

    @property
    def num_layers(self) -> int:
        return max(self.layers) + 1 if self.layers else 0


def _key_name(key: str, index: int) -> str:
    return key.replace("#", str(index), 1)


@dataclass(frozen=True)
class _Participant:
    """A source of a slice, with its position in the ``models`` list and its role."""

    source: InputModel
    model_index: int
    is_base: bool


class _Planner:
    def __init__(
        self,
        cfg: MergeConfig,
        spec: MethodSpec,
        models: Sequence[ModelRef],
        tensor_names: Mapping[int, Sequence[str]],
        num_layers: int | Mapping[int, int] | None,
    ) -> None:
        self.cfg, self.spec = cfg, spec
        self.models = list(models)
        self.tensors = {i: _ModelTensors.from_names(list(n)) for i, n in tensor_names.items()}
        self.num_layers = num_layers
        self.plans: list[OutputTensorPlan] = []

    # -- inputs ----------------------------------------------------------------------------

    def index_of(self, ref: ModelRef) -> int:
        try:
            return self.models.index(ref)
        except ValueError:
            raise ValueError(f"config model {ref.text!r} is not in the models list") from None

    def model_tensors(self, index: int) -> _ModelTensors:
        if index not in self.tensors:
            raise ValueError(f"no tensor names given for model {self.models[index].text!r}")
        return self.tensors[index]

    def layers_of(self, index: int) -> int:
        if isinstance(self.num_layers, int):
            return self.num_layers
        if isinstance(self.num_layers, Mapping) and index in self.num_layers:
            return self.num_layers[index]
        return self.model_tensors(index).num_layers

    def participants(self, sl: Slice, where: str) -> list[_Participant]:
        """Base first (if the method uses one), then the other inputs in config order."""
        split = split_inputs(self.cfg, self.spec, sl, where)
        out = []
        if split.base is not None:
            out.append(_Participant(split.base, self.index_of(split.base.ref), True))
        out += [_Participant(s, self.index_of(s.ref), False) for s in split.inputs]
        return out

    def slices(self) -> list[tuple[Slice, str]]:
        """The config's slices with every layer_range filled in and checked."""
        if self.cfg.slices is not None:
            out = []
            for si, sl in enumerate(self.cfg.slices):
                for sj, s in enumerate(sl.sources):
                    assert s.layer_range is not None
                    have = self.layers_of(self.index_of(s.ref))
                    if s.layer_range[1] > have:
                        raise MergeError(
                            f"merge config: slices[{si}].sources[{sj}]: layer_range"
                            f" {list(s.layer_range)} is beyond {s.ref.text!r}'s {have} layers"
                        )
                out.append((sl, f"slices[{si}]"))
            return out
        (sl,) = effective_slices(self.cfg)
        counts = {s.ref: self.layers_of(self.index_of(s.ref)) for s in sl.sources}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{r.text!r} has {n}" for r, n in counts.items())
            raise MergeError(f"merge: the models have different numbers of layers ({detail})")
        n = next(iter(counts.values()))
        sources = tuple(InputModel(s.ref, s.parameters, (0, n) if n else None) for s in sl.sources)
        return [(Slice(sources, sl.parameters, sl.base_model), "models")]

    # -- planning --------------------------------------------------------------------------

    def run(self) -> list[OutputTensorPlan]:
        slices = self.slices()
        out_layer = 0
        for sl, where in slices:
            parts = self.participants(sl, where)
            lr = sl.sources[0].layer_range
            count = 0 if lr is None else lr[1] - lr[0]
            for idx in range(count):
                t = idx / (count - 1) if count > 1 else 1
                self.plan_layer(sl, parts, idx, out_layer, t)
                out_layer += 1

        first, first_where = slices[0]
        last, last_where = slices[-1]
        self.plan_other(first, self.participants(first, first_where), pre=True)
        self.plan_other(last, self.participants(last, last_where), pre=False)
        return sorted(self.plans, key=lambda p: p.name)

    def plan_layer(
        self, sl: Slice, parts: list[_Participant], idx: int, out_layer: int, t: float
    ) -> None:
        def in_layer(p: _Participant) -> int:
            assert p.source.layer_range is not None
            return p.source.layer_range[0] + idx

        keys: dict[str, None] = {}  # ordered union of the layer's tensors over the inputs
        for p in parts:
            layer = self.model_tensors(p.model_index).layers.get(in_layer(p), {})
            keys.update(dict.fromkeys(layer))
        for key in keys:
            names = []
            for p in parts:
                layer = self.model_tensors(p.model_index).layers.get(in_layer(p), {})
                if key not in layer:
                    raise MergeError(
                        f"merge: tensor {_key_name(key, in_layer(p))!r} is missing from model"
                        f" {p.source.ref.text!r}"
                    )
                names.append(layer[key])
            self.add_plan(sl, _key_name(key, out_layer), parts, names, t)

    def plan_other(self, sl: Slice, parts: list[_Participant], pre: bool) -> None:
        found: dict[str, None] = {}
        for p in parts:
            for name in sorted(self.model_tensors(p.model_index).other):
                if is_pre_weight(name) == pre:
                    found[name] = None
        for name in found:
            have = [p for p in parts if name in self.model_tensors(p.model_index).other]
            if len(have) == len(parts):
                self.add_plan(sl, name, parts, [name] * len(parts), 0.0)
            else:
                self.plan_partial(sl, name, parts, have)

    def plan_partial(
        self, sl: Slice, name: str, parts: list[_Participant], have: list[_Participant]
    ) -> None:
        """An optional tensor present in only some inputs, per the method's OptionalTensorRule."""
        rule = self.spec.optional_tensor
        missing = next(p for p in parts if p not in have)
        has_base = any(p.is_base for p in have)
        non_base = sum(not p.is_base for p in have)
        if rule is OptionalTensorRule.ERROR:
            raise MergeError(
                f"merge: tensor {name!r} is missing from model {missing.source.ref.text!r}"
                f" ({self.spec.name} needs it in every input)"
            )
        lone = have[0] if len(have) == 1 else None
        if lone is not None and (
            rule is OptionalTensorRule.PASSTHROUGH_SINGLETON
            or (rule is OptionalTensorRule.PASSTHROUGH_BASE_SINGLETON and lone.is_base)
        ):
            self.add_copy(name, lone)
            return
        needs_base = self.spec.base is BaseRule.REQUIRED or (
            self.spec.base is BaseRule.OPTIONAL and any(p.is_base for p in parts)
        )
        too_few = (needs_base and not has_base) or non_base < self.spec.min_inputs
        if rule is OptionalTensorRule.BASE_OR_SKIP and too_few:
            if lone is not None and lone.is_base:
                self.add_copy(name, lone)
            return  # skipped: too few inputs have it (mergekit logs a warning)
        # Merge the inputs that have it, if the method's input contract still holds.
        hi = self.spec.max_inputs
        if too_few or (hi is not None and non_base > hi):
            raise MergeError(
                f"merge: tensor {name!r} is missing from model {missing.source.ref.text!r}"
                f" and {self.spec.name} cannot merge the remaining inputs"
            )
        self.add_plan(sl, name, have, [name] * len(have), 0.0)

    def add_copy(self, name: str, p: _Participant) -> None:
        src = TensorSource(p.model_index, name)
        self.plans.append(
            OutputTensorPlan(
                name=name,
                base=src if p.is_base else None,
                inputs=() if p.is_base else (src,),
                shared={},
                per_input=(),
                t=0.0,
                copy_from=src,
            )
        )

    def add_plan(
        self,
        sl: Slice,
        out_name: str,
        parts: list[_Participant],
        in_names: list[str],
        t: float,
    ) -> None:
        base: TensorSource | None = None
        base_part: tuple[_Participant, str] | None = None
        inputs: list[TensorSource] = []
        input_parts: list[tuple[_Participant, str]] = []
        for p, in_name in zip(parts, in_names, strict=True):
            if p.is_base:
                base = TensorSource(p.model_index, in_name)
                base_part = (p, in_name)
            else:
                inputs.append(TensorSource(p.model_index, in_name))
                input_parts.append((p, in_name))

        shared = {
            ps.name: self.resolve(ps, (sl.parameters, self.cfg.parameters), out_name, t, None)
            for ps in self.spec.shared_params
        }
        per_input = [
            self.per_model(sl, p, in_name, t, self.spec.per_input_params)
            for p, in_name in input_parts
        ]
        input_scoped = tuple(ps for ps in self.spec.params if ps.scope is Scope.INPUT)
        if base_part is not None and input_scoped:
            per_input.append(self.per_model(sl, base_part[0], base_part[1], t, input_scoped))
        try:  # the method's own value checks (e.g. della's epsilon vs density), before any read
            validate_params(self.spec, shared, per_input, has_base=base is not None)
        except MergeError as e:
            raise MergeError(f"merge: tensor {out_name!r}: {e}") from None
        self.plans.append(
            OutputTensorPlan(out_name, base, tuple(inputs), shared, tuple(per_input), t)
        )

    def per_model(
        self, sl: Slice, p: _Participant, in_name: str, t: float, params: tuple[ParamSpec, ...]
    ) -> dict[str, Any]:
        levels = (p.source.parameters, sl.parameters, self.cfg.parameters)
        return {ps.name: self.resolve(ps, levels, in_name, t, p.source.ref) for ps in params}

    def resolve(
        self,
        ps: ParamSpec,
        levels: Sequence[Mapping[str, ParamValue]],
        tensor_name: str,
        t: float,
        model: ModelRef | None,
    ) -> Any:
        """The first level whose setting matches this tensor wins; else the default."""
        where = f"{tensor_name}" if model is None else f"{model.text}: {tensor_name}"
        for level in levels:
            setting = level.get(ps.name)
            if setting is None:
                continue
            value = setting.evaluate(tensor_name, t)
            if value is not None:
                return coerce_param(value, ps, where)
        if ps.required:
            whose = "" if model is None else f" model {model.text!r},"
            raise MergeError(
                f"merge config: missing required parameter {ps.name!r} for{whose}"
                f" tensor {tensor_name!r} (no filter matches)"
            )
        return ps.default


def plan_tensors(
    cfg: MergeConfig,
    spec: MethodSpec,
    models: Sequence[ModelRef],
    tensor_names: Mapping[int, Sequence[str]],
    num_layers: int | Mapping[int, int] | None = None,
) -> list[OutputTensorPlan]:
    """Plan every output tensor of a merge, sorted by output name (mergekit's execution order).

    ``models`` lists the configured models (usually ``models_in_config(cfg)``); ``tensor_names``
    and ``num_layers`` are keyed by position in that list. ``num_layers`` defaults to one more
    than the highest layer index among a model's tensor names. The config is validated first.
    """
    validate_config(cfg, spec)
    return _Planner(cfg, spec, models, tensor_names, num_layers).run()
