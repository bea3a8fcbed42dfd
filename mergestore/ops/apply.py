"""Validating parameters and inputs, and merging one tensor with mergekit 0.1.5's dtype rules.

The kernels themselves (``MethodSpec.kernel``) trust their arguments; everything a user can
get wrong is refused here with a one-line MergeError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.errors import MergeError, did_you_mean
from mergestore.ops import alloc
from mergestore.ops.context import TensorContext
from mergestore.ops.registry import get_method
from mergestore.ops.spec import BaseRule, MethodSpec, ParamSpec, Scope

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    from mergestore.lazy_torch import torch

Params = dict[str, Any]


def _type_name(kind: type) -> str:
    return {float: "a number", int: "an integer", bool: "true or false"}.get(kind, kind.__name__)


def _check_value(spec: MethodSpec, p: ParamSpec, value: Any, where: str) -> Any:
    """The value, normalised (ints accepted for floats), or MergeError."""
    if value is None and p.nullable:
        return None
    ok = False
    if p.kind is bool:
        ok = isinstance(value, bool)
    elif p.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif p.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = not math.isnan(value)
    if not ok:
        raise MergeError(
            f"{spec.name}: parameter '{p.name}'{where} must be {_type_name(p.kind)}, got {value!r}"
        )
    return value


def _unknown(spec: MethodSpec, name: str, where: str) -> None:
    known = {p.name: p for p in spec.params}
    if name in known:
        scope = known[name].scope
        kind = "shared" if scope is Scope.SHARED else "per-input"
        raise MergeError(f"{spec.name}: parameter '{name}' is {kind}, not given{where}")
    names = ", ".join(p.name for p in spec.params) or "none"
    hint = did_you_mean(name, known)
    raise MergeError(f"{spec.name}: unknown parameter '{name}'{where}{hint} (known: {names})")


def validate_params(
    spec: MethodSpec,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    *,
    has_base: bool | None = None,
) -> tuple[Params, list[Params]]:
    """Check parameter names, types and presence; return them with defaults applied.

    ``per_input`` has one mapping per kernel input (non-base inputs for methods with a base,
    all inputs for IGNORED ones), so its length is also checked against the method's input
    counts. If ``has_base`` is given, the base rule is checked too. For a method with a base
    and INPUT-scope parameters (none in mergekit 0.1.5) a present base needs one extra
    trailing mapping with its own values. Method-specific checks (della's epsilon) run last.
    """
    base_entry = bool(has_base) and _base_has_entry(spec)
    n_inputs = len(per_input) - int(base_entry)
    check_inputs(spec, has_base, n_inputs, len(per_input))
    shared_specs = spec.shared_params
    input_specs = spec.per_input_params
    out_shared: Params = {}
    for name, value in shared.items():
        if name not in {p.name for p in shared_specs}:
            _unknown(spec, name, " as shared")
        out_shared[name] = _check_value(spec, spec.param(name), value, "")
    for p in shared_specs:
        if p.name not in out_shared:
            if p.required:
                raise MergeError(f"{spec.name}: missing required parameter '{p.name}'")
            out_shared[p.name] = p.default

    out_inputs: list[Params] = []
    for i, params in enumerate(per_input):
        is_base_entry = base_entry and i == n_inputs
        where = " for the base" if is_base_entry else f" for input {i}"
        resolved: Params = {}
        for name, value in params.items():
            p = next((q for q in input_specs if q.name == name), None)
            if p is None or (is_base_entry and p.scope is Scope.NON_BASE):
                _unknown(spec, name, where)
            resolved[name] = _check_value(spec, p, value, where)
        for p in input_specs:
            if is_base_entry and p.scope is Scope.NON_BASE:
                continue
            if p.name not in resolved:
                if p.required:
                    raise MergeError(f"{spec.name}: missing required parameter '{p.name}'{where}")
                resolved[p.name] = p.default
        out_inputs.append(resolved)
    if spec.check is not None:
        spec.check(out_shared, out_inputs[:n_inputs])
    return out_shared, out_inputs


def _base_has_entry(spec: MethodSpec) -> bool:
    """Whether the base carries its own per-input values (a base-aware method with INPUT
    params; no mergekit 0.1.5 method has one)."""
    return spec.base is not BaseRule.IGNORED and any(p.scope is Scope.INPUT for p in spec.params)


def check_inputs(spec: MethodSpec, has_base: bool | None, n_inputs: int, n_param_sets: int) -> None:
    """Base rule (unless ``has_base`` is None), input count and the number of per-input
    parameter sets, or MergeError."""
    if spec.base is BaseRule.REQUIRED and has_base is False:
        raise MergeError(f"{spec.name}: a base model is required")
    if spec.base is BaseRule.IGNORED and has_base:
        raise MergeError(f"{spec.name}: takes no separate base; pass the base as an ordinary input")
    what = "inputs" if spec.base is BaseRule.IGNORED else "non-base inputs"
    lo, hi = spec.min_inputs, spec.max_inputs
    if n_inputs < lo or (hi is not None and n_inputs > hi):
        if hi == lo:
            need = f"exactly {lo}"
        elif hi is None:
            need = f"at least {lo}"
        else:
            need = f"{lo} to {hi}"
        raise MergeError(f"{spec.name}: needs {need} {what}, got {n_inputs}")
    expected = n_inputs + int(bool(has_base) and _base_has_entry(spec))
    if n_param_sets != expected:
        raise MergeError(
            f"{spec.name}: got parameters for {n_param_sets} inputs, expected {expected}"
        )


def _non_float_result(tensors: Sequence[Tensor], name: str) -> Tensor | None:
    """An integer/bool buffer is copied if every input agrees exactly; else MergeError."""
    if all(t.is_floating_point() for t in tensors):
        return None
    first = tensors[0]
    for t in tensors[1:]:
        if t.dtype != first.dtype or t.shape != first.shape or not torch.equal(t, first):
            raise MergeError(f"non-float tensor {name!r} differs between inputs")
    return first.clone()


def merge_tensor(
    method: str,
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: TensorContext,
    *,
    dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Validate, apply mergekit 0.1.5's dtype rules, and run ``method``'s kernel.

    - Non-float tensors: returned (a copy) if all inputs are equal, else MergeError.
    - Float tensors are cast to ``dtype`` if given (mergekit's ``dtype:``), else to the
      promoted dtype of all inputs (fp16 + bf16 -> fp32), then merged.
    - The kernel's result dtype is mergekit's (usually the compute dtype; see
      docs/methods.md); ``out_dtype``, if given, casts it (mergekit's ``out_dtype:``).
    Parameters may omit optional values; defaults are applied here.
    """
    spec = get_method(method)
    check_inputs(spec, base is not None, len(inputs), len(per_input))
    shared_r, per_input_r = validate_params(spec, shared, per_input, has_base=base is not None)
    tensors = ([base] if base is not None else []) + list(inputs)
    first = tensors[0]
    for t in tensors[1:]:
        if t.shape != first.shape:
            shapes = ", ".join(str(tuple(x.shape)) for x in tensors)
            raise MergeError(f"{spec.name}: shape mismatch for {ctx.name!r}: {shapes}")
    copied = _non_float_result(tensors, ctx.name)
    if copied is not None:
        return copied
    for name, value in (("dtype", dtype), ("out_dtype", out_dtype)):
        if value is not None and not value.is_floating_point:
            raise MergeError(f"{name} must be a floating-point dtype, not {value}")
    compute = dtype
    if compute is None:
        compute = first.dtype
        for t in tensors[1:]:
            compute = torch.promote_types(compute, t.dtype)
    assert spec.kernel is not None
    if spec.elementwise and first.dim() > 0 and first.numel() > CHUNK_ELEMENTS:
        return _merge_in_chunks(spec, base, inputs, shared_r, per_input_r, ctx, compute, out_dtype)
    base_c = converted(base, compute) if base is not None else None
    inputs_c = [converted(x, compute) for x in inputs]
    result = spec.kernel(base_c, inputs_c, shared_r, per_input_r, ctx)
    return converted(result, out_dtype) if out_dtype is not None else result


def converted(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t.to(dtype), a contiguous one into a pooled buffer (ops.alloc): the same copy kernel,
    so the same bits, without the fresh pages a merge's every fp32 copy of a 16-bit input
    cost (the kernel zeroes them: 17% of a float32 dare_ties merge's CPU time)."""
    if t.dtype == dtype or not t.is_contiguous() or t.numel() * dtype.itemsize < alloc.POOLED_MIN:
        return t.to(dtype)
    return alloc.empty(t.shape, dtype).copy_(t)


# Elementwise kernels run on cache-sized pieces of the flattened tensors: each of their
# passes (subtract, scale, widen, accumulate) then stays in L2 instead of streaming the whole
# tensor through memory, which made task_arithmetic's 16-bit kernel 4x faster (docs/methods.md).
# A multiple of 64 elements, so every element keeps its lane in torch's vectorized loops (the
# scalar tail is the whole tensor's): results are bit-identical to one call on the whole.
CHUNK_ELEMENTS = 1 << 18


def _merge_in_chunks(
    spec: Any,
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Params,
    per_input: list[Params],
    ctx: TensorContext,
    compute: torch.dtype,
    out_dtype: torch.dtype | None,
) -> Tensor:
    """An elementwise kernel applied piece by piece; the same bits as one whole call. The shape
    is the first input's, or the base's when there is no input (ram of the base alone)."""
    shape = inputs[0].shape if inputs else base.shape if base is not None else None
    assert shape is not None, "an elementwise merge needs a base or an input"
    flat_base = base.reshape(-1) if base is not None else None
    flat_inputs = [x.reshape(-1) for x in inputs]
    n = shape.numel()
    out: Tensor | None = None
    for start in range(0, n, CHUNK_ELEMENTS):
        stop = min(n, start + CHUNK_ELEMENTS)
        piece_base = flat_base[start:stop].to(compute) if flat_base is not None else None
        pieces = [x[start:stop].to(compute) for x in flat_inputs]
        result = spec.kernel(piece_base, pieces, shared, per_input, ctx)
        if out is None:
            out = alloc.empty((n,), out_dtype or result.dtype)
        out[start:stop] = result
    assert out is not None
    return out.reshape(shape)
