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

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from mergestore import native
from mergestore.fast_dataclass import dataclass
from mergestore.ops import alloc, cuts, lane16, lanes, sparsify
from mergestore.ops.context import TensorContext
from mergestore.ops.spec import (
    UNIT_HALF_OPEN,
    UNIT_OPEN_LOW,
    BaseRule,
    MethodSpec,
    ParamSpec,
    Scope,
)
from mergestore.threads import kernel_threads, ordered_map

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    from mergestore.lazy_torch import torch

T = TypeVar("T")

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
        ParamSpec("density", Scope.NON_BASE, 1.0, float, bounds=UNIT_OPEN_LOW),
    ]
    if sparsifier == OUTLIERS:
        params.append(ParamSpec("gamma", Scope.NON_BASE, 0.01, float, bounds=UNIT_HALF_OPEN))
    if sparsifier == DELLA:
        params.append(ParamSpec("epsilon", Scope.NON_BASE, 0.15, float, bounds=UNIT_HALF_OPEN))
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
        check=_check_della if sparsifier == DELLA else None,
        description=description,
    )


def _check_della(shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]]) -> None:
    for params in per_input:
        sparsify.check_della(params["density"], params["epsilon"])


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
    """One GTA output tensor; returns base's dtype (= the compute dtype).

    Random sparsifiers draw with ``ctx.keep_mask(i, ...)`` for non-base input i, in config order.
    """
    if base is None:
        raise ValueError("GTA methods need a base tensor")
    if not inputs:
        return base
    rescale = bool(shared["rescale"])
    if base.numel() > 0 and (
        (native.kernels is not None and base.dtype == torch.bfloat16)
        or (base.dtype == torch.float16 and lane16.has_fp16())
    ):
        return _native16(_Call(base, inputs, shared, per_input, ctx, sparsifier, consensus))
    if (
        native.kernels is not None
        and base.dtype == torch.float32
        and base.numel() > 0
        and len(inputs) <= lanes.FP32_MAX_INPUTS
    ):
        return _native32(_Call(base, inputs, shared, per_input, ctx, sparsifier, consensus))
    if not consensus and _is_half(base.dtype):
        merged, divisor = _weighted_delta_sum(base, inputs, per_input, sparsifier, rescale, ctx)
        return _finish(base, merged, divisor, shared)
    deltas = _sparsified_deltas(base, inputs, per_input, sparsifier, rescale, ctx)
    # Weights are rounded to the compute dtype (0.3 -> 0.30078125 in bf16), as mergekit does.
    n = len(inputs)
    weights = torch.tensor([per_input[i]["weight"] for i in range(n)], dtype=deltas.dtype)
    if base.dim() == 0 or base.numel() <= 2 * TAIL_CHUNK:
        w = weights.reshape(n, *([1] * base.dim()))
        merged, divisor = _combine(deltas, w, consensus)
        return _finish(base, merged, divisor, shared)
    # Everything after sparsification is elementwise: run it on cache-sized column ranges of
    # the [n, N] deltas (same bits: ranges start on a multiple of 64 elements, see ops.apply).
    flat, flat_base = deltas.reshape(n, -1), base.reshape(-1)
    out = torch.empty_like(flat_base)
    w = weights.reshape(n, 1)

    def columns(start: int) -> None:
        stop = min(flat_base.numel(), start + TAIL_CHUNK)
        merged, divisor = _combine(flat[:, start:stop], w, consensus)
        out[start:stop] = _finish(flat_base[start:stop], merged, divisor, shared)

    starts = range(0, flat_base.numel(), TAIL_CHUNK)
    for _ in ordered_map(columns, starts, workers=_threads(base)):
        pass
    return out.reshape(base.shape)


TAIL_CHUNK = 1 << 17


@dataclass(frozen=True)
class _Call:
    """One gta_merge call's arguments, as the C-kernel paths (_native16, _native32) take them."""

    base: Tensor
    inputs: Sequence[Tensor]
    shared: Mapping[str, Any]
    per_input: Sequence[Mapping[str, Any]]
    ctx: TensorContext
    sparsifier: str | None
    consensus: bool


