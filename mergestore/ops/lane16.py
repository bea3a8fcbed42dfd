"""linear, task_arithmetic, ties and breadcrumbs(_ties) on 16-bit float bit patterns (bf16
or fp16), with the C kernels and without torch.

The 16-bit paths of ops.linear and ops.gta hand the C kernels numpy views of their tensors;
the kernels never see torch. A merge whose every float tensor has one 16-bit dtype and whose
method has a lane here can therefore run with no torch at all (mergestore.merge.engine's
torch-free lane): importing torch costs about a second on the machines this was measured on,
more than the whole merge of four 0.5 GB experts. Arrays here are numpy uint16 arrays holding
the bits; `f16` says they are fp16 rather than bf16.

What torch computed outside the kernels is computed here the same way, bit for bit
(tests/ops/test_lane16.py checks each against torch):
- a Python float weight becomes bf16 or fp16 as torch.tensor(w, dtype=...) rounds it: to
  fp32, then to the 16-bit format, each round to nearest even (through fp32, as torch
  converts; fp16 straight from the double differs);
- GTA's no-consensus divisor is the dim-0 sum of those weights, which torch accumulates in
  order in fp32 and rounds once to the format, then replaced by 1 below 1e-8, where torch
  rounds 1e-8 to the format first (in fp16 that is 0: a zero divisor stays zero);
- linear's weight sum is torch's fp32 sum of the fp32 weights: in order for up to
  LINEAR_MAX_INPUTS weights; torch's reduction uses several accumulators beyond that, so
  larger linear merges stay on the torch lane;
- the magnitude rank cuts of ties and breadcrumbs are ops.sparsify's streamed ones (a
  histogram of the 15-bit magnitudes, then the cut), for densities strictly between 0 and 1
  without rescale; other densities, and the random drops of dare and della, stay on torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from mergestore import native
from mergestore.fast_dataclass import dataclass
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.ops import alloc, sparsify
from mergestore.threads import kernel_threads, ordered_map

T = TypeVar("T")
R = TypeVar("R")

LINEAR_MAX_INPUTS = 4

# ops.gta's sparsifier names (that module imports this one).
MAGNITUDE = "magnitude"
OUTLIERS = "magnitude_outliers"

# Tensors this large are split in two column ranges, one per core (as ops.gta does).
PARALLEL_MIN = 1 << 23


def f32(values: Sequence[float]) -> list[float]:
    """Each value rounded to fp32 (round to nearest even)."""
    with np.errstate(over="ignore"):  # past fp32's range: inf, as torch gives
        return [float(v) for v in np.asarray(values, dtype=np.float64).astype(np.float32)]


def bf16(values: Sequence[float]) -> list[float]:
    """Each value rounded to bf16 as torch rounds a Python float: to fp32, then to bf16."""
    bits = np.asarray(f32(values), dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return [float(v) for v in rounded.astype(np.uint32).view(np.float32)]


def f16(values: Sequence[float]) -> list[float]:
    """Each value rounded to fp16 as torch rounds a Python float: to fp32, then to fp16."""
    with np.errstate(over="ignore"):  # past fp16's range: inf, as torch gives
        return [float(v) for v in np.asarray(f32(values), dtype=np.float32).astype(np.float16)]


def round16(values: Sequence[float], fp16: bool) -> list[float]:
    """Each value rounded to fp16 (fp16) or bf16, as torch rounds a Python float."""
    return f16(values) if fp16 else bf16(values)


def has_fp16() -> bool:
    """Whether the C kernels include the fp16 ones (HAVE_F16: the compiler has _Float16)."""
    return native.kernels is not None and bool(getattr(native.kernels, "HAVE_F16", 0))


def sum_f32(values: Sequence[float]) -> float:
    """The fp32 sum of fp32 values, added in order."""
    acc = np.float32(0.0)
    for v in values:
        acc = np.float32(acc + np.float32(v))
    return float(acc)


def gta_divisor(weights: Sequence[float], fp16: bool = False) -> float:
    """GTA's no-consensus divisor for 16-bit weights: their sum in order in fp32, rounded to
    the format (torch's dim-0 sum of a 16-bit tensor), replaced by 1 below 1e-8 in magnitude
    (compared in the format, as torch compares a 16-bit tensor with a Python float)."""
    divisor, tiny = round16([sum_f32(weights), 1e-8], fp16)
    return 1.0 if abs(divisor) < tiny else divisor


def same_memory(x: np.ndarray, base: np.ndarray) -> bool:
    """x views exactly the memory of base (so it holds the same values)."""
    return (
        x.__array_interface__["data"][0] == base.__array_interface__["data"][0]
        and x.dtype == base.dtype
        and x.shape == base.shape
        and x.strides == base.strides
    )


BF16, F16, F32 = 0, 1, 2  # the lanes' format codes (ops.lane_formats.FMT)


def finite(x: np.ndarray, fmt: int) -> bool:
    """No infinity or NaN in the flat array x (format code fmt)."""
    assert native.kernels is not None
    return bool(native.kernels.finite(x, fmt))


def live_inputs(flats: Sequence[np.ndarray], flat_base: np.ndarray, base_fmt: int) -> list[int]:
    """The inputs a cut merge must visit. An input that is the base array itself (a frozen
    tensor) has a +0 delta everywhere, cut or not: it adds +0 to the vote and to the sums
    (which start from +0, so they stay the same) and never agrees with a vote, so it is left
    out, when the base is finite (with an infinity its NaN deltas count, as in torch). Its
    weight still counts in the no-consensus divisor."""
    every = list(range(len(flats)))
    same = [i for i in every if same_memory(flats[i], flat_base)]
    if not same or not finite(flat_base, base_fmt):
        return every
    return [i for i in every if i not in same]


def _columns(total: int) -> list[range]:
    parts = kernel_threads(2) if total >= PARALLEL_MIN else 1
    step = max(1, -(-total // parts))
    return [range(s, min(total, s + step)) for s in range(0, total, step)]


def _run_columns(fn: Callable[[range], None], total: int) -> None:
    ranges = _columns(total)
    for _ in ordered_map(fn, ranges, workers=len(ranges)):
        pass


def _splits(total: int) -> bool:
    """True where a tensor of `total` elements runs its work on two threads (_columns)."""
    return len(_columns(total)) > 1


def _in_two_groups(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
    """fn over the first and the second half of items on two threads, the results in order:
    for ordered sums taken one per input (each call sums its inputs whole: the same bits)."""
    half = (len(items) + 1) // 2
    parts = ordered_map(fn, [items[:half], items[half:]], workers=2)
    return [v for part in parts for v in part]


def linear(
    inputs: Sequence[np.ndarray],
    weights: Sequence[float],
    normalize: bool,
    weight_sum: float,
    out: np.ndarray,
    fp16: bool = False,
) -> np.ndarray:
    """linear's 16-bit result into `out`: fused multiply-adds into fp32 in input order, then
    divided by `weight_sum` if normalize (see ops.linear). `weights` are fp32 values."""
    kernels = native.kernels
    assert kernels is not None
    kernels.linear_bf16(
        out.reshape(-1).view(np.int16),
        [np.ascontiguousarray(x).reshape(-1).view(np.int16) for x in inputs],
        list(weights),
        normalize,
        weight_sum,
        fp16,
    )
    return out


def gta(
    base: np.ndarray,
    inputs: Sequence[np.ndarray],
    per_input: Sequence[Mapping[str, Any]],
    *,
    sparsifier: str | None,
    consensus: bool,
    normalize: bool,
    lam: float,
    out: np.ndarray,
    fp16: bool = False,
) -> np.ndarray:
    """ops.gta's merge on 16-bit bits into `out`, for the methods that draw nothing at random:
    base + lambda * (sum_i w_i delta_i) / divisor, delta_i = x_i - base, or its magnitude
    (ties) or magnitude_outliers (breadcrumbs) rank cut (0 < density < 1, no rescale: see
    accepts_gta), with TIES' sign consensus if `consensus`.

    Weights (per_input[i]["weight"]) are rounded to the format, as mergekit rounds them to the
    compute dtype. An input that is the base array itself is skipped where the base is finite:
    before the cuts (see live_inputs); without cuts by the C kernel, span by span as it reads
    the base (gta_sum_bf16), with no pass of its own over the base."""
    assert sparsifier is not None or not consensus, "a consensus of unsparsified deltas"
    weights = round16([p["weight"] for p in per_input[: len(inputs)]], fp16)
    flat_base = np.ascontiguousarray(base).reshape(-1).view(np.uint16)
    every = [np.ascontiguousarray(x).reshape(-1).view(np.uint16) for x in inputs]
    if sparsifier is None:
        live = list(range(len(every)))
    else:
        live = live_inputs(every, flat_base, F16 if fp16 else BF16)
    flat_inputs = [every[i] for i in live]
    if sparsifier is None:
        rows = flat_inputs
    else:
        rows = [alloc.empty_bytes(flat_base.nbytes).view(np.uint16) for _ in live]

        def cut(k: int) -> None:
            p = per_input[live[k]]
            gamma = p.get("gamma", 0.0)
            sparsify.delta_bits_into(
                rows[k], flat_inputs[k], flat_base, sparsifier, p["density"], gamma, fp16
            )

        workers = kernel_threads(2) if flat_base.size >= PARALLEL_MIN else 1
        for _ in ordered_map(cut, range(len(live)), workers=workers, window=workers):
            pass
        del flat_inputs
    gta_combine(
        flat_base,
        rows,
        weights,
        live,
        deltas=sparsifier is not None,
        consensus=consensus,
        normalize=normalize,
        lam=lam,
        out=out.reshape(-1).view(np.uint16),
        fp16=fp16,
    )
    return out


def gta_combine(
    flat_base: np.ndarray,
    rows: Sequence[np.ndarray],
    weights: Sequence[float],
    live: Sequence[int],
    *,
    deltas: bool,
    consensus: bool,
    normalize: bool,
    lam: float,
    out: np.ndarray,
    fp16: bool = False,
) -> None:
    """The GTA tail of ops.gta with the C kernels, into the flat uint16 array `out`: rows[k]
    is live input live[k] (x, or its delta when `deltas`, which a consensus needs), weights
    are every input's, already rounded to the format (the no-consensus divisor counts them
    all); TIES' sign consensus if `consensus`. Two column ranges, one per core, for large
    tensors."""
    kernels = native.kernels
    assert kernels is not None
    wl = [weights[i] for i in live]
    divisor = gta_divisor(weights, fp16)

    def columns(r: range) -> None:
        a, b = r.start, r.stop
        if consensus:
            kernels.gta_consensus_bf16(
                out[a:b], flat_base[a:b], [x[a:b] for x in rows], wl, normalize, lam, lam != 1, fp16
            )
        else:
            kernels.gta_sum_bf16(
                out[a:b],
                flat_base[a:b],
                [x[a:b] for x in rows],
                wl,
                deltas,
                divisor,
                normalize,
                lam,
                lam != 1,
                fp16,
            )

    _run_columns(columns, flat_base.size)


def accepts_gta(
    sparsifier: str | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    fp16: bool = False,
) -> bool:
    """Whether gta() gives ops.gta's bits: rank cuts stream (ops.sparsify.cut_streams) only
    for a density strictly between 0 and 1 and no rescale."""
    if fp16 and not has_fp16():
        return False
    if sparsifier is None:
        return True
    rescale = bool(shared["rescale"])
    return all(sparsify.cut_streams(sparsifier, p["density"], rescale) for p in per_input)


@dataclass(frozen=True)
class Lane16:
    """A method's torch-free 16-bit kernel: merge(base, inputs, shared, per_input, out, fp16)
    with validated parameters, on uint16 arrays; accepts(shared, per_input, fp16) says whether
    it gives the bits of the method's torch lane for these parameters and format."""

    merge: Callable[..., np.ndarray]
    accepts: Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], bool], bool]


