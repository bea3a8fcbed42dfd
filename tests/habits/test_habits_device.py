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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cli_device_cuda_gives_the_cpu_bits(habit_store, cli) -> None:
    s = habit_store
    trees = {}
    for device in ("cuda", "cpu"):
        r = cli(
            "--store", s, "merge", "--method", "ties", "--base", "main", "math", "code",
            "-w", "0.6", "-w", "0.4", "--param", "density=0.5", "--device", device,
            "-b", f"ties-{device}", "--no-write-model-card", "--json",
        )  # fmt: skip
        assert r.code == 0, r.err
        with Store.open(s) as st:
            trees[device] = st.get_commit(bytes.fromhex(r.json()["commit"])).tree
    assert trees["cuda"] == trees["cpu"]


def test_gpu_tests_skip_under_ci_without_cuda(tmp_path) -> None:
    """CI has no GPU: the CUDA tests above skip there (a plain skipif, not ci_gate's
    fail-under-CI), and run wherever torch sees a CUDA device."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the GPU tests run instead")
    here = Path(__file__)
    env = dict(os.environ, CI="true")
    ids = [
        f"{here}::{t}"
        for t in ("test_cuda_gives_the_cpu_bits", "test_cli_device_cuda_gives_the_cpu_bits")
    ]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *ids],
        cwd=here.parents[2], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SKIPPED [1]") == 2 and "no CUDA device here" in r.stdout
