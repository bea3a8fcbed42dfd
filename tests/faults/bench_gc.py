"""Time gc and fsck on a generated family (not part of pytest).

    flock /tmp/mergestore-bench.lock python tests/faults/bench_gc.py [--preset bench-0.5g]

Commits the base and three experts (each on its own branch, --base main), deletes one
expert's branch, then times `fsck`, `fsck --full`, `gc --dry-run --grace 0`, `gc --grace 0
--repack-threshold 0.01` (which rewrites the pack that held the deleted expert) and a second
gc, each through the CLI in a fresh process.
Writes bench/out/bench_gc.json; data lives in bench/out/gc-bench/ and is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("blocks", "blocks_verified", "blocks_removed", "commits_removed", "bytes_copied")
KEYS += ("bytes_reclaimed", "pack_bytes_before", "pack_bytes_after")


def run(store: Path, *args: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "mergestore.cli.main", "--store", str(store), *args, "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ, MERGESTORE_PROGRESS="0"),
        cwd=ROOT,
    )
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {p.stderr}")
    return took, json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="bench-0.5g")
    args = ap.parse_args()
    work = ROOT / "bench/out/gc-bench"
    shutil.rmtree(work, ignore_errors=True)
    from fixtures.family import PRESETS, make_family

    fam = make_family(work / "family", PRESETS[args.preset])
    store = work / "store"
    subprocess.run([sys.executable, "-m", "mergestore.cli.main", "init", str(store)], check=True)
    out: dict = {"preset": args.preset, "load_before": os.getloadavg()[0]}
    run(store, "commit", str(fam.base), "-m", "base", "-b", "main")
    for name, path in fam.experts.items():
        run(store, "commit", str(path), "-m", name, "-b", name, "--base", "main")
    victim = next(iter(fam.experts))
    run(store, "branch", "-d", victim)
    for key, argv in (
        ("fsck", ["fsck"]),
        ("fsck_full", ["fsck", "--full"]),
        ("gc_dry_run", ["gc", "--dry-run", "--grace", "0"]),
        ("gc", ["gc", "--grace", "0", "--repack-threshold", "0.01"]),
        ("gc_again", ["gc", "--grace", "0"]),
    ):
        took, rep = run(store, *argv)
        out[key] = {"seconds": round(took, 2)}
        for k in KEYS:
            if k in rep:
                out[key][k] = rep[k]
    out["load_after"] = os.getloadavg()[0]
    shutil.rmtree(work)
    dest = ROOT / "bench/out/bench_gc.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