def _native16(call: _Call) -> Tensor:
    """gta_merge on bf16 or fp16 tensors with the fused C kernels: the same bits as the torch
    path below (tests/test_native.py), in one pass over memory instead of one per operation.

    Sparsified deltas are made first (as in the torch path); without a sparsifier or a
    consensus, the kernel forms x - base itself and no delta tensor exists at all.
    """
    base, inputs, shared, per_input = call.base, call.inputs, call.shared, call.per_input
    ctx, sparsifier, consensus = call.ctx, call.sparsifier, call.consensus
    n = len(inputs)
    lam = float(shared["lambda"])
    normalize = bool(shared["normalize"])
    fp16 = base.dtype == torch.float16
    if lane16.accepts_gta(sparsifier, shared, per_input, fp16) and (
        (sparsifier is None and not consensus) or sparsifier in (MAGNITUDE, OUTLIERS)
    ):
        # Nothing drawn at random: the torch-free lane's kernel (task_arithmetic, ties,
        # breadcrumbs* with streamed rank cuts; in bf16, cut and combined in one pass).
        out = alloc.empty_like(base)
        if sparsifier is not None and not fp16:
            cuts.gta16(
                _u16(base.contiguous()), [_u16(x) for x in inputs], per_input,
                sparsifier=sparsifier, consensus=consensus, normalize=normalize, lam=lam,
                out=_u16(out),
            )  # fmt: skip
            return out
        lane16.gta(
            _u16(base.contiguous()),
            [_u16(x) for x in inputs],
            per_input,
            sparsifier=sparsifier,
            consensus=consensus,
            normalize=normalize,
            lam=lam,
            out=_u16(out),
            fp16=fp16,
        )
        return out
    # Random drops, or cuts the C kernels do not stream: torch sparsifies, the C kernels
    # combine (lane16.gta_combine).
    weights = lane16.round16([per_input[i]["weight"] for i in range(n)], fp16)
    live = list(range(n))
    if sparsifier in (None, MAGNITUDE, OUTLIERS) or ctx.rng != "global":
        # An input that is the base tensor itself (the engine passes the base for an input
        # equal to it everywhere) is skipped where the base is finite (lane16.live_inputs).
        # Random drops of the other inputs keep their own streams (by input position); only
        # torch's global generator, drawn input after input, needs every input.
        flat = [_u16(x.contiguous().reshape(-1)) for x in inputs]
        fmt = lane16.F16 if fp16 else lane16.BF16
        live = lane16.live_inputs(flat, _u16(base.contiguous().reshape(-1)), fmt)
    rows = _sparsified_rows(
        base,
        [inputs[i] for i in live],
        [per_input[i] for i in live],
        sparsifier,
        shared,
        ctx,
        live,
    )
    out = alloc.empty_like(base)
    lane16.gta_combine(
        _u16(base.contiguous().reshape(-1)),
        rows,
        weights,
        live,
        deltas=True,
        consensus=consensus,
        normalize=normalize,
        lam=lam,
        out=_u16(out.reshape(-1)),
        fp16=fp16,
    )
    return out


def _native32(call: _Call) -> Tensor:
    """gta_merge in fp32 with up to 4 inputs: torch makes the sparsified deltas (dare's and
    della's random drops and L1 rescale), the fp32 C kernels of ops.lanes combine them (the
    consensus, the sums, the tail) in one pass instead of one per operation: the same fp32
    operations in the same order as _combine and _finish (tests/ops/test_lanes.py)."""
    base, inputs, shared, per_input = call.base, call.inputs, call.shared, call.per_input
    ctx, sparsifier, consensus = call.ctx, call.sparsifier, call.consensus
    deltas = _sparsified_deltas(base, inputs, per_input, sparsifier, bool(shared["rescale"]), ctx)
    n = len(inputs)
    rows = [d.numpy() for d in deltas.reshape(n, -1)]
    out = alloc.empty_like(base)
    lanes.combine32(
        base.contiguous().reshape(-1).numpy(),
        rows,
        lane16.f32([per_input[i]["weight"] for i in range(n)]),
        consensus=consensus,
        normalize=bool(shared["normalize"]),
        lam=float(shared["lambda"]),
        out=out.reshape(-1).numpy(),
    )
    return out


def _sparsified_rows(
    base: Tensor,
    inputs: Sequence[Tensor],
    per_input: Sequence[Mapping[str, Any]],
    sparsifier: str | None,
    shared: Mapping[str, Any],
    ctx: TensorContext,
    indices: Sequence[int],
) -> list[Any]:
    """Each input's sparsified delta, flat, as uint16 arrays for the C kernels."""
    if not inputs:
        return []
    rescale = bool(shared["rescale"])
    stacked = _sparsified_deltas(base, inputs, per_input, sparsifier, rescale, ctx, indices)
    return [_u16(d) for d in stacked.reshape(len(inputs), -1)]


def _u16(t: Tensor) -> Any:
    """A 16-bit tensor's bits as a numpy uint16 array (no copy), for the C kernels."""
    return t.view(torch.int16).numpy().view("u2")


