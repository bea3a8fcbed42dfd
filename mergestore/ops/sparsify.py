"""Task-vector sparsifiers of the GTA family, matching mergekit 0.1.5's ``sparsify.py``.

All take the unweighted task vector delta of one input and return the sparsified (and
optionally L1-rescaled) delta in delta's dtype.

Rank selection (magnitude, magnitude_outliers) never fully sorts: a k-th value selection
(a radix select on the float bit patterns, O(n)) finds the cut, then ties at the cut are
resolved by flat index.
Tie rule, the same at every cut: among equal magnitudes, the LOWER flat index ranks as
"more kept" first -
  * magnitude (top-k): positions are ordered by |delta| descending, ties by ascending flat
    index; the first k are kept;
  * magnitude_outliers: positions are ordered by |delta| ascending, ties by ascending flat
    index; ranks [n_bot, n_bot + target) are kept.
mergekit uses torch's non-stable argsort/sort, whose order among equal values is unspecified,
so results equal mergekit's exactly whenever no tie straddles a cut (e.g. fp32 data).

Random sparsifiers draw one keep mask per call with ``draw`` (TensorContext.keep_mask: a
counter-based Philox stream per input, or torch's global generator as mergekit does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mergestore import native
from mergestore.errors import MergeError
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.ops import alloc
from mergestore.ops.context import U64

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    from mergestore.lazy_torch import torch

RESCALE_EPS = 1e-7


def _work_dtype(t: Tensor) -> torch.dtype:
    """The dtype mergekit draws Bernoulli masks in: fp32 on CPU except for bf16 inputs."""
    if t.device.type != "cpu" or t.dtype == torch.bfloat16:
        return t.dtype
    return torch.float32


def _magnitudes(delta: Tensor) -> Tensor:
    """Flat |delta|. Ranking it in its own dtype orders exactly as mergekit's fp32 copy does
    (widening to fp32 is exact and monotone), without the copy."""
    return delta.abs().reshape(-1)


def _int_view(dtype: torch.dtype) -> torch.dtype | None:
    """The integer dtype of the same width, for the float dtypes that have fast paths."""
    return {
        torch.bfloat16: torch.int16,
        torch.float16: torch.int16,
        torch.float32: torch.int32,
    }.get(dtype)


def _kth_smallest(w: Tensor, r: int) -> tuple[Tensor, int, int]:
    """The r-th smallest (1-based) value v of a flat, non-negative float tensor, with the
    number of elements below v and equal to v.

    A radix select: for non-negative IEEE floats the bit pattern, read as an integer, orders
    like the value. 16-bit dtypes need one histogram of the bit patterns; fp32 needs two (high
    16 bits, then the low 16 bits within the chosen bucket). O(n), and unlike quickselect
    insensitive to the heavy duplication of bf16 data.
    """
    view = _int_view(w.dtype)
    if view is None or w.device.type != "cpu":
        v = torch.kthvalue(w, r).values
        return v, int((w < v).sum()), int((w == v).sum())
    bits = w.view(view)
    if view is torch.int16:
        hist = torch.bincount(bits, minlength=1 << 15)
        below = 0
    else:
        high = bits >> 16
        cum_high = torch.bincount(high, minlength=1 << 15).cumsum(0)
        bucket = int(torch.searchsorted(cum_high, r))
        below = int(cum_high[bucket - 1]) if bucket > 0 else 0
        hist = torch.bincount(bits[high == bucket] & 0xFFFF, minlength=1 << 16)
    cum = hist.cumsum(0)
    index = int(torch.searchsorted(cum, r - below))
    n_less = below + (int(cum[index - 1]) if index > 0 else 0)
    pattern = index if view is torch.int16 else (bucket << 16) | index
    v = torch.tensor([pattern], dtype=view).view(w.dtype)[0]
    return v, n_less, int(hist[index])


def first_ranks(w: Tensor, count: int, *, largest: bool) -> Tensor:
    """Bool mask of the first ``count`` positions of flat, non-negative ``w`` in rank order.

    Rank order is by value (descending if ``largest``), ties by ascending flat index. For
    16/32-bit floats a NaN ranks above +inf (its bit pattern is larger), as in torch's sort.
    """
    n = w.numel()
    if count <= 0:
        return torch.zeros(n, dtype=torch.bool, device=w.device)
    if count >= n:
        return torch.ones(n, dtype=torch.bool, device=w.device)
    # The count-th value in rank order is the cut value v; `need` of its ties are taken.
    v, n_less, n_eq = _kth_smallest(w, n - count + 1 if largest else count)
    need = count - (n - n_less - n_eq if largest else n_less)
    view = _int_view(w.dtype)
    if view is not None and w.device.type == "cpu":
        # Compare bit patterns as integers: the same order as _kth_smallest's, and faster.
        w, v = w.view(view), v.view(view)
    if need == n_eq:
        return w >= v if largest else w <= v
    # Among the values equal to v, the lowest flat indices come first in rank order: up to
    # the `need`-th of them the cut includes v, after it excludes v. One compare per element.
    last = _position_of(w == v, need) + 1
    mask = torch.empty(n, dtype=torch.bool, device=w.device)
    if largest:
        torch.ge(w[:last], v, out=mask[:last])
        torch.gt(w[last:], v, out=mask[last:])
    else:
        torch.le(w[:last], v, out=mask[:last])
        torch.lt(w[last:], v, out=mask[last:])
    return mask


_CHUNK = 1 << 16


def _position_of(flags: Tensor, k: int) -> int:
    """Flat index of the k-th (1-based) True of a flat bool tensor that has at least k.

    Counts per 64K chunk first, so only one chunk is scanned for indices (a full nonzero()
    materialises every index, several times slower).
    """
    n = flags.numel()
    whole = n // _CHUNK * _CHUNK
    if whole:
        per_chunk = flags[:whole].view(torch.uint8).view(-1, _CHUNK).sum(dim=1, dtype=torch.int32)
        cum = per_chunk.cumsum(0)
        chunk = int(torch.searchsorted(cum, k))
    else:
        cum, chunk = None, 0
    before = int(cum[chunk - 1]) if chunk > 0 and cum is not None else 0
    start = chunk * _CHUNK
    hits = torch.nonzero(flags[start : start + _CHUNK] if start < whole else flags[start:])
    return start + int(hits[k - before - 1])


def rescaled_masked(delta: Tensor, mask: Tensor, rescale: bool) -> Tensor:
    """delta * mask, then (if ``rescale``) scaled to keep delta's L1 norm.

    A bool mask multiplies as 1.0/0.0 in delta's dtype (the same products as a float mask,
    without converting the mask first).

    The rescale is skipped when either L1 norm is below 1e-7 (mergekit's eps).
    """
    masked = delta * mask
    if not rescale:
        return masked
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked * (before / after)


def rescaled_masked_(delta: Tensor, mask: Tensor, rescale: bool) -> Tensor:
    """rescaled_masked(), in place on `delta` (which the caller owns): the same kernels on
    the same values, so the same bits, without the masked copy and |.| temporaries (one
    pooled scratch serves both L1 sums)."""
    if not rescale:
        return delta.mul_(mask)
    scratch = alloc.empty_like(delta)
    before = torch.abs(delta, out=scratch).sum()
    delta.mul_(mask)
    after = torch.abs(delta, out=scratch).sum()
    del scratch
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return delta
    return delta.mul_(before / after)


def magnitude(delta: Tensor, density: float, rescale: bool) -> Tensor:
    """Keep the k = max(1, floor(density * n)) largest |delta| (TIES trim)."""
    if density >= 1:
        return delta
    n = delta.numel()
    if density <= 0 or n == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * n))
    keep = first_ranks(_magnitudes(delta), k, largest=True)
    return rescaled_masked(delta, keep.reshape(delta.shape), rescale)


def magnitude_outliers(delta: Tensor, density: float, gamma: float, rescale: bool) -> Tensor:
    """Drop the smallest |delta| and the gamma-fraction largest, keeping floor(density * n).

    Ascending ranks [n_bot, n_bot + target) are kept, with target = floor(density * n),
    n_top = floor(gamma * n), n_bot = max(0, n - target - n_top).
    """
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    w = _magnitudes(delta)
    # mergekit slices sorted indices [n_bot : n_bot + target]; a negative target keeps nothing.
    hi = min(n_bot + max(target, 0), n)
    keep = first_ranks(w, hi, largest=False) & ~first_ranks(w, n_bot, largest=False)
    return rescaled_masked(delta, keep.reshape(delta.shape), rescale)


Draw = Callable[["Tensor"], "Tensor"]  # keep-probabilities -> a 1/0 mask in their dtype


def bernoulli_(delta: Tensor, density: float, rescale: bool, draw: Draw | None) -> Tensor:
    """DARE: keep each element with probability ``density`` (p rounded to the mask dtype),
    masking `delta` in place where the mask's work dtype is delta's own (bf16, fp32).

    ``draw`` makes the mask (TensorContext.keep_mask); None: torch.bernoulli on torch's
    default generator."""
    if density >= 1:
        return delta
    if _keep_rescale_native(delta, density, draw, rescale):
        return delta
    mask = _bernoulli_mask(delta, density, draw)
    if mask.dtype != delta.dtype:  # fp16 deltas: masks are drawn in fp32
        return rescaled_masked(delta.to(mask.dtype), mask, rescale).to(delta.dtype)
    return rescaled_masked_(delta, mask, rescale)


def _keep_rescale_native(
    delta: Tensor, probs: float | Tensor, draw: Draw | None, rescale: bool
) -> bool:
    """The keep mask drawn, applied and L1-rescaled in place in one C kernel (two passes, no
    mask or |delta| temporaries), when `delta` is contiguous fp32 and `draw` is a Philox
    stream (a draw with a `philox_key`: TensorContext.drawer, rng="per_tensor"). The same bits
    as keep_mask + rescaled_masked_ (tests/ops/test_keep_rescale.py). False: the caller runs
    those."""
    key = getattr(draw, "philox_key", None)
    kernels = native.kernels
    if key is None or kernels is None or delta.dtype != torch.float32:
        return False
    if not delta.is_contiguous() or delta.device.type != "cpu" or delta.numel() == 0:
        return False
    if isinstance(probs, float):
        p = np.array([probs], dtype=np.float32)  # density rounded to fp32, as torch.full
    else:
        p = probs.contiguous().reshape(-1).numpy()
    flat = delta.reshape(-1).numpy()
    kernels.keep_rescale32(flat, p, key & U64, key >> 64, rescale, RESCALE_EPS)
    return True


def _bernoulli_mask(delta: Tensor, density: float, draw: Draw | None) -> Tensor:
    """The DARE keep mask, 1/0 in the work dtype: density is rounded to it, expanded (not
    copied) to delta's shape for the draw."""
    work = _work_dtype(delta)
    p = torch.full((), density, dtype=work).expand(delta.shape)
    return draw(p) if draw is not None else torch.bernoulli(p.contiguous())


def _della_probs(rows: Tensor, density: float, epsilon: float, work: torch.dtype) -> Tensor:
    """Keep-probabilities linear in each element's magnitude rank within its row (dim 1):
    d - eps for the smallest, d + eps for the largest, in the work dtype."""
    if (
        native.kernels is not None
        and rows.dtype == torch.bfloat16
        and work == torch.bfloat16
        and rows.dim() == 2
        and rows.device.type == "cpu"
    ):
        # The rank, the normalisation and the line below in one C pass per row, each step
        # rounded to bf16 as torch rounds it (tests/test_native.py).
        mags = rows.contiguous()
        n_rows, cols = mags.shape
        probs = alloc.empty((n_rows, cols), torch.bfloat16)
        native.kernels.della_probs_bf16(
            mags.view(torch.int16).numpy(),
            probs.view(torch.int16).numpy(),
            n_rows,
            cols,
            density - epsilon,
            epsilon,
        )
        return probs
    # Ranks come from magnitudes in delta's own dtype; they are then rounded to the work
    # dtype (bf16 rounds ranks above 256, as mergekit's does).
    ranks = _ranks_along_dim1(rows.abs(), work)
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    return (density - epsilon) + rank_norm * 2 * epsilon


def check_della(density: float, epsilon: float) -> None:
    """DELLA keep-probabilities range over [density - eps, density + eps], inside (0, 1)."""
    if 0 < density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
        raise MergeError(
            f"della: epsilon {epsilon} must keep density {density} +/- epsilon inside (0, 1)"
        )


def _ranks_along_dim1(magnitudes: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """1-based ascending ranks along dim 1 (the row of a 2-D weight); ties rank by index;
    as int64, or converted to `dtype` as torch converts int64.

    One stable sort plus a scatter, instead of mergekit's argsort of an argsort (whose tie
    order is unspecified).
    """
    dtype = torch.int64 if dtype is None else dtype
    if (
        native.kernels is not None
        and magnitudes.dtype == torch.bfloat16
        and magnitudes.dim() == 2
        and magnitudes.device.type == "cpu"
        and dtype in (torch.int64, torch.bfloat16)
    ):
        # The same ranks by two stable counting passes over the 16-bit keys, in C.
        mags = magnitudes.contiguous()
        rows, cols = mags.shape
        ranks = alloc.empty((rows, cols), dtype)
        bf16 = dtype == torch.bfloat16
        out = ranks.view(torch.int16).numpy() if bf16 else ranks.numpy()
        native.kernels.row_ranks_bf16(mags.view(torch.int16).numpy(), out, rows, cols, bf16)
        return ranks
    return _sorted_ranks(magnitudes).to(dtype)


def _sorted_ranks(magnitudes: Tensor) -> Tensor:
    order = torch.sort(magnitudes, dim=1, stable=True).indices
    shape = [1] * magnitudes.dim()
    shape[1] = magnitudes.shape[1]
    positions = torch.arange(1, shape[1] + 1, device=magnitudes.device).reshape(shape)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, positions.expand_as(order))
    return ranks


def della_magprune(
    delta: Tensor,
    density: float,
    epsilon: float,
    rescale: bool,
    draw: Draw | None,
) -> Tensor:
    """DELLA: per row, keep-probability linear in magnitude rank from d - eps to d + eps.
    `delta` is the caller's own: an fp32 one is masked in place.

    "Row" is dim 1, as in mergekit: a 1-D tensor is one row; a 2-D [out, in] weight ranks
    within each output row; higher-rank tensors rank along dim 1. (A scalar is a row of one,
    whose rank normalisation is 0/0: it is dropped; mergekit fails on it. An empty tensor is
    returned as it is.)
    """
    if density >= 1 or delta.numel() == 0:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    check_della(density, epsilon)
    shape = delta.shape
    work = _work_dtype(delta)
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    probs = _della_probs(rows, density, epsilon, work)
    if rows.dtype == work and _keep_rescale_native(rows, probs, draw, rescale):
        return rows.reshape(shape)  # rows is delta (or a view of it), masked in place
    mask = (draw(probs) if draw is not None else torch.bernoulli(probs)).to(work)
    return rescaled_masked(rows.to(work), mask, rescale).to(delta.dtype).reshape(shape)


# -- streaming rank cuts ------------------------------------------------------------------------
# For 16-bit deltas the rank cuts above also run in two streaming passes over cache-sized
# pieces: one that writes x - base and histograms its magnitudes, one that applies the mask in
# place. Whole-tensor temporaries (|delta|, masks, products) of an embedding are hundreds of
# MB of fresh, page-faulted memory; pieces stay in L2. The bits are the same: the cut value and
# tie rule come from the same histogram, and a mask multiplies each element alone.

STREAM_CHUNK = 1 << 17


class _Cut:
    """The first `count` ranks (see first_ranks) of a stream of magnitude bit patterns."""

    def __init__(self, hist: Any, n: int, count: int, largest: bool) -> None:
        """`hist`: counts of each 15-bit magnitude pattern (a torch tensor or numpy array)."""
        self.largest = largest
        self.all = count >= n
        self.none = count <= 0
        self.need_left = 0
        if self.all or self.none:
            return
        cum = np.cumsum(np.asarray(hist))
        r = n - count + 1 if largest else count
        index = int(np.searchsorted(cum, r))  # the first count >= r
        n_less = int(cum[index - 1]) if index > 0 else 0
        n_eq = int(hist[index])
        self.v = index
        need = count - (n - n_less - n_eq if largest else n_less)
        self.take_all_ties = need == n_eq
        self.need_left = need

    def mask(self, bits: Tensor) -> Tensor:
        if self.all:
            return torch.ones(bits.shape, dtype=torch.bool)
        if self.none:
            return torch.zeros(bits.shape, dtype=torch.bool)
        incl, excl = (torch.ge, torch.gt) if self.largest else (torch.le, torch.lt)
        if self.take_all_ties:
            return incl(bits, self.v)
        if self.need_left == 0:
            return excl(bits, self.v)
        eq = bits == self.v
        c = int(eq.view(torch.uint8).sum(dtype=torch.int32))
        if c <= self.need_left:
            self.need_left -= c
            return incl(bits, self.v)
        last = int(torch.nonzero(eq)[self.need_left - 1]) + 1
        self.need_left = 0
        out = torch.empty(bits.shape, dtype=torch.bool)
        incl(bits[:last], self.v, out=out[:last])
        excl(bits[last:], self.v, out=out[last:])
        return out


def streaming_supported(dtype: torch.dtype, sparsifier: str, density: float, rescale: bool) -> bool:
    """Whether delta_into can sparsify: 16-bit floats, a rank cut that keeps some, no L1
    rescale (its whole-tensor sums are rounded in torch's own order)."""
    return dtype in (torch.bfloat16, torch.float16) and cut_streams(sparsifier, density, rescale)


def cut_streams(sparsifier: str, density: float, rescale: bool) -> bool:
    """streaming_supported, for a 16-bit dtype."""
    return sparsifier in ("magnitude", "magnitude_outliers") and 0 < density < 1 and not rescale


def cut_counts(n: int, sparsifier: str, density: float, gamma: float) -> list[tuple[int, bool]]:
    """(count, largest) of each rank cut of magnitude (one: keep it) or magnitude_outliers
    (keep the first, drop the second), for n elements."""
    if sparsifier == "magnitude":
        return [(max(1, int(density * n)), True)]
    target = int(density * n)
    n_bot = max(0, n - target - int(gamma * n))
    hi = min(n_bot + max(target, 0), n)
    return [(hi, False), (n_bot, False)]


def _cuts(hist: Any, n: int, sparsifier: str, density: float, gamma: float) -> list[_Cut]:
    """The rank cuts of magnitude or magnitude_outliers (cut_counts) on a 15-bit histogram."""
    return [_Cut(hist, n, c, largest=g) for c, g in cut_counts(n, sparsifier, density, gamma)]


def delta_into(
    out: Tensor, x: Tensor, base: Tensor, sparsifier: str, density: float, gamma: float = 0.0
) -> None:
    """out = magnitude(x - base) (or magnitude_outliers), flat 16-bit tensors, streamed."""
    n = out.numel()
    if native.kernels is not None and out.dtype in (torch.bfloat16, torch.float16):
        _delta_into_native(out, x, base, sparsifier, density, gamma)
        return
    bits_of = out.view(torch.int16)
    hist = torch.zeros(1 << 15, dtype=torch.int64)
    for s in range(0, n, STREAM_CHUNK):
        e = min(n, s + STREAM_CHUNK)
        torch.sub(x[s:e], base[s:e], out=out[s:e])
        hist += torch.bincount(bits_of[s:e] & 0x7FFF, minlength=1 << 15)
    cuts = _cuts(hist, n, sparsifier, density, gamma)
    for s in range(0, n, STREAM_CHUNK):
        e = min(n, s + STREAM_CHUNK)
        bits = bits_of[s:e] & 0x7FFF
        keep = cuts[0].mask(bits)
        if len(cuts) == 2:
            keep &= ~cuts[1].mask(bits)
        out[s:e].mul_(keep)


def _delta_into_native(
    out: Tensor, x: Tensor, base: Tensor, sparsifier: str, density: float, gamma: float
) -> None:
    """delta_into for bf16 or fp16 with the C kernels: x - base and its magnitude histogram in
    one pass, then every cut applied in a second (ties located once, by a scan that stops at
    the tie the cut ends on). The same bits as the torch path."""
    delta_bits_into(
        out.view(torch.int16).numpy().view(np.uint16),
        x.contiguous().view(torch.int16).numpy().view(np.uint16),
        base.contiguous().view(torch.int16).numpy().view(np.uint16),
        sparsifier,
        density,
        gamma,
        fp16=out.dtype == torch.float16,
    )


def delta_bits_into(
    out: np.ndarray,
    x: np.ndarray,
    base: np.ndarray,
    sparsifier: str,
    density: float,
    gamma: float = 0.0,
    fp16: bool = False,
) -> None:
    """delta_into on flat numpy arrays of bf16 (or, with fp16, fp16) bits, with the C kernels
    and no torch (ops.lane16): x - base and its magnitude histogram in one pass, then every
    cut applied in a second. The 15 magnitude bits order both formats' magnitudes."""
    kernels = native.kernels
    assert kernels is not None
    hist = np.zeros(1 << 15, dtype=np.int64)
    kernels.sub_hist_bf16(out, x.view(np.int16), base.view(np.int16), hist, fp16)
    n = out.size
    cuts = [_native_cut(c, out, n) for c in _cuts(hist, n, sparsifier, density, gamma)]
    second = cuts[1] if len(cuts) == 2 else (-1, 0, 0)
    kernels.apply_cuts16(out, *cuts[0], *second, fp16)


def _native_cut(cut: _Cut, bits: np.ndarray, n: int) -> tuple[int, int, int]:
    """(mode, v, last) for apply_cuts16: mode 0 keeps none, 1 all, 2 the largest, 3 the
    smallest; ties equal to v are kept at flat indices below `last`."""
    if cut.all:
        return 1, 0, 0
    if cut.none:
        return 0, 0, 0
    mode = 2 if cut.largest else 3
    if cut.take_all_ties:
        return mode, cut.v, n
    if cut.need_left == 0:
        return mode, cut.v, 0
    assert native.kernels is not None
    return mode, cut.v, native.kernels.nth_equal16(bits, cut.v, cut.need_left) + 1
