"""Merge kernels are pure: they never write to their input tensors.

The engine relies on it: an input whose blocks all equal the base's is handed to the kernel as
the base tensor itself, and the base tensor's memory doubles as the raw bytes that output
blocks are delta-coded against. A kernel writing through an input would corrupt both.
"""

from __future__ import annotations

import pytest
import torch

from mergestore.errors import MergeError
from mergestore.ops import TensorContext, merge_tensor
from mergestore.ops.registry import get_method, method_names
from mergestore.ops.spec import BaseRule, Scope

VALUES = {"weight": 0.6, "density": 0.5, "t": 0.4, "epsilon": 0.1, "gamma": 0.05}


def _params(name: str, n_inputs: int):
    spec = get_method(name)
    shared, per = {}, [{} for _ in range(n_inputs)]
    for p in spec.params:
        if not p.required:
            continue
        value = VALUES.get(p.name, 0.5)
        if p.scope == Scope.SHARED:
            shared[p.name] = value
        else:
            for d in per:
                d[p.name] = value
    return shared, per


def _run(name: str, base, xs):
    shared, per = _params(name, len(xs))
    return merge_tensor(name, base, xs, shared, per, TensorContext("model.layers.0.w", seed=1))


@pytest.mark.parametrize("name", method_names())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernels_leave_their_inputs_alone(name, dtype) -> None:
    spec = get_method(name)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300_000, generator=g).to(dtype)  # above the chunked-kernel threshold
    ran = False
    for n in (2, 1, 3):
        xs = [(base.float() + 0.1 * torch.randn(300_000, generator=g)).to(dtype) for _ in range(n)]
        xs[0][:1000] = base[:1000]
        b = None if spec.base == BaseRule.IGNORED else base
        before = [t.clone() for t in ([b] if b is not None else []) + xs]
        try:
            _run(name, b, xs)
        except MergeError:
            continue  # not a valid input count for this method
        ran = True
        after = ([b] if b is not None else []) + xs
        for t0, t1 in zip(before, after, strict=True):
            assert torch.equal(t0.view(torch.uint8), t1.view(torch.uint8)), name
        break
    assert ran, f"{name}: no input count accepted"


@pytest.mark.parametrize(
    "name", ["task_arithmetic", "ties", "breadcrumbs", "dare_linear", "dare_ties", "della"]
)
def test_an_input_that_is_the_base_tensor_merges_like_a_copy(name) -> None:
    """What the engine does for an input equal to the base: the same object, the same bits."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(300_000, generator=g).to(torch.bfloat16)
    x = (base.float() + 0.1 * torch.randn(300_000, generator=g)).to(torch.bfloat16)
    aliased = _run(name, base, [x, base, x])
    copied = _run(name, base, [x, base.clone(), x])
    assert torch.equal(aliased.view(torch.int16), copied.view(torch.int16))


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "breadcrumbs_ties"])
def test_every_input_the_base_tensor(name) -> None:
    """All inputs equal to the base: the output is the base (through the same arithmetic)."""
    base = torch.randn(300_000, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    base[:10] = -0.0
    aliased = _run(name, base, [base, base])
    copied = _run(name, base, [base.clone(), base.clone()])
    assert torch.equal(aliased.view(torch.int16), copied.view(torch.int16))
