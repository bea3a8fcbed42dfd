"""della_linear: rank-dependent Bernoulli keep (per row), L1 rescale, weighted sum."""

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
        base, inputs, shared, per_input, ctx, sparsifier=gta.DELLA, consensus=False
    )


SPEC = register(
    gta.gta_spec(
        "della_linear",
        sparsifier=gta.DELLA,
        consensus=False,
        normalize=False,
        rescale=True,
        kernel=merge,
        description=__doc__.strip(),
    )
)
