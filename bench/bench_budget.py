"""Budget sweep: what a budgeted merge reads, costs and keeps, against uniform and random choices.

Usage (run under the benchmark lock):
    flock /tmp/mergestore-bench.lock python bench/bench_budget.py \
        [--ks 2,4,8] [--budgets 100,50,25,10] [--out bench/out/budget] \
        [--model 200mb|500mb] [--write-docs docs/benchmarks.md] [--plot docs/img/budget-sweep.png]

One bf16 family (fixtures, `uneven0..7` experts: per tensor, 15% untouched and the rest a delta
of scale log-uniform over two orders of magnitude) is committed into a fresh store, each expert
with `--base main` (so block statistics exist before any merge). For each K, experts
uneven0..K-1 are merged by `mergestore merge --method task_arithmetic` (weights 1/K, fp32
compute, bf16 output) as a CLI subprocess:

- naive: no budget (every expert block is read);
- planner: `--budget P%` (score per byte);
- uniform, random: the same budget with MERGESTORE_BUDGET_STRATEGY=uniform / random:0, run
  through the same planner and executor (docs/budget.md).

Expert bytes read come from `merge --json` (the store's read meter). Wall time is the
subprocess's, process start included. Retained delta is 1 − ||M_full − M_b|| / ||M_full − base||
in fp64 over every tensor, from the stored outputs (Store.read_tensor); the measured
||M_full − M_b|| is checked against the reported bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.family import FamilySpec, make_family, model_bytes  # noqa: E402
from fixtures.store import commit_family  # noqa: E402
from mergestore.api import Store  # noqa: E402

SPEC = FamilySpec(
    n_layers=12,
    hidden=768,
    intermediate=2048,
    vocab=16000,
    n_heads=12,
    n_kv_heads=4,
    dtype="bfloat16",
    shard_bytes=48 << 20,
    seed=11,
    experts=tuple(f"uneven{i}" for i in range(8)),
)
# A larger family with the bench-0.5g shape (470 MB per model): fixed costs (interpreter and
# torch start-up, planning) weigh less against the merge, as with real checkpoints.
MODELS = {
    "200mb": SPEC,
    "500mb": replace(
        SPEC,
        n_layers=16,
        hidden=1024,
        intermediate=2816,
        vocab=32000,
        n_heads=16,
        shard_bytes=128 << 20,
    ),
}
# Smaller blocks than the store's 1 MiB default: a 125 MB model's tensors are small, and
# real models' tensors are 10-30x bigger at the same block count per tensor.
BLOCK_SIZE = 256 << 10
STRATEGIES = {"planner": "score", "uniform": "uniform", "random": "random:0"}


def run_cli(args: list[str], env_extra: dict[str, str] | None = None) -> tuple[dict, float]:
    env = dict(os.environ)
    env.pop("MERGESTORE_BUDGET_STRATEGY", None)
    env.update(env_extra or {})
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", "from mergestore.cli.main import main; main()", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{p.stderr}")
    return json.loads(p.stdout), wall


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def setup(out: Path, spec: FamilySpec) -> Path:
    fam = make_family(out / f"fam-{model_bytes(spec) // 10**6}mb", spec, reuse=True)
    store_dir = out / "store"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    s = Store.init(store_dir, block_size=BLOCK_SIZE)
    commit_family(s, fam)  # each expert with --base main: statistics exist before any merge
    s.close()
    return store_dir


def retained(store_dir: Path, full: str, branches: list[str]) -> dict[str, float]:
    """||M_full − M_b|| (fp64) for each branch, and ||M_full − base|| under key ''."""
    s = Store.open(store_dir)
    sq = dict.fromkeys(["", *branches], 0.0)
    try:
        for rec in s.tensors(full):
            f = s.read_tensor(full, rec.name).to(torch.float64)
            base = s.read_tensor("main", rec.name).to(torch.float64)
            sq[""] += float(((f - base) ** 2).sum())
            for b in branches:
                x = s.read_tensor(b, rec.name).to(torch.float64)
                sq[b] += float(((f - x) ** 2).sum())
    finally:
        s.close()
    return {k: v**0.5 for k, v in sq.items()}


def sweep(store_dir: Path, ks: list[int], budgets: list[int]) -> list[dict]:
    rows: list[dict] = []
    st = ["--store", str(store_dir)]
    for k in ks:
        experts = [f"uneven{i}" for i in range(k)]
        ws = [x for _ in experts for x in ("-w", f"{1.0 / k:.6f}")]
        common = [*st, "merge", "--method", "task_arithmetic", "--base", "main", *experts, *ws]
        common += ["--dtype", "float32", "--out-dtype", "bfloat16"]
        runs: list[dict] = []
        load = load_avg()
        # The first run of a K writes the full merge's blocks; the naive run, second, finds
        # them stored (bytes_written 0), so the 100% planner run is the one that pays writes.
        order: list[tuple[int | None, str]] = [(100, "planner"), (None, "naive")]
        order += [(p, n) for p in budgets if p != 100 for n in STRATEGIES]
        for pct, name in order:
            branch = f"k{k}-{name}-{pct}" if pct is not None else f"k{k}-naive"
            args = [*common, "-b", branch] + ([] if pct is None else ["--budget", f"{pct}%"])
            strat = STRATEGIES.get(name, "score")
            env = {} if strat == "score" else {"MERGESTORE_BUDGET_STRATEGY": strat}
            j, wall = run_cli(args, env)
            runs.append({"strategy": name, "budget": pct, "branch": branch, "wall": wall, **j})
            print(f"K={k} {name} {pct}%: {wall:.1f} s, load {load_avg()}", file=sys.stderr)
        dist = retained(store_dir, f"k{k}-naive", [r["branch"] for r in runs])
        for r in runs:
            d = dist[r["branch"]]
            rows.append(
                {
                    "k": k,
                    "strategy": r["strategy"],
                    "budget": r["budget"],
                    "wall": round(r["wall"], 2),
                    "run_seconds": r.get("wall_seconds"),
                    "expert_bytes_read": r["expert_bytes_read"],
                    "expert_bytes_full": r["expert_bytes_full"],
                    "budget_bytes": r["budget_bytes"],
                    "base_bytes_read": r["base_bytes_read"],
                    "bytes_written": r["bytes_written"],
                    "blocks_from_base": r.get("blocks_from_base", 0),
                    "error": d,
                    "full_delta": dist[""],
                    "retained": 1 - d / dist[""] if dist[""] else 1.0,
                    "error_bound": r.get("error_bound"),
                    "bound_holds": r.get("error_bound") is None or d <= r["error_bound"],
                    "load": load,
                }
            )
    return rows


def fmt_mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f}"


def table(rows: list[dict]) -> str:
    head = (
        "| K | choice | budget | expert MB read | of full | base MB read | MB written"
        " | wall s | vs 100% | merge s | retained delta | ‖M_full−M_b‖ | bound |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    out = []
    for r in rows:
        ref = next(x for x in rows if x["k"] == r["k"] and x["budget"] == 100)
        share = r["expert_bytes_read"] / r["expert_bytes_full"] if r["expert_bytes_full"] else 1
        budget = "none" if r["budget"] is None else f"{r['budget']}%"
        bound = "–" if r["error_bound"] is None else f"{r['error_bound']:.3g}"
        out.append(
            f"| {r['k']} | {r['strategy']} | {budget}"
            f" | {fmt_mb(r['expert_bytes_read'])} | {share:.1%} | {fmt_mb(r['base_bytes_read'])}"
            f" | {fmt_mb(r['bytes_written'])} | {r['wall']:.1f} | {r['wall'] / ref['wall']:.2f}×"
            f" | {r['run_seconds']:.1f} | {r['retained']:.3f} | {r['error']:.3g} | {bound} |"
        )
    return head + "\n".join(out) + "\n"


def startup() -> float:
    """Seconds to start a process that imports mergestore and torch (as a merge does): best
    of 3."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mergestore.api, torch"], check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in rows})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=90)
    colors = dict(zip(ks, ["tab:blue", "tab:orange", "tab:green", "tab:red"], strict=False))
    marks = {"planner": ("o", "-"), "uniform": ("s", "--"), "random": ("^", ":")}
    for k in ks:
        full = next(
            r for r in rows if r["k"] == k and r["strategy"] == "planner" and r["budget"] == 100
        )
        for strat, (m, ls) in marks.items():
            pts = sorted(
                [
                    (r["budget"], r["retained"])
                    for r in rows
                    if r["k"] == k and r["strategy"] == strat
                ]
                + ([] if strat == "planner" else [(100, full["retained"])])
            )
            a1.plot(
                *zip(*pts, strict=True), marker=m, ls=ls, color=colors[k], label=f"K={k} {strat}"
            )
        pts = sorted(
            (r["budget"], r["wall"]) for r in rows if r["k"] == k and r["strategy"] == "planner"
        )
        a2.plot(*zip(*pts, strict=True), marker="o", color=colors[k], label=f"K={k} planner")
        pts = sorted(
            (r["budget"], r["run_seconds"])
            for r in rows
            if r["k"] == k and r["strategy"] == "planner"
        )
        a2.plot(*zip(*pts, strict=True), marker=".", ls="--", color=colors[k], lw=1)
        naive = next(r for r in rows if r["k"] == k and r["strategy"] == "naive")
        a2.axhline(naive["wall"], color=colors[k], ls=":", lw=1)
    a1.set(xlabel="budget (% of expert bytes)", ylabel="retained merge delta", ylim=(0, 1.02))
    a1.grid(alpha=0.3)
    a1.legend(fontsize=6, ncol=3)
    a2.set(xlabel="budget (% of expert bytes)", ylabel="seconds")
    a2.set_title("solid: wall; dashed: merge alone; dotted: no budget", fontsize=8)
    a2.set_ylim(bottom=0)
    a2.grid(alpha=0.3)
    a2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_docs(doc: Path, body: str) -> None:
    text = doc.read_text()
    pat = re.compile(r"(<!-- section:budget -->\n).*?(<!-- /section:budget -->)", re.S)
    if not pat.search(text):
        raise SystemExit(f"no budget section in {doc}")
    doc.write_text(pat.sub(lambda m: m.group(1) + body + m.group(2), text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--budgets", default="100,50,25,10")
    ap.add_argument("--out", default="bench/out/budget")
    ap.add_argument("--write-docs", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the store (default: delete it)")
    ap.add_argument("--quick", action="store_true", help="a tiny family, to try the script")
    ap.add_argument("--model", choices=sorted(MODELS), default="200mb", help="family size")
    a = ap.parse_args()
    out = Path(a.out)
    ks = [int(x) for x in a.ks.split(",")]
    budgets = [int(x) for x in a.budgets.split(",")]
    spec = MODELS[a.model]
    if a.quick:
        spec = replace(SPEC, n_layers=2, hidden=128, intermediate=256, vocab=1000, n_heads=4)
        out = out / "quick"
    t0 = time.perf_counter()
    print(f"load {load_avg()}; family {model_bytes(spec) / 1e6:.0f} MB per model", file=sys.stderr)
    store_dir = setup(out, spec)
    t_setup = time.perf_counter() - t0
    t_start = startup()
    rows = sweep(store_dir, ks, budgets)
    total = time.perf_counter() - t0
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model_mb": model_bytes(spec) / 1e6,
        "model": a.model,
        "shape": f"{spec.n_layers} layers × {spec.hidden}, vocab {spec.vocab}",
        "setup_seconds": round(t_setup, 1),
        "startup_seconds": round(t_start, 2),
        "total_seconds": round(total, 1),
        "load_end": load_avg(),
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(table(rows))
    print(json.dumps(meta), file=sys.stderr)
    if a.plot:
        plot(rows, Path(a.plot))
    if a.write_docs:
        write_docs(Path(a.write_docs), docs_body(rows, meta, a.plot))
    if not a.keep:
        shutil.rmtree(store_dir)


def docs_body(rows: list[dict], meta: dict, plot_path: str | None) -> str:
    img = ""
    if plot_path:
        img = f"![budget sweep]({os.path.relpath(plot_path, 'docs')})\n\n"

    def get(k: int, strat: str, pct: int | None) -> dict:
        return next(
            r for r in rows if r["k"] == k and r["strategy"] == strat and r["budget"] == pct
        )

    kmax = max(r["k"] for r in rows)
    lo = min(r["budget"] for r in rows if r["budget"] is not None)
    full, low = get(kmax, "planner", 100), get(kmax, "planner", lo)
    wall_ratio = low["wall"] / full["wall"]
    run_ratio = low["run_seconds"] / full["run_seconds"]
    keep = {s: get(kmax, s, lo)["retained"] for s in STRATEGIES}
    return (
        "## Budgeted merges\n\n"
        f"{meta['machine']}; family of {meta['model_mb']:.0f} MB bf16 models ({meta['shape']},"
        " `uneven0..7` experts); store blocks of 256 KiB; `task_arithmetic`, weights 1/K, fp32"
        " compute, bf16 output. Each merge is a `mergestore merge --json` process; wall time"
        " includes process start (importing torch: best of 3,"
        f' {meta["startup_seconds"]:.1f} s) and planning, "merge s" is the merge\'s own'
        f" `wall_seconds`. Whole sweep {meta['total_seconds']:.0f} s (setup"
        f" {meta['setup_seconds']:.0f} s). Load average (1/5/15 min) at the end:"
        f" {meta['load_end']}; per K in bench/out/budget/results.json.\n\n"
        "```\nflock /tmp/mergestore-bench.lock python bench/bench_budget.py"
        f" --model {meta['model']} --write-docs docs/benchmarks.md"
        " --plot docs/img/budget-sweep.png\n```\n\n"
        f"{img}{table(rows)}\n"
        f"At K = {kmax} and {lo}%, the planner keeps {keep['planner']:.0%} of the merge delta;"
        f" uniform keeps {keep['uniform']:.0%} and random {keep['random']:.0%} of it with the"
        f" same bytes. Its wall time is {wall_ratio:.2f}× the 100% merge's"
        f" ({run_ratio:.2f}× for the merge alone, without interpreter start-up): the 0.35×"
        f" target is {'met' if wall_ratio <= 0.35 else 'not met'} by wall time and"
        f" {'met' if run_ratio <= 0.35 else 'not met'} by the merge's own time.\n"
    )


if __name__ == "__main__":
    main()
