"""merge --device: refusals on this machine, the device path on the CPU, and a GPU check."""

from __future__ import annotations

import pytest
import torch

from mergestore.api import Store

METHODS = [
    ("linear", None, {}),
    ("task_arithmetic", "main", {}),
    ("ties", "main", {"density": 0.5}),
]


def test_device_refusals_and_record(habit_store, cli) -> None:
    s = habit_store
    args = ["--store", s, "merge", "--method", "linear", "main", "math", "-w", "1", "-w", "1"]
    r = cli(*args, "--device", "tpu")
    assert r.code != 0 and "expected cpu, cuda or cuda:N" in r.err
    if not torch.cuda.is_available():
        r = cli(*args, "--device", "cuda:0")
        assert r.code != 0 and r.err.count("\n") == 1 and "CUDA is not available" in r.err
    r = cli(*args, "--device", "cpu", "--json")
    assert r.code == 0 and r.json()["device"] == "cpu"


def _merge_all(store: Store, device: str | None, tag: str) -> list[bytes]:
    trees = []
    for method, base, params in METHODS:
        res = store.merge(
            method=method,
            base=base,
            models=["math", "code"],
            weights=[0.6, 0.4],
            params=params,
            branch=f"{method}-{tag}",
            device=device,
            write_card=False,
        )
        trees.append(store.get_commit(res.commit).tree)
    return trees


def test_device_path_gives_the_cpu_bits(habit_store) -> None:
    # device="cpu" forced through the engine's device path (moves, merge, .cpu())
    with Store.open(habit_store) as s:
        assert _merge_all(s, "cpu", "dev") == _merge_all(s, None, "plain")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_gives_the_cpu_bits(habit_store) -> None:
    with Store.open(habit_store) as s:
        assert _merge_all(s, "cuda:0", "gpu") == _merge_all(s, None, "cpu")
