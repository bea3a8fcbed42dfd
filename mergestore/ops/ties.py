"""ties: per-input magnitude top-k, weighted sign election, disjoint weighted mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mergestore.ops import gta
from mergestore.ops.context import TensorContext
from mergestore.ops.registry import register

if TYPE_CHECKING:
    from torch import Tensor


def merge(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: TensorContext,
) -> Tensor:
    """See mergestore.ops.gta; returns a tensor in the compute dtype."""
    return gta.gta_merge(
        base, inputs, shared, per_input, ctx, sparsifier=gta.MAGNITUDE, consensus=True
    )


SPEC = register(
    gta.gta_spec(
        "ties",
        sparsifier=gta.MAGNITUDE,
        consensus=True,
        normalize=True,
        rescale=False,
        kernel=merge,
        description=__doc__.strip(),
    )
)
