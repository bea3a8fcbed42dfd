"""karcher: Riemannian (Karcher) mean of the inputs on the unit sphere, rescaled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register
from mergestore.ops.spec import POSITIVE, BaseRule, Bounds, MethodSpec, ParamSpec, Scope

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
    """Equal-weight Karcher mean of all inputs; norms in fp32, the rest in the input dtype."""
    if len(inputs) == 1:
        return inputs[0]
    alphas = [1.0 / len(inputs)] * len(inputs)
    return karcher_mean(list(inputs), alphas, shared["max_iter"], shared["tol"])


def karcher_mean(xs: list[Tensor], alphas: list[float], max_iter: int, tol: float) -> Tensor:
    """Weighted Karcher mean on the unit sphere times sum_i alpha_i |x_i| (mergekit 0.1.5)."""
    f = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
    norms = [torch.linalg.vector_norm(x.to(f)) for x in xs]
    units = [
        torch.zeros_like(x) if float(n) == 0.0 else (x / n).to(x.dtype)
        for x, n in zip(xs, norms, strict=True)
    ]
    live = [i for i, n in enumerate(norms) if float(n) > tol]
    if not live:
        return sum(x * 0 for x in xs)
    total = sum(alphas[i] for i in live)
    weights = [alphas[i] / total for i in live]
    live_units = [units[i] for i in live]

    mean = torch.zeros_like(live_units[0])
    for a, u in zip(weights, live_units, strict=True):
        mean += a * u
    mean_norm = torch.linalg.vector_norm(mean.to(f))
    mean = live_units[0].clone() if float(mean_norm) < tol else (mean / mean_norm).to(mean.dtype)

    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(weights, live_units, strict=True):
            c = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(c)
            if float(theta) < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - c * mean)
        step = torch.linalg.vector_norm(tangent.to(f))
        if float(step) < tol:
            break
        mean = (torch.cos(step) * mean + torch.sin(step) * (tangent / step)).to(mean.dtype)
        n = torch.linalg.vector_norm(mean.to(f))
        if float(n) > tol:
            mean = (mean / n).to(mean.dtype)

    scale = sum(a * n for a, n in zip(alphas, norms, strict=True))
    return scale * mean


SPEC = register(
    MethodSpec(
        name="karcher",
        params=(
            ParamSpec("max_iter", Scope.SHARED, 10, int, bounds=Bounds(1)),
            ParamSpec("tol", Scope.SHARED, 1e-5, float, bounds=POSITIVE),
        ),
        base=BaseRule.IGNORED,
        min_inputs=1,
        kernel=merge,
        description=__doc__.strip().splitlines()[0],
    )
)
