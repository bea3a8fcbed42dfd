"""Family benchmark: stored/raw, commit/checkout throughput, repack and merge I/O by codec setup.

    flock /tmp/mergestore-bench.lock python bench/bench_family.py \\
        [--preset bench-0.5g] [--before-code /tmp/ms-before] [--out bench/out/family.json]

A base plus 4 fine-tunes (dense_small, dense_large, frozen, lowrank_attn; docs/fixtures.md),
generated once under bench/out/. Each store is driven through the real CLI, one subprocess per
command (`python -m mergestore.cli.main --json`); throughput is logical bytes over the command's
own "seconds" (commit: read, hash, encode, append, fsync, publish; checkout: read, decode,
verify, write; page cache warm). Stores:

- `before`: the source tree given by --before-code (default codecs of that version), if given;
- `no-delta`: this tree, `init --no-delta` (byte planes and zstd, no XOR deltas); then
  `repack --delta` on it, which re-encodes it as a delta store;
- `delta`: this tree, default settings (deltas against --base).

For each: stored/raw (du), commit and checkout GB/s, and the expert bytes a full-budget
`merge --method task_arithmetic --base main e1 e2 e3 e4` reads. Plain zstd (level 3) of the
base checkpoint's tensor blocks is computed in process for reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
EXPERTS = ("dense_small", "dense_large", "frozen", "lowrank_attn")


def load() -> float:
    return os.getloadavg()[0]


def cli(code: Path, store: Path, *args: object, env: dict[str, str] | None = None) -> dict:
    """Run one CLI command from source tree `code` and return its JSON output."""
    e = dict(os.environ, PYTHONPATH=str(code), MERGESTORE_PROGRESS="0", **(env or {}))
    cmd = [sys.executable, "-m", "mergestore.cli.main", "--store", str(store), *map(str, args)]
    r = subprocess.run(cmd, cwd=code, env=e, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def cli_timed(code: Path, store: Path, *args: object) -> tuple[dict, float]:
    """Like `cli`, plus the child's CPU seconds (user + system, from wait4)."""
    e = dict(os.environ, PYTHONPATH=str(code), MERGESTORE_PROGRESS="0")
    cmd = [sys.executable, "-m", "mergestore.cli.main", "--store", str(store), *map(str, args)]
    p = subprocess.Popen(cmd, cwd=code, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.stdout.read(), p.stderr.read()
    _pid, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.decode().strip()}")
    return json.loads(out), ru.ru_utime + ru.ru_stime


def ab_store(trees: dict[str, Path], fam: object, work: Path, rounds: int) -> dict:
    """Commit base + dense_small (--base) and check both out, the trees alternating.

    Best-of-rounds GB/s from each command's own "seconds", and its CPU seconds per GB (start-up
    included), which other jobs on the machine disturb less.
    """
    res: dict = {k: {} for k in trees}
    for _ in range(rounds):
        for label, code in trees.items():
            store = work / f"ab-{label}"
            shutil.rmtree(store, ignore_errors=True)
            cli(code, store, "init", store, "--json")
            steps = [
                ("commit base", ["commit", fam.base, "-b", "main", "--json"]),
                ("commit dense_small", ["commit", fam.experts["dense_small"], "-b", "ds"]),
                ("checkout base", ["checkout", "main", work / "co-main", "--json"]),
                ("checkout dense_small", ["checkout", "ds", work / "co-ds", "--json"]),
            ]
            steps[1][1].extend(["--base", "main", "--json"])
            for name, args in steps:
                r, cpu = cli_timed(code, store, *args)
                nbytes = r.get("logical_bytes") or r.get("bytes_written")
                slot = res[label].setdefault(name, {"gb_s": 0.0, "cpu_s_per_gb": 1e9, "load": []})
                slot["gb_s"] = max(slot["gb_s"], nbytes / r["seconds"] / 1e9)
                slot["cpu_s_per_gb"] = min(slot["cpu_s_per_gb"], cpu / (nbytes / 1e9))
                slot["load"].append(round(load(), 2))
                print(f"[ab {label}] {name}: {nbytes / r['seconds'] / 1e9:.2f} GB/s", flush=True)
            for d in ("co-main", "co-ds"):
                shutil.rmtree(work / d, ignore_errors=True)
            shutil.rmtree(store, ignore_errors=True)
    return res


def family(preset: str) -> object:
    sys.path.insert(0, str(ROOT))
    from fixtures.family import PRESETS, make_family

    spec = dataclasses.replace(PRESETS[preset], experts=EXPERTS)
    root = OUT / f"fam4-{preset.removeprefix('bench-')}"
    return make_family(root, spec, reuse=True)


