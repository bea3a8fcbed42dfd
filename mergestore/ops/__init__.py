"""Merge methods as pure tensor functions, matching mergekit 0.1.5 bit for bit.

Importing this package registers every method (see mergestore.ops.registry).
"""

from __future__ import annotations

# Importing a method module registers it; the order here is irrelevant.
from mergestore.ops import (  # noqa: F401
    arcee_fusion,
    gta_methods,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    ram,
    ramplus_tl,
    sce,
    slerp,
)
from mergestore.ops.apply import check_inputs, merge_tensor, validate_params
from mergestore.ops.context import TensorContext
from mergestore.ops.registry import get_method, method_names, register
from mergestore.ops.spec import (
    REQUIRED,
    BaseRule,
    MethodSpec,
    OptionalTensorRule,
    ParamSpec,
    Scope,
)

__all__ = [
    "REQUIRED",
    "BaseRule",
    "MethodSpec",
    "OptionalTensorRule",
    "ParamSpec",
    "Scope",
    "TensorContext",
    "check_inputs",
    "merge_tensor",
    "validate_params",
    "get_method",
    "method_names",
    "register",
]
