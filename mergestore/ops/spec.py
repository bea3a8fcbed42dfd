"""Declarations of merge methods: parameters, scopes, defaults and input contracts.

Everything that validates a merge, reads a YAML config or records "all parameters after
defaults" in a plan derives from these declarations (the way mergekit 0.1.5's
MergeMethodSpec does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


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


REQUIRED = object()  # sentinel default for a required parameter


@dataclass(frozen=True)
class ParamSpec:
    name: str
    scope: Scope
    default: Any = REQUIRED
    kind: type = float  # float, bool or int

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: its name, parameters, input contract and pure kernel.

    kernel(base, inputs, params, ctx) -> Tensor
      base:   the base tensor or None (for IGNORED/absent base)
      inputs: list of non-base input tensors, in config order (for IGNORED methods: all inputs,
              the base included where the config lists it, in mergekit's model order)
      params: {"shared": {name: value}, "per_input": [{name: value}, ...]} resolved for this tensor
      ctx:    TensorContext (tensor name, generator factory, compute dtype, ...)
    """

    name: str
    params: tuple[ParamSpec, ...]
    base: BaseRule
    min_inputs: int = 1  # non-base inputs (or all inputs for IGNORED)
    max_inputs: int | None = None
    random: bool = False  # uses drop masks (dare, della): seeded per (seed, tensor, input)
    elementwise: bool = False  # output element j depends only on input elements j
    additive: bool = False  # output = base + sum_k w_k * delta_k (budget bound is exact)
    kernel: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    description: str = ""

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)