def run_store(label: str, code: Path, fam: object, work: Path, init_args: list[str]) -> dict:
    store = work / f"store-{label}"
    shutil.rmtree(store, ignore_errors=True)
    cli(code, store, "init", store, *init_args, "--json")
    res: dict = {"label": label, "code": str(code), "load_start": load(), "commits": {}}
    names = [("main", fam.base, [])] + [(n, fam.experts[n], ["--base", "main"]) for n in EXPERTS]
    for name, path, extra in names:
        r = cli(code, store, "commit", path, "-m", name, "-b", name, *extra, "--json")
        res["commits"][name] = {
            "logical_bytes": r["logical_bytes"],
            "written_bytes": r["written_bytes"],
            "seconds": r["seconds"],
            "gb_s": r["logical_bytes"] / r["seconds"] / 1e9,
        }
        print(f"[{label}] commit {name}: {res['commits'][name]['gb_s']:.2f} GB/s", flush=True)
    res["du"] = cli(code, store, "du", "--json")
    res["checkouts"] = checkouts(code, store, work, label)
    res["merge"] = merge(code, store, label)
    res["load_end"] = load()
    return res


def checkouts(code: Path, store: Path, work: Path, label: str) -> dict:
    out = {}
    for name in ("main", *EXPERTS):
        target = work / "co"
        shutil.rmtree(target, ignore_errors=True)
        r = cli(code, store, "checkout", name, target, "--json")
        out[name] = {
            "bytes_written": r["bytes_written"],
            "bytes_read": r.get("bytes_read"),
            "seconds": r["seconds"],
            "gb_s": r["bytes_written"] / r["seconds"] / 1e9,
        }
        print(f"[{label}] checkout {name}: {out[name]['gb_s']:.2f} GB/s", flush=True)
        shutil.rmtree(target, ignore_errors=True)
    return out


def merge(code: Path, store: Path, label: str, branch: str = "merged") -> dict:
    t0 = time.perf_counter()
    r = cli(
        code,
        store,
        "merge",
        "--method",
        "task_arithmetic",
        "--base",
        "main",
        *EXPERTS,
        *[a for _ in EXPERTS for a in ("-w", "0.25")],
        "-b",
        branch,
        "--json",
    )
    run = r.get("run", r)
    out = {
        "expert_bytes_read": run.get("expert_bytes_read"),
        "base_bytes_read": run.get("base_bytes_read"),
        "commit": r.get("commit"),
        "wall_seconds": time.perf_counter() - t0,
    }
    print(f"[{label}] merge: expert_bytes_read {out['expert_bytes_read']}", flush=True)
    return out


def plain_zstd_of_base(fam: object) -> dict:
    """Stored/raw of the base checkpoint's tensor bytes with plain zstd-3 and with the chooser."""
    sys.path.insert(0, str(ROOT))
    from mergestore.store.codecs import encode_block

    raw = zstd = auto = 0
    for f in sorted(Path(fam.base).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            fh.seek(8 + n)
            while chunk := fh.read(1 << 20):
                raw += len(chunk)
                zstd += len(encode_block(chunk, dtype=None, level=3, allowed={"zstd"}).payload)
                auto += len(memoryview(encode_block(chunk, dtype="BF16").payload))
    return {"raw_bytes": raw, "zstd3_ratio": zstd / raw, "auto_ratio": auto / raw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench-0.5g")
    ap.add_argument("--before-code", type=Path, help="source tree of the version to compare to")
    ap.add_argument("--out", type=Path, default=OUT / "family.json")
    ap.add_argument("--work", type=Path, default=OUT / "family-work")
    ap.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    ap.add_argument(
        "--ab-rounds",
        type=int,
        default=0,
        help="only compare commit/checkout of --before-code and this tree, N interleaved rounds",
    )
    args = ap.parse_args()

    args.work = args.work.resolve()
    fam = family(args.preset)
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "preset": args.preset,
        "command": "python bench/bench_family.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v),
        "stores": {},
    }
    if args.ab_rounds:
        trees = {"before": args.before_code.resolve(), "after": ROOT}
        result["ab_store"] = ab_store(trees, fam, args.work, args.ab_rounds)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["ab_store"], indent=1))
        return
    result["plain_zstd_base"] = plain_zstd_of_base(fam)
    print(f"base, plain zstd-3: {result['plain_zstd_base']}", flush=True)
    if args.before_code:
        result["stores"]["before"] = run_store("before", args.before_code, fam, args.work, [])
    nd = run_store("no-delta", ROOT, fam, args.work, ["--no-delta"])
    result["stores"]["no-delta"] = nd
    store = args.work / "store-no-delta"
    t0 = time.perf_counter()
    rep = cli(ROOT, store, "repack", "--delta", "--json")
    rep["wall_seconds"] = time.perf_counter() - t0
    rep["du_after"] = cli(ROOT, store, "du", "--json")
    rep["fsck"] = cli(ROOT, store, "fsck", "--json")["ok"]
    rep["merge_after"] = merge(ROOT, store, "repacked", "merged-after-repack")
    result["repack"] = rep
    print(f"repack: {rep['stored_bytes_before']} -> {rep['stored_bytes_after']}", flush=True)
    result["stores"]["delta"] = run_store("delta", ROOT, fam, args.work, [])
    if not args.keep:
        for label in result["stores"]:
            shutil.rmtree(args.work / f"store-{label}", ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
