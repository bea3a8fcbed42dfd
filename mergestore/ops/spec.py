"""Declarations of merge methods: parameters, scopes, defaults and input contracts.

Everything that validates a merge, reads a YAML config or records "all parameters after
defaults" in a plan derives from these declarations (the way mergekit 0.1.5's
MergeMethodSpec does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from enum import Enum
from typing import Any

from mergestore.fast_dataclass import dataclass


class Scope(str, Enum):
    """Where a parameter's value comes from."""

    SHARED = "shared"  # one value for the whole merge (may vary per tensor via filters/gradients)
    INPUT = "input"  # one value per input model, the base included
    NON_BASE = "non_base"  # one value per non-base input model


class BaseRule(str, Enum):
    """How a method treats the base model."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    IGNORED = "ignored"  # the base, if given, is an ordinary input


class OptionalTensorRule(str, Enum):
    """What to do when an optional tensor (e.g. an untied lm_head) exists in only some inputs.

    Mirrors mergekit 0.1.5's OptionalTensorPolicy; the merge planner applies it, kernels never
    see a partial input set.
    """

    ERROR = "error"  # every input must have the tensor
    PASSTHROUGH_SINGLETON = "passthrough_singleton"  # a lone input (base or not) is copied
    PASSTHROUGH_BASE_SINGLETON = "passthrough_base_singleton"  # only a lone base is copied
    BASE_OR_SKIP = "base_or_skip"  # too few inputs: copy the base if present, else skip


class _Required:
    """Sentinel default for a required parameter (a singleton with a readable repr)."""

    _instance: _Required | None = None

    def __new__(cls) -> _Required:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # sentinel default for a required parameter


@dataclass(frozen=True)
class Bounds:
    """A numeric range: [lo, hi], with either end open or absent (None = unbounded)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v: float) -> bool:
        if v != v or v in (float("inf"), float("-inf")):
            return False  # every numeric parameter is finite
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def __str__(self) -> str:
        if self.lo is None and self.hi is None:
            return "finite"
        lo = "(-inf" if self.lo is None else ("(" if self.lo_open else "[") + f"{self.lo:g}"
        hi = "inf)" if self.hi is None else f"{self.hi:g}" + (")" if self.hi_open else "]")
        return f"in {lo}, {hi}"


FINITE = Bounds()
UNIT_OPEN_LOW = Bounds(0, 1, lo_open=True)  # (0, 1]: density, select_topk
UNIT_HALF_OPEN = Bounds(0, 1, hi_open=True)  # [0, 1): breadcrumbs' gamma, della's epsilon
NON_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, lo_open=True)


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter: its name, scope, default, kind and bounds."""

    name: str
    scope: Scope
    default: Any = REQUIRED
    kind: type = float  # float, bool or int
    nullable: bool = False  # None is a valid value (passthrough's `scale`: None = no scaling)
    description: str = ""
    bounds: Bounds | None = None  # numeric kinds: None means FINITE

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def range(self) -> Bounds | None:
        """The accepted range of a numeric parameter (None for bool and str)."""
        if self.kind not in (int, float):
            return None
        return self.bounds or FINITE


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: its name, parameters, input contract and pure kernel.

    kernel(base, inputs, shared, per_input, ctx) -> Tensor
      base:      the base tensor, or None (IGNORED methods, or an OPTIONAL base that is absent)
      inputs:    the non-base input tensors in config order (IGNORED methods: all inputs, the
                 base included where the config lists it, in mergekit's model order)
      shared:    {name: value} for SHARED params, defaults applied, resolved for this tensor
      per_input: per_input[i] = {name: value} for the INPUT/NON_BASE params of inputs[i]; for a
                 method with a base and INPUT-scope params, one extra trailing entry holds the
                 base's own values (no current method has that combination)
      ctx:       mergestore.ops.context.TensorContext (tensor name, seed, RNG mode)

    Input counts: min_inputs/max_inputs count non-base inputs (all inputs for IGNORED). A
    base-REQUIRED method with min_inputs=0 accepts the base alone and returns it (mergekit's
    GTA, sce and ram do this).
    """

    name: str
    params: tuple[ParamSpec, ...]
    base: BaseRule
    min_inputs: int = 1  # non-base inputs (or all inputs for IGNORED)
    max_inputs: int | None = None
    random: bool = False  # uses drop masks (dare, della): seeded per (seed, tensor, input)
    elementwise: bool = False  # output element j depends only on input elements j
    additive: bool = False  # output = base + sum_k w_k * delta_k (budget bound is exact)
    optional_tensor: OptionalTensorRule = OptionalTensorRule.ERROR
    kernel: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    # Extra per-tensor value checks beyond types: check(shared, per_input) raises MergeError.
    check: Callable[..., None] | None = field(default=None, compare=False, repr=False)
    description: str = ""

    @property
    def shared_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.scope is Scope.SHARED)

    @property
    def per_input_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.scope is not Scope.SHARED)

    def defaults(self) -> dict[str, Any]:
        """Default values of the optional parameters, by name."""
        return {p.name: p.default for p in self.params if not p.required}

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)
