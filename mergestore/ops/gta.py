"""Generalized task arithmetic (GTA): the shared engine of task_arithmetic, ties, dare_*,
breadcrumbs*, della*.

Per tensor, in the compute dtype D (mergekit 0.1.5 GeneralizedTaskArithmeticMerge):
  1. delta_i = x_i - base, then sparsified with its own density (and gamma / epsilon);
  2. Delta_i = w_i * delta_i with w_i rounded to D;
  3. consensus ("sum"): s = sign(sum Delta_i) with 0 -> +1; m_i = [sign(Delta_i) == s];
     merged = sum m_i Delta_i, divisor = sum m_i w_i (0 -> 1);
     no consensus: merged = sum Delta_i, divisor = sum w_i (|.| < 1e-8 -> 1);
  4. merged /= divisor if normalize; merged *= lambda if lambda != 1; out = base + merged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from mergestore.ops.context import TensorContext
from mergestore.ops.spec import BaseRule, MethodSpec, ParamSpec, Scope

# Which sparsifier each GTA method uses (None: no sparsification, density is ignored).
MAGNITUDE = "magnitude"
RANDOM = "random"
OUTLIERS = "magnitude_outliers"
DELLA = "della_magprune"


def gta_spec(
    name: str,
    *,
    sparsifier: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    kernel: Any,
    description: str,
) -> MethodSpec:
    """The declaration shared by the GTA family (parameters as in mergekit 0.1.5)."""
    params = [
        ParamSpec("weight", Scope.NON_BASE, kind=float),
        ParamSpec("density", Scope.NON_BASE, 1.0, float),
    ]
    if sparsifier == OUTLIERS:
        params.append(ParamSpec("gamma", Scope.NON_BASE, 0.01, float))
    if sparsifier == DELLA:
        params.append(ParamSpec("epsilon", Scope.NON_BASE, 0.15, float))
    params += [
        ParamSpec("normalize", Scope.SHARED, normalize, bool),
        ParamSpec("rescale", Scope.SHARED, rescale, bool),
        ParamSpec("lambda", Scope.SHARED, 1.0, float),
        ParamSpec("int8_mask", Scope.SHARED, False, bool),
    ]
    return MethodSpec(
        name=name,
        params=tuple(params),
        base=BaseRule.REQUIRED,
        min_inputs=0,  # mergekit accepts the base alone and returns it
        random=sparsifier in (RANDOM, DELLA),
        elementwise=sparsifier is None,
        additive=sparsifier is None and not consensus,
        kernel=kernel,
        description=description,
    )


def gta_merge(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: TensorContext,
    *,
    sparsifier: str | None,
    consensus: bool,
) -> Tensor:
    raise NotImplementedError
