"""Run tests/faults and write the fault ledger: faults injected/survived, inputs tried, data lost.

    python tests/faults/report.py [--scale N] [--out bench/out/reliability.json] [pytest args]

Sets MERGESTORE_FAULTS_REPORT (the ledger is written by tests/faults/conftest.py) and
MERGESTORE_FAULTS_SCALE (more random kills and fuzzing examples), runs pytest on tests/faults,
then prints the totals and a markdown table for docs/reliability.md. Exits non-zero if a test
failed or any data was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def table(data: dict) -> str:
    rows = ["| kind | faults injected | survived | inputs tried | commits verified | lost |",
            "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    keys = ("faults", "survived", "inputs", "verified_commits", "lost")
    kinds = sorted(set().union(*(data.get(k, {}) for k in keys)))
    for kind in kinds:
        f, s = data["faults"].get(kind, 0), data["survived"].get(kind, 0)
        i, v = data["inputs"].get(kind, 0), data["verified_commits"].get(kind, 0)
        lost = data["lost"].get(kind, 0)
        rows.append(f"| {kind} | {f} | {s} | {i} | {v} | {lost} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/reliability.json")
    args, rest = ap.parse_known_args()
    if args.out.exists():
        args.out.unlink()
    env = dict(os.environ, MERGESTORE_FAULTS_REPORT=str(args.out))
    env["MERGESTORE_FAULTS_SCALE"] = str(args.scale)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults", *rest]
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    took = time.perf_counter() - t0
    data = json.loads(args.out.read_text())
    totals = {k: sum(v.values()) for k, v in data.items()}
    data["totals"] = totals
    data["run"] = {"scale": args.scale, "seconds": round(took, 1), "pytest_exit": rc,
                   "load_average": os.getloadavg()}  # fmt: skip
    args.out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(table(data))
    print(json.dumps(totals))
    print(f"{took:.0f} s, load average {os.getloadavg()[0]:.2f}; written to {args.out}")
    return 1 if rc or totals.get("lost", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
