"""The GTA family's eight methods: one table of how each sparsifies, elects and scales.

Each is mergekit 0.1.5's generalized task arithmetic with its own switches (mergestore.ops.gta
has the arithmetic): the sparsifier of the task vectors, TIES sign consensus or a plain
weighted sum, normalisation by the kept weights, and dare/della's L1 rescale.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

from mergestore.ops import gta
from mergestore.ops.registry import register


class Variant(NamedTuple):
    name: str
    description: str
    sparsifier: str | None
    consensus: bool
    normalize: bool
    rescale: bool


VARIANTS = (
    Variant(
        "task_arithmetic",
        "task_arithmetic: base + lambda * sum_i w_i (x_i - base). density is accepted but unused.",
        None,
        consensus=False,
        normalize=False,
        rescale=False,
    ),
    Variant(
        "ties",
        "ties: per-input magnitude top-k, weighted sign election, disjoint weighted mean.",
        gta.MAGNITUDE,
        consensus=True,
        normalize=True,
        rescale=False,
    ),
    Variant(
        "dare_ties",
        "dare_ties: Bernoulli(density) drop with L1 rescale, then TIES sign consensus.",
        gta.RANDOM,
        consensus=True,
        normalize=False,
        rescale=True,
    ),
    Variant(
        "dare_linear",
        "dare_linear: Bernoulli(density) drop with L1 rescale, then a weighted sum of task "
        "vectors.",
        gta.RANDOM,
        consensus=False,
        normalize=False,
        rescale=True,
    ),
    Variant(
        "breadcrumbs",
        "breadcrumbs: drop the smallest and the gamma largest magnitudes, weighted sum.",
        gta.OUTLIERS,
        consensus=False,
        normalize=False,
        rescale=False,
    ),
    Variant(
        "breadcrumbs_ties",
        "breadcrumbs_ties: breadcrumbs sparsification, then TIES sign consensus.",
        gta.OUTLIERS,
        consensus=True,
        normalize=False,
        rescale=False,
    ),
    Variant(
        "della",
        "della: rank-dependent Bernoulli keep (per row), L1 rescale, TIES consensus.",
        gta.DELLA,
        consensus=True,
        normalize=True,
        rescale=True,
    ),
    Variant(
        "della_linear",
        "della_linear: rank-dependent Bernoulli keep (per row), L1 rescale, weighted sum.",
        gta.DELLA,
        consensus=False,
        normalize=False,
        rescale=True,
    ),
)

for _v in VARIANTS:
    register(
        gta.gta_spec(
            _v.name,
            sparsifier=_v.sparsifier,
            consensus=_v.consensus,
            normalize=_v.normalize,
            rescale=_v.rescale,
            # kernel(base, inputs, shared, per_input, ctx): a tensor in the compute dtype
            kernel=partial(gta.gta_merge, sparsifier=_v.sparsifier, consensus=_v.consensus),
            description=_v.description,
        )
    )
