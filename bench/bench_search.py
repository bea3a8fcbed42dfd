"""Merges at search scale: memo hits, lazy commits, evicted checkouts, resume, candidate disk use.

    flock /work/coord/bench.lock python bench/bench_search.py \\
        [--preset bench-0.5g] [--disk-preset small] [--work /tmp/ms-search] [--out FILE.json]

Every figure is a whole `python -m mergestore.cli.main` process (cold interpreter, warm page
cache), its wall seconds and its CPU seconds (user + system of the process, from wait4):

- memo hit: the same `merge` again (a plan already merged), 5 runs;
- lazy commit: `merge --lazy` of a new plan each run, 5 runs;
- checkout: a materialized merge commit vs the same commit evicted (the checkout computes
  and verifies every dropped tensor), 3 runs each, evicted again before each evicted run;
- resume: a merge killed with SIGKILL once its journal holds half of the tensors, then
  re-run; the re-run's wall time as a share of the same merge run whole (another plan with
  the same shape of work: other weights). MERGESTORE_JOURNAL_BYTES=32 MiB for both, so the
  journal is flushed often enough to kill at half;
- disk use of 50 candidate merges (task_arithmetic, random weights) on --disk-preset: every
  candidate materialized in a store without delta codecs, materialized in a default store
  (outputs XOR-delta-coded against the base where smaller), and lazily committed, each
  materialized to be scored, all but the best 5 evicted, then `gc`.

The machine's load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = ("dense_small", "dense_large", "frozen", "lowrank_attn")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def run_timed(
    store: Path, *args: object, env: dict[str, str] | None = None
) -> tuple[dict, float, float]:
    """One CLI process: its JSON output, wall seconds and CPU seconds (user + system, from
    wait4)."""
    e = dict(os.environ, PYTHONPATH=str(ROOT), MERGESTORE_PROGRESS="0", **(env or {}))
    cmd = [sys.executable, "-m", "mergestore.cli.main", "--store", str(store), *map(str, args)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    out, err = p.stdout.read(), p.stderr.read()
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.decode().strip()}")
    return (json.loads(out) if out.strip() else {}), wall, ru.ru_utime + ru.ru_stime


def family(preset: str, work: Path) -> object:
    sys.path.insert(0, str(ROOT))
    from fixtures.family import PRESETS, make_family

    spec = dataclasses.replace(PRESETS[preset], experts=EXPERTS)
    return make_family(work / f"fam-{preset}", spec, reuse=True)


def new_store(work: Path, name: str, fam: object, *init: str) -> Path:
    store = work / name
    shutil.rmtree(store, ignore_errors=True)
    run_timed(store, "init", store, *init, "--json")
    run_timed(store, "commit", fam.base, "-b", "main", "--json")
    for n in EXPERTS:
        run_timed(store, "commit", fam.experts[n], "-b", n, "--base", "main", "--json")
    return store


def merge_args(weights: list[float]) -> list[object]:
    args: list[object] = ["merge", "--method", "task_arithmetic", "--base", "main", *EXPERTS]
    for w in weights:
        args += ["-w", f"{w:.4f}"]
    return args


def summary(walls: list[float], cpus: list[float]) -> dict:
    return {
        "wall_median": round(statistics.median(walls), 4),
        "wall_min": round(min(walls), 4),
        "cpu_median": round(statistics.median(cpus), 4),
        "cpu_min": round(min(cpus), 4),
        "runs": len(walls),
    }


def bench_memo_lazy_checkout(store: Path, work: Path) -> dict:
    res: dict = {"load_start": load()}
    w0 = [0.3, 0.3, 0.2, 0.2]
    first, wall, cpu = run_timed(store, *merge_args(w0), "-b", "m1", "--json")
    res["first_merge"] = {"wall": round(wall, 3), "cpu": round(cpu, 3), "memo": first["memo"]}
    walls, cpus = [], []
    for i in range(5):
        r, wall, cpu = run_timed(store, *merge_args(w0), "-b", f"memo{i}", "--json")
        assert r["memo"] is True and r["commit"] == first["commit"]
        walls.append(wall)
        cpus.append(cpu)
    res["memo_hit"] = summary(walls, cpus)
    print("memo hit", res["memo_hit"], flush=True)
    walls, cpus = [], []
    for i in range(5):
        w = [0.3, 0.3, 0.2, 0.1 + i / 100]
        r, wall, cpu = run_timed(store, *merge_args(w), "-b", f"lazy{i}", "--lazy", "--json")
        assert r["lazy"] is True and r["tensors_computed"] == 0
        walls.append(wall)
        cpus.append(cpu)
    res["lazy_commit"] = summary(walls, cpus)
    print("lazy commit", res["lazy_commit"], flush=True)
    out = work / "co"
    mat_w, mat_c, ev_w, ev_c = [], [], [], []
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        r, wall, cpu = run_timed(store, "checkout", "m1", out, "--json")
        mat_w.append(wall)
        mat_c.append(cpu)
        shutil.rmtree(out, ignore_errors=True)
        run_timed(store, "evict", "m1", "--json")
        r, wall, cpu = run_timed(store, "checkout", "m1", out, "--json")
        ev_w.append(wall)
        ev_c.append(cpu)
    shutil.rmtree(out, ignore_errors=True)
    res["checkout_materialized"] = summary(mat_w, mat_c)
    res["checkout_evicted"] = summary(ev_w, ev_c)
    res["checkout_evicted_over_materialized"] = round(
        statistics.median(ev_w) / statistics.median(mat_w), 2
    )
    print("checkout", res["checkout_materialized"], res["checkout_evicted"], flush=True)
    res["load_end"] = load()
    return res


def journal_count(store: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from mergestore.api import Store
    from mergestore.store import merges

    s = Store.open(store)
    try:
        return max(
            (len(j.get("tensors") or {}) for j in merges.journals(s.repo).values()), default=0
        )
    finally:
        s.close()


def bench_resume(store: Path) -> dict:
    env = {"MERGESTORE_JOURNAL_BYTES": str(32 << 20)}
    res: dict = {"load_start": load(), "journal_bytes": 32 << 20}
    whole, wall_whole, cpu_whole = run_timed(
        store, *merge_args([0.25, 0.25, 0.25, 0.25]), "-b", "whole", "--json", env=env
    )
    n = whole["tensors"]
    res["whole"] = {"wall": round(wall_whole, 3), "cpu": round(cpu_whole, 3), "tensors": n}
    e = dict(os.environ, PYTHONPATH=str(ROOT), MERGESTORE_PROGRESS="0", **env)
    cmd = [sys.executable, "-m", "mergestore.cli.main", "--store", str(store)]
    cmd += [*map(str, merge_args([0.25, 0.25, 0.25, 0.24])), "-b", "killed", "--json"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    while p.poll() is None:
        done = journal_count(store)
        if done >= n // 2:
            os.kill(p.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    p.wait()
    res["killed_after_tensors"] = done
    res["killed_rc"] = p.returncode
    r, wall, cpu = run_timed(
        store, *merge_args([0.25, 0.25, 0.25, 0.24]), "-b", "killed", "--json", env=env
    )
    res["rerun"] = {
        "wall": round(wall, 3),
        "cpu": round(cpu, 3),
        "tensors_reused": r["tensors_reused"],
        "tensors_computed": r["tensors_computed"],
    }
    res["rerun_share_of_whole_wall"] = round(wall / wall_whole, 3)
    res["rerun_share_of_whole_cpu"] = round(cpu / cpu_whole, 3)
    res["load_end"] = load()
    print("resume", res, flush=True)
    return res


def disk(store: Path) -> dict:
    du, _w, _c = run_timed(store, "du", "--json")
    return {
        "pack_bytes": du["pack_bytes"],
        "stored_bytes": du["stored_bytes"],
        "merges": du["merges"],
    }


def bench_candidates(fam: object, work: Path, n: int = 50, keep: int = 5) -> dict:
    rng = random.Random(7)
    weights = [[round(rng.uniform(0.05, 0.5), 4) for _ in EXPERTS] for _ in range(n)]
    res: dict = {"candidates": n, "kept": keep, "load_start": load()}
    for label, init in (("materialized_no_delta", ["--no-delta"]), ("materialized_delta", [])):
        store = new_store(work, f"cand-{label}", fam, *init)
        before = disk(store)
        for i, w in enumerate(weights):
            run_timed(store, *merge_args(w), "-b", f"c{i}", "--json")
        after = disk(store)
        res[label] = {
            "pack_bytes_inputs": before["pack_bytes"],
            "pack_bytes": after["pack_bytes"],
            "candidates_bytes": after["pack_bytes"] - before["pack_bytes"],
            "merge_stored_raw_ratio": after["merges"]["stored_raw_ratio"],
        }
        print(label, res[label], flush=True)
        shutil.rmtree(store, ignore_errors=True)
    store = new_store(work, "cand-evict", fam)
    before = disk(store)
    scores = []
    for i, w in enumerate(weights):
        run_timed(store, *merge_args(w), "-b", f"c{i}", "--lazy", "--json")
        run_timed(store, "materialize", f"c{i}", "--json")
        scores.append((-abs(sum(w) - 1.0), i))  # the user's score: weights summing to 1
        if i >= keep:  # evict everything but the best `keep` so far, as a search would
            scores.sort(reverse=True)
            loser = scores.pop()[1]
            run_timed(store, "evict", f"c{loser}", "--json")
    run_timed(store, "gc", "--json")
    after = disk(store)
    res["evict_after_evaluation"] = {
        "pack_bytes_inputs": before["pack_bytes"],
        "pack_bytes": after["pack_bytes"],
        "candidates_bytes": after["pack_bytes"] - before["pack_bytes"],
        "merges": after["merges"],
    }
    print("evict", res["evict_after_evaluation"], flush=True)
    shutil.rmtree(store, ignore_errors=True)
    res["load_end"] = load()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench-0.5g")
    ap.add_argument("--disk-preset", default="small")
    ap.add_argument("--work", default="/tmp/ms-search")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="memo,resume,disk")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    only = set(a.only.split(","))
    out: dict = {"preset": a.preset, "disk_preset": a.disk_preset, "cpus": os.cpu_count()}
    if only & {"memo", "resume"}:
        fam = family(a.preset, work)
        store = new_store(work, "store", fam)
        if "memo" in only:
            out["memo_lazy_checkout"] = bench_memo_lazy_checkout(store, work)
        if "resume" in only:
            out["resume"] = bench_resume(store)
        shutil.rmtree(store, ignore_errors=True)
    if "disk" in only:
        out["candidates"] = bench_candidates(family(a.disk_preset, work), work)
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
