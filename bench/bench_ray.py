"""Ray executor benchmark: its overhead on one node, and many merges at once.

    python bench/bench_ray.py setup --work DIR [--preset bench-1g]
    python bench/bench_ray.py one   --work DIR --executor local|ray [--ray-address A]
    python bench/bench_ray.py sweep --work DIR --executor local|ray [--ray-address A] [-n 16]
    python bench/bench_ray.py model --work DIR [--nodes 1,4,16,64] [--cores 8] [--gbps 1,2.5]

`setup` generates the family (base + dense_small, frozen, lowrank_attn; docs/fixtures.md) and
commits it into DIR/store (1 MiB blocks, deltas against main). `one` runs one task_arithmetic
merge of the three experts, `sweep` n task_arithmetic candidates with different weights in one
`merge --config DIR/sweep-K/*.yml`, each through the real CLI in this process's child. Every
call uses weights no earlier call used (a counter in DIR), so each run computes and writes new
output blocks on either executor. Each run appends its merge records (run JSON) to
DIR/runs.jsonl; `model` reads the Ray runs' per-task seconds and bytes and prints the cluster
model of docs/ray.md. Time whole processes from outside (paired, A/B), holding the bench lock:

    ray start --head --num-cpus 2            # timed on its own: its start-up is not a merge's
    flock /work/coord/bench.lock <paired timer> \
        --vs 'python bench/bench_ray.py one --work DIR --executor local' \
        -- python bench/bench_ray.py one --work DIR --executor ray --ray-address auto
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXPERTS = ("dense_small", "frozen", "lowrank_attn")


def _cli(work: Path, *args: str) -> dict:
    env = dict(os.environ, MERGESTORE_PROGRESS="0")
    p = subprocess.run(
        [sys.executable, "-m", "mergestore.cli.main", "--store", str(work / "store"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {p.stderr.strip()}")
    return json.loads(p.stdout) if "--json" in args else {}


def _next(work: Path) -> int:
    """A number no earlier run of this work dir got (weights derive from it)."""
    path = work / "counter"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 64)
        n = int(raw or b"0") + 1
        os.lseek(fd, 0, 0)
        os.ftruncate(fd, 0)
        os.write(fd, str(n).encode())
        return n
    finally:
        os.close(fd)


def _log(work: Path, kind: str, executor: str, runs: list[dict]) -> None:
    with open(work / "runs.jsonl", "a") as f:
        f.write(json.dumps({"kind": kind, "executor": executor, "runs": runs}) + "\n")


def _executor_args(a: argparse.Namespace) -> list[str]:
    out = ["--executor", a.executor]
    if a.ray_address:
        out += ["--ray-address", a.ray_address]
    return out


def setup(a: argparse.Namespace) -> None:
    from fixtures.family import PRESETS, make_family

    work = Path(a.work)
    fam = make_family(work / "family", PRESETS[a.preset])
    if not (work / "store").exists():
        subprocess.run(
            [sys.executable, "-m", "mergestore.cli.main", "init", str(work / "store")], check=True
        )
        _cli(work, "commit", str(fam.base), "-m", "base", "-b", "main")
        for name in EXPERTS:
            _cli(work, "commit", str(fam.experts[name]), "-m", name, "-b", name, "--base", "main")
    print(json.dumps({"work": str(work), "preset": a.preset}))


def one(a: argparse.Namespace) -> None:
    work = Path(a.work)
    n = _next(work)
    w = [round(0.1 + 0.001 * n, 4), 0.3, 0.2]
    args = ["merge", "--method", "task_arithmetic", "--base", "main", *EXPERTS]
    for x in w:
        args += ["-w", str(x)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = _cli(work, *args, "-b", f"one-{a.executor}-{n}", *_executor_args(a), "--json")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out["driver_cpu_seconds"] = round(cpu, 3)  # the merge process's own CPU (not the tasks')
    _log(work, "one", a.executor, [out])


def sweep(a: argparse.Namespace) -> None:
    work = Path(a.work)
    n = _next(work)
    d = work / f"sweep-{n}"
    d.mkdir()
    paths = []
    for k in range(a.n):
        p = d / f"s{n}-{a.executor}-{k:02d}.yml"
        p.write_text(
            "merge_method: task_arithmetic\nbase_model: main\nmodels:\n"
            f"  - model: dense_small\n    parameters: {{weight: {0.05 + 0.05 * k + 0.0001 * n}}}\n"
            "  - model: frozen\n    parameters: {weight: 0.3}\n"
            "  - model: lowrank_attn\n    parameters: {weight: 0.2}\n"
        )
        paths.append(str(p))
    out = _cli(work, "merge", "--config", *paths, *_executor_args(a), "--json")
    if out["failed"]:
        raise SystemExit(f"{out['failed']} merges failed")
    _log(work, "sweep", a.executor, [m["run"] for m in out["merges"]])


def model(a: argparse.Namespace) -> None:
    """The cluster model (docs/ray.md) from the Ray single-merge runs' records (the median
    run by task seconds)."""
    work = Path(a.work)
    rows = [json.loads(line) for line in (work / "runs.jsonl").read_text().splitlines()]
    ray_runs = [r["runs"][0] for r in rows if r["kind"] == "one" and r["executor"] == "ray"]
    if not ray_runs:
        raise SystemExit("no ray runs recorded")
    ray_runs = [r for r in ray_runs if "task_cpu_seconds_sum" in r["executor"]] or ray_runs
    r = sorted(ray_runs, key=lambda x: x["executor"]["task_seconds_sum"])[len(ray_runs) // 2]
    ex = r["executor"]
    # the tasks' CPU seconds (their wall grows with the machine's load), each on one core
    cpu_s = ex.get("task_cpu_seconds_sum", ex["task_seconds_sum"])
    longest = ex.get("task_cpu_seconds_max", ex["task_seconds_max"])
    read = ex["pack_bytes_read"]
    written = r["bytes_written"]  # stored bytes of the new output blocks
    # the driver: its process's CPU plus a.ray_latency s of waiting on Ray (joining, first
    # task); else the share of the wall the tasks (on a.here_cores cores) do not explain
    if "driver_cpu_seconds" in r:
        driver_s = r["driver_cpu_seconds"] + a.ray_latency
    else:
        driver_s = max(r["wall_seconds"] - max(cpu_s / a.here_cores, longest), 0.0)
    print(json.dumps({"runs": len(ray_runs), "tasks": ex["tasks"], "task_seconds_sum": cpu_s,
                      "task_seconds_max": longest, "pack_bytes_read": read,
                      "bytes_written": written, "wall": r["wall_seconds"],
                      "driver_seconds": round(driver_s, 2)}))  # fmt: skip
    for gbps in [float(x) for x in a.gbps.split(",")]:
        for nodes in [int(x) for x in a.nodes.split(",")]:
            compute = max(cpu_s / (nodes * a.cores), longest)
            network = (read + written) / (nodes * gbps * 1e9)
            # no shared path: the driver fetches every output block back (one node's B)
            fetch_back = written / (gbps * 1e9)
            t = driver_s + max(compute, network)
            print(
                f"B={gbps} GB/s N={nodes} C={a.cores}: compute {compute:.2f} s, network "
                f"{network:.2f} s, driver {driver_s:.2f} s -> {t:.2f} s "
                f"(no shared path: +{fetch_back:.2f} s -> {t + fetch_back:.2f} s)"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("setup", "one", "sweep", "model"):
        p = sub.add_parser(name)
        p.add_argument("--work", required=True)
        if name == "setup":
            p.add_argument("--preset", default="bench-1g")
        if name in ("one", "sweep"):
            p.add_argument("--executor", default="local", choices=["local", "ray"])
            p.add_argument("--ray-address", default=None)
        if name == "sweep":
            p.add_argument("-n", type=int, default=16)
        if name == "model":
            p.add_argument("--nodes", default="1,4,16,64")
            p.add_argument("--cores", type=int, default=8)
            p.add_argument("--gbps", default="1,2.5")
            p.add_argument("--here-cores", type=int, default=2, help="cores the runs had")
            p.add_argument("--ray-latency", type=float, default=1.0, help="s the driver waits")
    a = ap.parse_args()
    {"setup": setup, "one": one, "sweep": sweep, "model": model}[a.cmd](a)


if __name__ == "__main__":
    main()
