"""linear: sum_i w_i x_i (/ sum_i w_i if normalize), accumulated in fp32."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore import native
from mergestore.ops import alloc, lane16
from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import BaseRule, MethodSpec, ParamSpec, Scope

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    from mergestore.lazy_torch import torch


def merge(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: TensorContext,
) -> Tensor:
    """sum_i w_i x_i (/ sum_i w_i), in x's dtype.

    Accumulates sequentially in input order with fused multiply-adds (addcmul) into an fp32
    buffer (fp64 for fp64 inputs); the weights and their sum are in that dtype too.
    """
    first = inputs[0]
    dtypes = {x.dtype for x in inputs}
    if native.kernels is not None and dtypes == {torch.bfloat16}:
        return _linear16(inputs, shared, per_input, fp16=False)
    if dtypes == {torch.float16} and lane16.has_fp16():
        return _linear16(inputs, shared, per_input, fp16=True)
    acc = torch.float64 if first.dtype == torch.float64 else torch.float32
    # Coefficients shaped like mergekit's batched ones ([1] * ndim) so the same broadcast
    # kernel runs; weights are rounded once from Python floats to the accumulator dtype.
    weights = torch.tensor([per_input[i]["weight"] for i in range(len(inputs))], dtype=acc)
    shape = (1,) * first.dim()
    result = torch.zeros_like(first, dtype=acc)
    for x, w in zip(inputs, weights.unbind(0), strict=True):
        result.addcmul_(x, w.reshape(shape))
    if shared["normalize"]:
        result.div_(weights.sum().reshape(shape))
    return result.to(first.dtype)


def _linear16(
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    fp16: bool,
) -> Tensor:
    """merge() on bf16 or fp16 inputs with the C kernel (ops.lane16.linear): the same fused
    multiply-adds in the same order, in one pass over memory."""
    weights = torch.tensor([per_input[i]["weight"] for i in range(len(inputs))])
    out = alloc.empty(inputs[0].shape, inputs[0].dtype)
    lane16.linear(
        [x.contiguous().view(torch.int16).numpy() for x in inputs],
        [float(w) for w in weights],
        bool(shared["normalize"]),
        float(weights.sum()),  # torch's own reduction, as the fp32 path divides by
        out.view(torch.int16).numpy(),
        fp16,
    )
    return out


SPEC = register(
    MethodSpec(
        name="linear",
        params=(
            ParamSpec("weight", Scope.INPUT, kind=float),
            ParamSpec("normalize", Scope.SHARED, True, bool),
        ),
        base=BaseRule.IGNORED,
        min_inputs=1,
        elementwise=True,
        additive=True,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