def _finish(base: Tensor, merged: Tensor, divisor: Tensor, shared: Mapping[str, Any]) -> Tensor:
    """merged / divisor (if normalize), times lambda, plus the base, in the base's dtype."""
    if shared["normalize"]:
        merged /= divisor
    lam = shared["lambda"]
    if lam != 1:
        merged *= lam
    return (base + merged).to(base.dtype)


# torch sums a reduced dim of these in order in fp32 and rounds once (checked for up to 12
# inputs); fp32/fp64 sums of 5+ rows use several accumulators, so they stay on torch's sum.
def _is_half(dtype: torch.dtype) -> bool:
    return dtype in (torch.bfloat16, torch.float16)


def _weighted_delta_sum(
    base: Tensor,
    inputs: Sequence[Tensor],
    per_input: Sequence[Mapping[str, Any]],
    sparsifier: str | None,
    rescale: bool,
    ctx: TensorContext,
) -> tuple[Tensor, Tensor]:
    """sum_i w_i delta_i and sum_i w_i without consensus, for 16-bit compute dtypes.

    Bit-identical to stacking the weighted deltas and summing dim 0 (what mergekit does),
    with one fp32 accumulator instead of an [n, ...] tensor: each w_i * delta_i is rounded
    to the compute dtype, then added in input order in fp32, rounded once at the end.
    """
    dtype = base.dtype
    weights = torch.tensor([per_input[i]["weight"] for i in range(len(inputs))], dtype=dtype)
    acc = torch.zeros(base.shape, dtype=torch.float32)

    def weighted(i: int) -> Tensor:
        delta = _delta(inputs[i], base, sparsifier, per_input[i], rescale, ctx, i)
        return delta.mul_(weights[i])

    # Added in input order whichever thread made them (fp32 sums are order-sensitive).
    for delta in _per_input(weighted, len(inputs), base, sparsifier, ctx):
        acc.add_(delta.float())  # a same-dtype add is the fast kernel
        del delta
    merged = acc.to(dtype)
    del acc
    divisor = weights.reshape(-1, 1).sum(dim=0)  # the same dim-0 reduction as mergekit's
    divisor[divisor.abs() < 1e-8] = 1
    return merged, divisor.reshape(())


def _sparsified_deltas(
    base: Tensor,
    inputs: Sequence[Tensor],
    per_input: Sequence[Mapping[str, Any]],
    sparsifier: str | None,
    rescale: bool,
    ctx: TensorContext,
    indices: Sequence[int] | None = None,
) -> Tensor:
    """The deltas stacked [n, ...] as mergekit does, each sparsified on its own, unweighted,
    then stored in the compute dtype. `indices` are the inputs' positions in the merge (their
    random streams), when some were left out."""
    deltas = alloc.empty((len(inputs), *base.shape), base.dtype)
    where = list(indices) if indices is not None else list(range(len(inputs)))

    def one(i: int) -> None:
        _delta(inputs[i], base, sparsifier, per_input[i], rescale, ctx, where[i], out=deltas[i])

    for _ in _per_input(one, len(inputs), base, sparsifier, ctx):
        pass
    return deltas


# Tensors this large are worked on by two threads (inputs side by side, then column ranges):
# an embedding merged alone by the engine would otherwise leave the other core idle. Above the
# engine's 8-block pieces (4 Mi bf16 elements), which run two at a time anyway: splitting
# those too only added threads (task_arithmetic's engine 1.20-1.30 -> 1.17-1.21 s).
PARALLEL_MIN = 1 << 23


def _threads(base: Tensor) -> int:
    return kernel_threads(2) if base.numel() >= PARALLEL_MIN else 1


def _per_input(
    fn: Callable[[int], T], n: int, base: Tensor, sparsifier: str | None, ctx: TensorContext
) -> Iterator[T]:
    """fn(0), ..., fn(n-1) in order, two at a time for large tensors. Random sparsifiers draw
    from each input's own generator, so threads change nothing; torch's global generator
    (rng="global") is drawn in input order, on one thread."""
    serial = sparsifier in (RANDOM, DELLA) and ctx.rng == "global"
    # della's row ranks take ~20 bytes per element: two inputs at once would outgrow the
    # memory of mergekit's own run on an embedding.
    serial = serial or sparsifier == DELLA
    workers = 1 if serial else _threads(base)
    return ordered_map(fn, range(n), workers=workers, window=workers)


