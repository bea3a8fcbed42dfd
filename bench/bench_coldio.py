"""Cold-cache physical I/O: what a command really reads from disk, against what it reports.

    python bench/bench_coldio.py run --drop STORE/packs --drop INPUTS -- mergestore ... --json
    python bench/bench_coldio.py sweep --store S --base REF --expert REF [--expert REF ...] \
        [--before OLD_SOURCE_TREE] [--repeat 3] [--out bench/out/coldio.json]
    python bench/bench_coldio.py sweep --store S ... --render   # print the table of --out

`run` drops the page cache of every file under each --drop path (fdatasync, then
posix_fadvise(DONTNEED): nothing else on the machine is evicted), runs the command as a child,
waits for it without reaping it (waitid WNOWAIT), reads the child's /proc/PID/io `read_bytes`
(bytes it caused to be fetched from the disk; wait4's ru_inblock gives the same), and prints
one JSON object: the wall time, read_bytes, and the command's own --json output.

`sweep` measures, each with the store's packs (and any --drop path) cold:
- the disk's sequential read rate: dd of the largest pack, its cache dropped first;
- `fsck --full`, `checkout` of the base, and task_arithmetic merges of the experts at each
  budget (10%, 25%, 100% and none): wall time, bytes read from disk, GB/s against the disk's
  rate, and for merges the physical reads against the reported expert_bytes_read +
  base_bytes_read (+ analyze_bytes_read: the statistics are computed beforehand, warm, so a
  merge's planning reads nothing);
- with --before (a clone of an older commit, its C extension built), each command runs in
  turn with the old code and this one (PYTHONPATH), A B A B, so drift hits both alike.
Hold /work/coord/bench.lock (flock) while it runs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"


def drop_cache(paths: list[Path]) -> int:
    """Evict every file under `paths` from the page cache; returns the bytes covered."""
    total = 0
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            try:
                fd = os.open(f, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fdatasync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def _proc_io(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k.strip()] = int(v)
    return out


def run_cold(cmd: list[str], drop: list[Path], env: dict[str, str] | None = None) -> dict:
    """Drop the cache of `drop`, run `cmd`, and read its /proc/PID/io before reaping it."""
    dropped = drop_cache(drop)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # a zombie: /proc/PID/io stays
        wall = time.perf_counter() - t0
        try:
            io = _proc_io(proc.pid)
        except OSError:
            io = {}
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errs = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    try:
        doc = json.loads(text) if text.strip() else None
    except ValueError:
        doc = None
    return {
        "cmd": cmd,
        "exit": proc.returncode,
        "wall_seconds": round(wall, 3),
        "read_bytes": io.get("read_bytes"),
        "inblock_bytes": usage.ru_inblock * 512,  # the same accounting, via wait4's rusage
        "dropped_bytes": dropped,
        "max_rss_kb": usage.ru_maxrss,
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "json": doc,
        "stderr_tail": errs.strip().splitlines()[-3:] if proc.returncode else [],
    }


def disk_rate(path: Path) -> float:
    """Sequential read rate of `path` in GB/s, read cold with dd (16 MiB reads)."""
    drop_cache([path])
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M"], check=True, capture_output=True)
    return path.stat().st_size / (time.perf_counter() - t0) / 1e9


def _ms(store: Path, *args: str) -> list[str]:
    exe = shutil.which("mergestore") or "mergestore"
    return [exe, "--store", str(store), *args]


def _env(code: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if code is not None:  # an earlier source tree (a clone of an older commit, C extension built)
        env["PYTHONPATH"] = str(code)
    return env


def sweep(args: argparse.Namespace) -> dict:
    """Every command cold, `--repeat` times; with --before, A/B pairs in turn (A B A B ...)."""
    store: Path = args.store
    drops = [store / "packs", *args.drop]
    packs = sorted((store / "packs").glob("pack-*.pack"), key=lambda p: p.stat().st_size)
    pack_bytes = sum(p.stat().st_size for p in packs)
    res: dict = {"label": args.label, "store_pack_bytes": pack_bytes, "load": os.getloadavg()}
    res["disk_gbps"] = [round(disk_rate(packs[-1]), 3) for _ in range(args.repeat)]
    codes: list[tuple[str, Path | None]] = [("after", None)]
    if args.before:
        codes = [("before", args.before), ("after", None)]
    for e in args.expert:  # statistics for the budget planner, computed warm, not timed
        subprocess.run(
            _ms(store, "analyze", e, "--base", args.base), check=True, capture_output=True
        )
    weights = [x for _ in args.expert for x in ("-w", f"{1 / len(args.expert):.4f}")]
    scratch = Path(tempfile.mkdtemp(dir=args.scratch))
    commands: list[tuple[str, list[str]]] = [
        ("fsck", ["fsck", "--json"]),
        ("fsck --full", ["fsck", "--full", "--json"]),
        ("checkout", ["checkout", args.base, str(scratch / "co"), "--json"]),
    ]
    for budget in args.budgets:
        cmd = ["merge", *args.expert, "--method", "task_arithmetic", *weights]
        cmd += ["--base", args.base, "-b", "coldio", "--json"]
        if budget != "none":
            cmd += ["--budget", budget]
        commands.append((f"merge, budget {budget}", cmd))
    # A plan already merged returns its commit (the memo): each merge run gets a seed of its
    # own (task_arithmetic draws no random numbers; the seed only makes the plan new).
    seed = int(time.time()) % 1_000_000
    rows: list[dict] = []
    try:
        for what, cmd in commands:
            for _i in range(args.repeat):
                for label, code in codes:
                    seed += 1
                    argv = [*cmd, "--seed", str(seed)] if what.startswith("merge") else cmd
                    r = run_cold(_ms(store, *argv), drops, env=_env(code))
                    shutil.rmtree(scratch / "co", ignore_errors=True)
                    doc = r["json"] or {}
                    reported = None
                    if what.startswith("merge"):
                        reported = sum(
                            int(doc.get(k) or 0)
                            for k in ("expert_bytes_read", "base_bytes_read", "analyze_bytes_read")
                        )
                    elif what == "checkout":
                        reported = doc.get("bytes_read")
                    rows.append({"what": what, "code": label, "reported": reported, **r})
                    print(what, label, r["wall_seconds"], r["read_bytes"], reported, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res["rows"] = rows
    return res


def render(res: dict) -> str:
    disk = sorted(res["disk_gbps"])[len(res["disk_gbps"]) // 2]
    lines = [
        f"Disk sequential read (dd, 16 MiB reads, cold): {disk:.2f} GB/s (median of "
        f"{', '.join(f'{x:.2f}' for x in res['disk_gbps'])}). Store: "
        f"{res['store_pack_bytes'] / 1e9:.2f} GB of packs. Load average at start: "
        + ", ".join(f"{x:.1f}" for x in res["load"]),
        "",
        "| command | code | wall s (median; all runs) | CPU s | read from disk | reported "
        "| disk / reported | GB/s from disk | of the disk's rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by: dict[tuple[str, str], list[dict]] = {}
    for r in res["rows"]:
        by.setdefault((r["what"], r.get("code", "after")), []).append(r)
    for (what, code), rs in by.items():
        rs = sorted(rs, key=lambda r: r["wall_seconds"])
        r = rs[len(rs) // 2]
        phys = r["read_bytes"] if r["read_bytes"] is not None else r["inblock_bytes"]
        rep = r.get("reported")
        ratio = f"{phys / rep:.3f}" if rep else "-"
        gbps = phys / r["wall_seconds"] / 1e9
        rep_s = f"{rep / 1e6:.1f} MB" if rep else "-"
        walls = "/".join(f"{x['wall_seconds']:.2f}" for x in rs)
        cpu = r.get("cpu_seconds", 0.0)
        lines.append(
            f"| {what} | {code} | {r['wall_seconds']:.2f} ({walls}) | {cpu:.1f} "
            f"| {phys / 1e6:.1f} MB | "
            f"{rep_s} | {ratio} | {gbps:.2f} | {gbps / disk:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run", help="one command, cold")
    r.add_argument("--drop", type=Path, action="append", default=[])
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    s = sub.add_parser("sweep", help="the table of docs/benchmarks.md")
    s.add_argument("--store", type=Path, required=True)
    s.add_argument("--base", required=True)
    s.add_argument("--expert", action="append", required=True)
    s.add_argument("--drop", type=Path, action="append", default=[])
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--budgets", nargs="*", default=["10%", "25%", "100%", "none"])
    s.add_argument("--before", type=Path, help="older source tree to pair against (PYTHONPATH)")
    s.add_argument("--label", default="current")
    s.add_argument("--scratch", type=Path, default=None)
    s.add_argument("--out", type=Path, default=OUT_DIR / "coldio.json")
    s.add_argument("--render", action="store_true", help="only print the table of --out")
    args = p.parse_args()
    if args.mode == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        print(json.dumps(run_cold(cmd, args.drop), indent=2))
        return 0
    if not args.render:
        res = sweep(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    res = json.loads(args.out.read_text())
    sys.stdout.write(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
