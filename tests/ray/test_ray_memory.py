"""Bounded memory on Ray: each task asks Ray for a `memory` resource from its planned
footprint ((operands + 2) x its largest tensor at compute width, plus read-ahead, cache and
the worker process), and the footprint covers what the worker really used."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.api import Store
from mergestore.errors import MergeError
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.merge.config import config_from_cli
from mergestore.merge.ray_executor import RayExecutor, _footprint, _MergeState
from mergestore.merge.ray_memory import (
    WORKER_BASE,
    Footprint,
    check_fits,
    footprint,
    largest_node_memory,
    operands,
    read_ahead,
    tensor_memory,
)

X = ["dense_small", "frozen", "lowrank_attn"]
PARAMS = {"ties": {"density": 0.5}, "slerp": {"t": 0.3}, "della": {"density": 0.5, "epsilon": 0.1}}


@pytest.fixture(scope="module")
def mem_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store, _fam = family_store(tmp_path_factory.mktemp("raymem"), PRESETS["tiny"])
    yield store
    store.close()


def _prep(store: Store, method: str = "ties", dtype: str | None = None):
    params = {"density": 0.5} if method == "ties" else {}
    cfg = config_from_cli(method, "main", X, [0.5, 0.3, 0.2], params, dtype, None, 3)
    return store.prepare_merge(cfg)


def test_tensor_memory_is_operands_plus_two_at_compute_width(mem_store: Store) -> None:
    prep = _prep(mem_store)
    for t in prep.tasks:
        ops = operands(t)
        assert len(ops) == 4  # base + three experts
        width = DTYPE_SIZES[ops[0].dtype]
        elements = ops[0].nbytes // width
        assert tensor_memory(t) == 6 * elements * width
        assert tensor_memory(t, "float32") == 6 * elements * max(width, 4)


def test_footprint_takes_the_largest_tensor_of_every_part(mem_store: Store) -> None:
    prep = _prep(mem_store)
    tasks = prep.tasks
    big = max(tasks, key=tensor_memory)
    small = [t for t in tasks if tensor_memory(t) < tensor_memory(big)]
    fp = footprint([(small, None), ([big], None)], cache_bytes=5 << 20)
    assert fp.largest == big.plan.name and fp.tensors == tensor_memory(big)
    assert fp.total == tensor_memory(big) + read_ahead() + (5 << 20) + WORKER_BASE
    assert footprint([(small, None)]).tensors < fp.tensors


def test_check_fits_shrinks_the_cache_then_refuses_in_one_line() -> None:
    fp = Footprint(tensors=1 << 30, read_ahead=1 << 20, cache=512 << 20, largest="lm_head.weight")
    assert check_fits(fp, None) == fp and check_fits(fp, fp.total) == fp
    smaller = check_fits(fp, fp.total - (100 << 20))
    assert smaller.cache == fp.cache - (100 << 20) and smaller.total == fp.total - (100 << 20)
    with pytest.raises(MergeError) as e:
        check_fits(fp, fp.total - fp.cache - 1)
    msg = str(e.value)
    assert "'lm_head.weight'" in msg and "GiB" in msg and "\n" not in msg


def test_largest_node_memory_reads_alive_nodes() -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 2.0, "memory": 5e9}},
        {"Alive": False, "Resources": {"memory": 9e9}},
        {"Alive": True, "Resources": {"memory": 7e9}},
    ]
    assert largest_node_memory(nodes) == 7_000_000_000
    assert largest_node_memory([]) is None


def test_every_job_declares_memory_that_covers_its_tensors(mem_store: Store) -> None:
    preps = [_prep(mem_store), _prep(mem_store, "task_arithmetic", "float32")]
    ex = RayExecutor(task_bytes=64 << 10)  # many small tasks
    states = [_MergeState(p) for p in preps]
    jobs = ex._jobs(mem_store.repo, preps, states, cpus=2)
    assert len(jobs) > 2
    for job, _groups in jobs:
        fp = _footprint(job)
        for part in job.parts:
            for t in part.tasks:
                ops = operands(t)
                width = max([DTYPE_SIZES[r.dtype] for r in ops] + [4 if part.dtype else 0])
                need = (len(ops) + 2) * max(r.nbytes // DTYPE_SIZES[r.dtype] for r in ops) * width
                assert fp.tensors >= need
        assert fp.total >= fp.tensors + read_ahead() + job.cache_bytes


@pytest.mark.parametrize("method", ["ties", "slerp", "della"])
def test_ray_tasks_get_their_memory_and_stay_within_it(
    ray_session, mem_store: Store, method: str
) -> None:
    """Ray grants each task the memory it asks for, and the worker's peak RSS (the process,
    torch included for the methods off the C lane) stays within the largest declaration."""
    models = X[:1] if method == "slerp" else X
    params = PARAMS[method]
    weights = None if method == "slerp" else [0.5, 0.3, 0.2]
    cfg = config_from_cli(method, "main", models, weights, params, None, None, 5)
    r = mem_store.merge(config=cfg, branch=f"mem-{method}", executor="ray")
    ex = r.run["executor"]
    assert ex["task_memory_bytes"] > WORKER_BASE
    assert ex["task_memory_granted_bytes"] == ex["task_memory_bytes"]
    assert 0 < ex["worker_peak_rss_bytes"] <= ex["task_memory_bytes"]


def test_a_task_no_node_can_hold_is_refused_before_it_runs(
    ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    """From the CLI, as on a cluster whose largest node offers 64 MiB: one line, exit 1,
    --json too, and the store unchanged (no branch, no pack written)."""
    from mergestore.merge import ray_executor

    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    root = store.repo.path
    store.close()
    packs = sorted(p.name for p in (root / "packs").iterdir())
    monkeypatch.setattr(ray_executor, "largest_node_memory", lambda nodes: 64 << 20)
    args = ("--store", root, "merge", "--method", "ties", "--base", "main", *X,
            "-w", "0.5", "-w", "0.3", "-w", "0.2", "--param", "density=0.5",
            "-b", "too-big", "--executor", "ray")  # fmt: skip
    r = cli(*args)
    assert r.code == 1 and r.err.startswith("error: tensor ") and r.err.count("\n") == 1
    assert "more than any node offers" in r.err
    r = cli(*args, "--json")
    assert r.code == 1 and "more than any node offers" in r.json()["error"]
    assert cli("--store", root, "show", "too-big").code != 0
    assert sorted(p.name for p in (root / "packs").iterdir()) == packs