def _combine(deltas: Tensor, weights: Tensor, consensus: bool) -> tuple[Tensor, Tensor]:
    """Weight the stacked deltas (in place) and sum them, with the sign election if
    `consensus`; (merged, divisor). `weights` is shaped to broadcast over `deltas`."""
    deltas.mul_(weights)
    if consensus and _is_half(deltas.dtype):
        merged, divisor = _consensus_sums(deltas, weights)
        divisor[divisor == 0] = 1
    elif consensus:
        agree = sign_agreement(deltas)  # int8_mask: identical results, nothing to choose
        merged = (deltas * agree).sum(dim=0)
        divisor = (weights * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        merged = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    return merged, divisor


def _delta(
    x: Tensor,
    base: Tensor,
    sparsifier: str | None,
    params: Mapping[str, Any],
    rescale: bool,
    ctx: TensorContext,
    index: int,
    *,
    out: Tensor | None = None,
) -> Tensor:
    """x - base, sparsified (into `out` if given). 16-bit rank cuts stream in pieces."""
    density = params.get("density", 1.0)
    if sparsifier is not None and sparsify.streaming_supported(
        base.dtype, sparsifier, density, rescale
    ):
        target = out if out is not None else alloc.empty_like(base)
        flat = target.view(-1)
        gamma = params.get("gamma", 0.0)
        sparsify.delta_into(flat, x.reshape(-1), base.reshape(-1), sparsifier, density, gamma)
        return target
    # x - base is ours (written into `out` when given): it is sparsified in place where the
    # sparsifier can (dare's masks).
    delta = torch.sub(x, base, out=out) if out is not None else x - base
    if sparsifier is not None:
        delta = _sparsify(delta, sparsifier, params, rescale, ctx, index)
    if out is None or delta is out:
        return delta
    out.copy_(delta)
    return out


def _sparsify(
    delta: Tensor,
    sparsifier: str,
    params: Mapping[str, Any],
    rescale: bool,
    ctx: TensorContext,
    index: int,
) -> Tensor:
    density = params["density"]
    if sparsifier == MAGNITUDE:
        return sparsify.magnitude(delta, density, rescale)
    if sparsifier == OUTLIERS:
        return sparsify.magnitude_outliers(delta, density, params["gamma"], rescale)
    if sparsifier == RANDOM:  # delta is _delta's own x - base: masked in place
        return sparsify.bernoulli_(delta, density, rescale, _draw(ctx, index))
    if sparsifier == DELLA:
        draw = _draw(ctx, index)
        return sparsify.della_magprune(delta, density, params["epsilon"], rescale, draw)
    raise ValueError(f"unknown sparsifier {sparsifier!r}")


def _draw(ctx: TensorContext, index: int) -> sparsify.Draw:
    return ctx.drawer(index)


def sign_agreement(deltas: Tensor) -> Tensor:
    """TIES "sum" election: [sign(Delta_i) == sign(sum_j Delta_j)], with a sum of 0 voting +1.

    A pruned (zero) entry never agrees, since sign 0 is neither +1 nor -1; neither does NaN
    (a NaN sum votes -1, as mergekit's ``(sum >= 0) * 2 - 1`` does).
    Computed as ``Delta_i * s > 0`` with s = +-1 (an exact sign flip) rather than by
    materialising sign tensors, so mergekit's ``int8_mask`` (which only picks the dtype of
    those sign tensors) has nothing to change. The election itself uses the same dim-0 sum as
    mergekit, so its rounding is identical.
    """
    vote = (deltas.sum(dim=0) >= 0).to(deltas.dtype).mul_(2).sub_(1)
    return (deltas * vote) > 0


def _consensus_sums(deltas: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """(sum_i agree_i Delta_i, sum_i agree_i w_i) for 16-bit dtypes, in fp32 arithmetic.

    Bit-identical to mergekit's election and ``(deltas * agree).sum(0)``,
    ``(weights * agree).sum(0)``: torch sums a reduced dim of 16-bit tensors in order in fp32
    and rounds once, so the vote is the in-order fp32 sum rounded to the dtype; widening is
    exact, products with the +-1 vote and with the agree mask are exact, and the sums are the
    same in-order fp32 sums. Widening once lets every later pass run on fp32 vectors.
    """
    dtype = deltas.dtype
    wide = deltas.float()
    vote = wide[0].clone()
    for i in range(1, wide.shape[0]):
        vote.add_(wide[i])
    sign = (vote.to(dtype) >= 0).float().mul_(2).sub_(1)  # see sign_agreement
    del vote
    merged = torch.zeros(wide.shape[1:], dtype=torch.float32)
    divisor = torch.zeros(wide.shape[1:], dtype=torch.float32)
    flat_w = weights.reshape(-1)
    for i in range(wide.shape[0]):
        agree = (wide[i] * sign) > 0
        merged.add_(wide[i] * agree)
        divisor.add_(agree, alpha=float(flat_w[i]))
        del agree
    return merged.to(dtype), divisor.to(dtype)
