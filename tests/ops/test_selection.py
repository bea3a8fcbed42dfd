"""The k-th value selection and its documented tie rule, against plain-Python sorting."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mergestore.ops.sparsify import first_ranks, magnitude, magnitude_outliers

# Small integer magnitudes: ties everywhere.
values = st.lists(st.integers(0, 5), min_size=1, max_size=40)


DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64])


@settings(max_examples=300, deadline=None)
@given(values, st.data(), DTYPES, st.booleans())
def test_first_ranks_matches_index_stable_sort(ints, data, dtype, same_high_bits):
    if same_high_bits and dtype is torch.float32:
        # 1 + k * 2**-20 share their high 16 bits: exercises the second radix level
        vals = [1.0 + k * 2.0**-20 for k in ints]
    else:
        vals = [float(k) for k in ints]
    w = torch.tensor(vals, dtype=dtype)
    n = len(vals)
    count = data.draw(st.integers(-1, n + 1))
    for largest in (True, False):
        # rank order: by value (descending if largest), ties by ascending flat index
        key = (lambda i: (-vals[i], i)) if largest else (lambda i: (vals[i], i))
        expected = set(sorted(range(n), key=key)[: max(count, 0)])
        got = set(torch.nonzero(first_ranks(w, count, largest=largest)).reshape(-1).tolist())
        assert got == expected


@settings(max_examples=100, deadline=None)
@given(values, st.floats(0.01, 0.99))
def test_magnitude_keeps_k_largest_lower_index_first(vals, density):
    signs = [(-1) ** i for i in range(len(vals))]
    delta = torch.tensor([v * s for v, s in zip(vals, signs, strict=True)], dtype=torch.float32)
    n = len(vals)
    k = max(1, int(density * n))
    keep = set(sorted(range(n), key=lambda i: (-vals[i], i))[:k])
    expected = [delta[i].item() if i in keep else 0.0 for i in range(n)]
    assert magnitude(delta, density, rescale=False).tolist() == expected


@settings(max_examples=100, deadline=None)
@given(values, st.floats(0.01, 0.99), st.floats(0.0, 0.5))
def test_outliers_keep_ascending_rank_window(vals, density, gamma):
    delta = torch.tensor(vals, dtype=torch.float32)
    n = len(vals)
    target, top = int(density * n), int(gamma * n)
    bot = max(0, n - target - top)
    keep = set(sorted(range(n), key=lambda i: (vals[i], i))[bot : bot + target])
    expected = [float(vals[i]) if i in keep else 0.0 for i in range(n)]
    assert magnitude_outliers(delta, density, gamma, rescale=False).tolist() == expected


def test_selection_on_2d_bf16_uses_flat_index():
    # |delta| of a bf16 [2, 3] tensor, flattened row-major; ties 1,1,1 at flat 0, 2, 4
    delta = torch.tensor([[1.0, 3.0, -1.0], [0.5, 1.0, 2.0]], dtype=torch.bfloat16)
    out = magnitude(delta, 0.5, rescale=False)  # k = 3: 3, 2, then the 1 at flat index 0
    expected = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.bfloat16)
    assert torch.equal(out, expected) and out.dtype == torch.bfloat16