def _linear_merge(
    base: np.ndarray | None,
    inputs: Sequence[np.ndarray],
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    out: np.ndarray,
    fp16: bool = False,
) -> np.ndarray:
    weights = f32([p["weight"] for p in per_input[: len(inputs)]])
    return linear(inputs, weights, bool(shared["normalize"]), sum_f32(weights), out, fp16)


def _linear_accepts(
    shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]], fp16: bool = False
) -> bool:
    if fp16 and not has_fp16():
        return False
    return not shared["normalize"] or len(per_input) <= LINEAR_MAX_INPUTS


def _gta_lane(sparsifier: str | None, consensus: bool) -> Lane16:
    def merge(
        base: np.ndarray | None,
        inputs: Sequence[np.ndarray],
        shared: Mapping[str, Any],
        per_input: Sequence[Mapping[str, Any]],
        out: np.ndarray,
        fp16: bool = False,
    ) -> np.ndarray:
        assert base is not None
        if not inputs:
            out[...] = base
            return out
        normalize, lam = bool(shared["normalize"]), float(shared["lambda"])
        return gta(
            base,
            inputs,
            per_input,
            sparsifier=sparsifier,
            consensus=consensus,
            normalize=normalize,
            lam=lam,
            out=out,
            fp16=fp16,
        )

    def accepts(
        shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]], fp16: bool = False
    ) -> bool:
        return accepts_gta(sparsifier, shared, per_input, fp16)

    return Lane16(merge, accepts)


LANES: dict[str, Lane16] = {
    "linear": Lane16(_linear_merge, _linear_accepts),
    "task_arithmetic": _gta_lane(None, consensus=False),
    "ties": _gta_lane(MAGNITUDE, consensus=True),
    "breadcrumbs": _gta_lane(OUTLIERS, consensus=False),
    "breadcrumbs_ties": _gta_lane(OUTLIERS, consensus=True),
}
