"""ties and breadcrumbs(_ties) on the torch-free lane with their rank cuts found in one pass
(csrc/cut_select.c): each input's cuts from a sampled bracket and one gathering pass (exact
histograms when the bracket misses), then one pass over the inputs that cuts and combines.

The cuts are ops.sparsify's magnitude (ties) and magnitude_outliers (breadcrumbs) rules with
first_ranks' tie order, on x - base in the compute dtype: fp32 (mergekit's `dtype: float32`)
or bf16. tests/ops/test_cuts.py compares the cuts with a stable sort's, and the merges with
the torch path's bits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergestore import native
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.ops import alloc, sparsify
from mergestore.ops.lane16 import (
    BF16,
    PARALLEL_MIN,
    _run_columns,
    gta_divisor,
    live_inputs,
    round16,
)
from mergestore.threads import kernel_threads, ordered_map

# Sampled keys per cut search (runs of 16) and the bracket's half-width in standard deviations
# of the sample's rank: a miss only costs the exact histograms, never other bits.
SAMPLE = 16384
Z = 6.0


def find_many(
    xs: Sequence[np.ndarray],
    x_fmts: Sequence[int],
    base: np.ndarray,
    base_fmt: int,
    compute: int,
    sparsifier: str,
    params: Sequence[Mapping[str, Any]],
    sample: int = SAMPLE,
    z: float = Z,
) -> list[tuple[int, ...]]:
    """The cuts of each x - base (flat arrays, format codes) in the compute format, as
    kernels.gta_cut32 and gta_cut16 apply them: (mode1, v1, last1, mode2, v2, last2) per input,
    found in one pass over the base and the inputs. params[i] has input i's density (and
    gamma)."""
    assert native.kernels is not None
    n = base.size
    counts = [sparsify.cut_counts(n, sparsifier, p["density"], p.get("gamma", 0.0)) for p in params]
    # the gathered keys and indices (a few % of n each) on pooled, paged-in memory
    big = sample and n >= 8 * sample and xs
    scratch = alloc.empty_bytes(4 * (n // 4) * len(xs)).view(np.uint32) if big else None
    found = native.kernels.find_cuts(
        list(xs), list(x_fmts), base, base_fmt, compute, counts, sample, z, scratch
    )
    return [tuple(f[:6]) for f in found]


def find(
    x: np.ndarray,
    x_fmt: int,
    base: np.ndarray,
    base_fmt: int,
    compute: int,
    sparsifier: str,
    density: float,
    gamma: float,
    sample: int = SAMPLE,
    z: float = Z,
) -> tuple[int, ...]:
    """find_many for one input."""
    params = [{"density": density, "gamma": gamma}]
    return find_many([x], [x_fmt], base, base_fmt, compute, sparsifier, params, sample, z)[0]


def specs(
    flats: Sequence[np.ndarray],
    fmts: Sequence[int],
    flat_base: np.ndarray,
    base_fmt: int,
    compute: int,
    sparsifier: str,
    per_input: Sequence[Mapping[str, Any]],
    live: Sequence[int],
) -> list[tuple[int, ...]]:
    """Each live input's cuts, in one pass over the base and the inputs; large tensors in two
    groups of inputs, one per core."""
    workers = kernel_threads(2) if flat_base.size >= PARALLEL_MIN else 1
    step = max(1, -(-len(live) // workers))
    groups = [list(live[a : a + step]) for a in range(0, len(live), step)]

    def group(g: list[int]) -> list[tuple[int, ...]]:
        xs, xf = [flats[i] for i in g], [fmts[i] for i in g]
        params = [per_input[i] for i in g]
        return find_many(xs, xf, flat_base, base_fmt, compute, sparsifier, params)

    return [s for found in ordered_map(group, groups, workers=len(groups)) for s in found]


def gta16(
    base: np.ndarray,
    inputs: Sequence[np.ndarray],
    per_input: Sequence[Mapping[str, Any]],
    *,
    sparsifier: str,
    consensus: bool,
    normalize: bool,
    lam: float,
    out: np.ndarray,
) -> np.ndarray:
    """ops.lane16.gta for ties and breadcrumbs(_ties) in bf16 (uint16 bits; 0 < density < 1, no
    rescale): the cuts found from the inputs, then cut and combined in one pass per column
    range (kernels.gta_cut16), with no delta per input in memory. The same bits."""
    kernels = native.kernels
    assert kernels is not None
    weights = round16([p["weight"] for p in per_input[: len(inputs)]], False)
    flat_base = np.ascontiguousarray(base).reshape(-1).view(np.uint16)
    flats = [np.ascontiguousarray(x).reshape(-1).view(np.uint16) for x in inputs]
    fmts = [BF16] * len(flats)
    live = live_inputs(flats, flat_base, BF16)
    cuts = specs(flats, fmts, flat_base, BF16, BF16, sparsifier, per_input, live)
    divisor = gta_divisor(weights)
    xs, ws = [flats[i] for i in live], [weights[i] for i in live]
    flat_out = out.reshape(-1).view(np.uint16)

    def columns(r: range) -> None:
        a, b = r.start, r.stop
        kernels.gta_cut16(
            flat_out[a:b], flat_base[a:b], [x[a:b] for x in xs], cuts, a, ws, consensus,
            divisor, normalize, lam, lam != 1,
        )  # fmt: skip

    _run_columns(columns, flat_base.size)
    return out
