"""Same bits on any thread count: merges with 1, 2 and 8 threads give the same commit trees.

MERGESTORE_THREADS sets every thread count mergestore uses (block reads and decodes, tensors
merged side by side, a kernel's split of one large tensor). The kernels' split threshold is
lowered here so the tiny family's tensors are split too.
"""

from __future__ import annotations

import pytest

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.merge.engine import compute_workers
from mergestore.ops import gta, lane16
from mergestore.threads import default_workers, kernel_threads

EXPERTS = ["dense_small", "frozen", "lowrank_attn"]

# (method, base, weights, params, dtype, out_dtype, budget): bf16 (torch-free lanes where the
# inputs are all bf16; the family's fp32 lm_head takes torch), the torch path in fp32, random
# sparsifiers (per-input generators), and a budgeted merge.
MERGES = [
    ("linear", None, [0.5, 0.3, 0.2], {}, "bfloat16", None, None),
    ("ties", "main", [0.5, 0.3, 0.2], {"density": 0.5}, "bfloat16", None, None),
    ("ties", "main", [0.5, 0.3, 0.2], {"density": 0.4}, "float32", "bfloat16", None),
    ("dare_ties", "main", [0.6, 0.3, 0.4], {"density": 0.6}, "bfloat16", None, None),
    ("della", "main", [0.5, 0.3, 0.2], {"density": 0.5, "epsilon": 0.1}, "float32", None, None),
    ("model_stock", "main", None, {}, "bfloat16", None, None),
    ("ram", "main", None, {"epsilon": 2e-5}, "float32", "bfloat16", None),  # the C lane
    ("model_stock", "main", None, {}, "float32", "bfloat16", None),  # C, torch's sum orders
    ("task_arithmetic", "main", [0.4, 0.4, 0.4], {}, "bfloat16", None, "50%"),
    ("karcher", None, None, {}, "bfloat16", None, None),  # oneDNN's dots on AVX-512 CPUs
]


def _trees(store: Store) -> list[bytes]:
    trees = []
    for method, base, weights, params, dtype, out_dtype, budget in MERGES:
        res = store.merge(
            method=method,
            base=base,
            models=EXPERTS,
            weights=weights,
            params=params,
            dtype=dtype,
            out_dtype=out_dtype,
            seed=11,
            budget=budget,
            write_card=False,  # the card names each merge's plan and input commits
        )
        trees.append(store.get_commit(res.commit).tree)
    return trees


def test_merges_give_the_same_trees_on_1_2_and_8_threads(
    tiny_family, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_family(store, tiny_family)
    monkeypatch.delenv("MERGESTORE_MERGE_WORKERS", raising=False)
    monkeypatch.setattr(gta, "PARALLEL_MIN", 1 << 10)
    monkeypatch.setattr(lane16, "PARALLEL_MIN", 1 << 10)
    by_threads = {}
    for n in (1, 2, 8):
        monkeypatch.setenv("MERGESTORE_THREADS", str(n))
        assert default_workers() == compute_workers() == n
        assert kernel_threads(2) == min(2, n)
        by_threads[n] = _trees(store)
    assert len(set(by_threads[1])) == len(MERGES)  # distinct merges, not one tree
    assert by_threads[2] == by_threads[1]
    assert by_threads[8] == by_threads[1]
