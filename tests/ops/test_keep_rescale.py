"""rng.c's keep_rescale32 (dare's and della's fp32 mask + L1 rescale in one C pass) against its
torch twin: TensorContext.keep_mask, then sparsify.rescaled_masked_ — bit for bit."""

from __future__ import annotations

import pytest
import torch

from mergestore import native
from mergestore.ops import TensorContext, sparsify

pytestmark = pytest.mark.skipif(native.kernels is None, reason="C kernels not built")

SIZES = [1, 7, 8, 31, 32, 33, 63, 64, 65, 1000, 4097, 100_003, 1 << 20]


def _delta(n: int, seed: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, generator=g) * 1e-3
    if kind == "zeros":
        return torch.zeros(n)
    if kind == "specials" and n >= 8:
        d[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    if kind == "tiny":
        d *= 1e-9  # L1 sums under the eps: no rescale
    return d


def _twin(delta, probs, ctx, index, rescale):
    p = (
        torch.full((), probs, dtype=torch.float32).expand(delta.shape)
        if isinstance(probs, float)
        else probs
    )
    mask = ctx.keep_mask(index, p)
    return sparsify.rescaled_masked_(delta.clone(), mask, rescale)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("kind", ["normal", "zeros", "specials", "tiny"])
def test_one_density_matches_the_torch_twin(n, rescale, kind):
    ctx = TensorContext("model.layers.0.mlp.up_proj.weight", seed=7)
    delta = _delta(n, n, kind)
    want = _twin(delta, 0.3, ctx, 2, rescale)
    got = delta.clone()
    assert sparsify._keep_rescale_native(got, 0.3, ctx.drawer(2), rescale)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("rescale", [True, False])
def test_per_element_probabilities_match_the_torch_twin(n, rescale):
    ctx = TensorContext("x", seed=3)
    delta = _delta(n, n + 1, "specials")
    probs = torch.rand(n, generator=torch.Generator().manual_seed(n)) * 0.8 + 0.1
    want = _twin(delta, probs, ctx, 0, rescale)
    got = delta.clone()
    assert sparsify._keep_rescale_native(got, probs, ctx.drawer(0), rescale)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_global_rng_and_other_dtypes_take_the_torch_path():
    delta = torch.randn(100)
    assert not sparsify._keep_rescale_native(
        delta, 0.5, TensorContext("x", rng="global").drawer(0), True
    )
    assert not sparsify._keep_rescale_native(
        delta.bfloat16(), 0.5, TensorContext("x").drawer(0), True
    )
    assert not sparsify._keep_rescale_native(delta, 0.5, lambda p: p, True)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
@pytest.mark.parametrize("rescale", [True, False])
def test_fp32_merges_equal_the_torch_path(monkeypatch, method, rescale):
    """Whole GTA merges in fp32: the kernel against MERGESTORE's torch twins (the draw
    stripped of its key, so sparsify runs keep_mask + rescaled_masked_)."""
    from mergestore.ops import merge_tensor

    g = torch.Generator().manual_seed(11)
    base = torch.randn(96, 200, generator=g)
    xs = [base + 0.01 * torch.randn(96, 200, generator=g) for _ in range(3)]
    per = [{"weight": 0.4, "density": 0.5} for _ in xs]
    if method.startswith("della"):
        per = [{**p, "epsilon": 0.1} for p in per]
    ctx = TensorContext("model.layers.3.self_attn.q_proj.weight", seed=5)
    taken = []
    kernel = sparsify._keep_rescale_native
    monkeypatch.setattr(sparsify, "_keep_rescale_native", lambda *a: taken.append(kernel(*a)))
    fast = merge_tensor(method, base, xs, {"rescale": rescale}, per, ctx)
    assert taken == [True] * 3, taken  # each input's mask went through the C kernel
    monkeypatch.setattr(sparsify, "_keep_rescale_native", kernel)
    monkeypatch.setattr(TensorContext, "drawer", lambda self, i: lambda p: self.keep_mask(i, p))
    slow = merge_tensor(method, base, xs, {"rescale": rescale}, per, ctx)
    assert torch.equal(fast.view(torch.int32), slow.view(torch.int32))


_PHILOX_PROBE = """
import numpy as np
from mergestore import native
out = []
for n in (1, 63, 64, 65, 511, 512, 513, 4097, 100_003):
    for key in (0, 12345, (1 << 128) - 1):
        u = np.random.Generator(np.random.Philox(key=key)).random(n, dtype=np.float32)
        p = np.random.default_rng(n).random(n).astype(np.float32)
        got = np.empty(n, dtype=np.float32)
        native.kernels.philox_keep(got, p, key & ((1 << 64) - 1), key >> 64, False)
        out.append(bool(np.array_equal(got, (u < p).astype(np.float32))))
print(all(out), len(out))
"""


def test_vector_and_scalar_philox_draw_numpys_stream() -> None:
    """The AVX-512 Philox (when the CPU has it) and the scalar one (MERGESTORE_NO_AVX512=1)
    both draw numpy's stream, at every length around a group of 64 and a tile of 512."""
    import os
    import subprocess
    import sys

    def run(env: dict[str, str]) -> str:
        r = subprocess.run(
            [sys.executable, "-c", _PHILOX_PROBE], capture_output=True, text=True, env=env
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    env = {k: v for k, v in os.environ.items() if k != "MERGESTORE_NO_AVX512"}
    assert run(env) == run({**env, "MERGESTORE_NO_AVX512": "1"}) == "True 27"
