"""Budgeted merges judged by loss: norm-greedy, random, saliency-gradient and saliency-Fisher.

Usage:
    nice python bench/bench_saliency.py [--family DIR] [--preset small|llama-b] [--out DIR]
        [--budgets 10,25,50] [--methods task_arithmetic,ties] [--plot docs/img/budget-saliency.png]

The real tiny fine-tune family (fixtures/lm_family.py: a byte-level Qwen2 and four experts,
full / MLP-only / merged LoRA q,v / top half, each fine-tuned on one text domain) is committed
(or, with --preset llama-b, the second family: a Llama whose experts are built otherwise:
attention-only, every weight at a high learning rate, a merged LoRA on the MLP, bottom half)
into a fresh store (block size 4 KiB, every expert with --base main so the delta statistics are
kept). `mergestore saliency` computes the gradient and the empirical Fisher diagonal of the base
on calibration windows drawn from the four domains' *training* text. Each merge (weight 0.3 per
expert; ties with density 0.3 and lambda 0.5, since ties normalizes the weights and at lambda 1
its full merge is worse than the base here) is written with --out and judged by `heldout_loss`:
the mean next-byte loss over the four domains' held-out text. The score of a budgeted merge is
the share of the full merge's loss gain it keeps: (L_base − L_budget) / (L_base − L_full).

- norm-greedy: the default planner (|w|·||Δ|| per stored byte);
- random: MERGESTORE_BUDGET_STRATEGY=random:SEED, seeds 0-4, mean (and min/max);
- saliency-gradient / saliency-fisher: --saliency with the helper's files.

Everything runs in this process through the Python API (Store.saliency, Store.merge), on one
torch thread for the judge.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.lm_family import (  # noqa: E402
    DOMAINS,
    ensure_lm_family,
    heldout_loss,
    load_corpora,
    load_lm_family,
    split,
)
from mergestore.api import Store  # noqa: E402
from mergestore.merge.budget import STRATEGY_ENV  # noqa: E402

WEIGHT = 0.3
RANDOM_SEEDS = range(5)


def calibration(fam, path: Path, per_domain: int = 4, chars: int = 2048) -> None:
    """Documents from each domain's training split (never the held-out tenth)."""
    texts = load_corpora(fam.spec)
    docs = []
    for d in DOMAINS:
        train = bytes(split(texts[d])[0].tolist())
        step = len(train) // per_domain
        for i in range(per_domain):
            docs.append(train[i * step : i * step + chars].decode("utf-8", "replace"))
    path.write_text("\n".join(json.dumps({"text": t}) for t in docs) + "\n")


def mean_loss(losses: dict[str, float]) -> float:
    return sum(losses.values()) / len(losses)


def merge_loss(store: Store, fam, method: str, work: Path, **kw) -> tuple[float, dict]:
    out = work / f"m-{time.monotonic_ns()}"
    params = {"density": 0.3, "lambda": 0.5} if method == "ties" else {}
    res = store.merge(
        method=method,
        base="main",
        models=list(fam.experts),
        weights=[WEIGHT] * len(fam.experts),
        params=params,
        dtype="float32",
        out=out,
        force=True,
        **kw,
    )
    losses = heldout_loss(out, fam)
    shutil.rmtree(out)
    return mean_loss(losses), res.run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", type=Path, default=None)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--out", type=Path, default=Path("bench/out/saliency"))
    ap.add_argument("--budgets", default="10,25,50")
    ap.add_argument("--methods", default="task_arithmetic,ties")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--plot", type=Path, default=None)
    a = ap.parse_args(argv)
    fam = load_lm_family(a.family) if a.family else ensure_lm_family(a.preset)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-saliency-") as tmp:
        work = Path(tmp)
        store = Store.init(work / "store", block_size=4096)
        store.commit(fam.base, branch="main")
        for name, path in fam.experts.items():
            store.commit(path, branch=name, base="main")
        cal = work / "cal.jsonl"
        calibration(fam, cal)
        sal = {}
        for kind in ("gradient", "fisher"):
            r = store.saliency(
                "main",
                cal,
                work / kind,
                fisher=kind == "fisher",
                window=fam.spec.seq,
                max_windows=a.windows,
            )
            sal[kind] = r.path
            print(f"saliency {kind}: {r.windows} windows, loss {r.loss:.4f}", flush=True)
        l_base = mean_loss(fam.info["heldout_loss"]["base"])
        rows = []
        for method in a.methods.split(","):
            l_full, _ = merge_loss(store, fam, method, work)
            gain = l_base - l_full
            print(f"{method}: base {l_base:.4f} full {l_full:.4f} gain {gain:.4f}", flush=True)
            for pct in (int(x) for x in a.budgets.split(",")):
                budget = f"{pct}%"
                row = {"method": method, "budget": pct, "l_base": l_base, "l_full": l_full}
                loss, run = merge_loss(store, fam, method, work, budget=budget)
                row["norm_greedy"] = (l_base - loss) / gain
                row["read_share"] = run["expert_bytes_read"] / run["expert_bytes_full"]
                shares = []
                for seed in RANDOM_SEEDS:
                    os.environ[STRATEGY_ENV] = f"random:{seed}"
                    try:
                        loss, _ = merge_loss(store, fam, method, work, budget=budget)
                    finally:
                        del os.environ[STRATEGY_ENV]
                    shares.append((l_base - loss) / gain)
                row["random"] = sum(shares) / len(shares)
                row["random_min"], row["random_max"] = min(shares), max(shares)
                for kind, path in sal.items():
                    loss, run = merge_loss(store, fam, method, work, budget=budget, saliency=path)
                    row[f"saliency_{kind}"] = (l_base - loss) / gain
                    row[f"planning_bytes_{kind}"] = run.get("planning_bytes_read")
                rows.append(row)
                print(
                    f"  {budget:>4} norm {row['norm_greedy']:.3f} random {row['random']:.3f} "
                    f"[{row['random_min']:.3f}, {row['random_max']:.3f}] gradient "
                    f"{row['saliency_gradient']:.3f} fisher {row['saliency_fisher']:.3f}",
                    flush=True,
                )
        store.close()
    result = {
        "family": fam.info["spec"],
        "corpus": fam.info["corpus"],
        "weight": WEIGHT,
        "rows": rows,
        "seconds": round(time.time() - t0, 1),
        "load": os.getloadavg(),
        "machine": platform.platform(),
    }
    (a.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"seconds": result["seconds"], "load": result["load"]}))
    if a.plot:
        plot(rows, a.plot)
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in rows}, key=lambda m: m != "task_arithmetic")
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.8), sharey=True)
    axes = [axes] if len(methods) == 1 else axes
    series = [
        ("norm_greedy", "norm-greedy (default)", "tab:gray", "o"),
        ("random", "random (mean of 5)", "tab:orange", "s"),
        ("saliency_gradient", "saliency: gradient", "tab:blue", "^"),
        ("saliency_fisher", "saliency: Fisher", "tab:green", "v"),
    ]
    for ax, m in zip(axes, methods, strict=True):
        rs = [r for r in rows if r["method"] == m]
        xs = [r["budget"] for r in rs]
        for key, label, color, marker in series:
            ax.plot(xs, [r[key] for r in rs], marker=marker, color=color, label=label)
        ax.fill_between(
            xs,
            [r["random_min"] for r in rs],
            [r["random_max"] for r in rs],
            color="tab:orange",
            alpha=0.15,
        )
        ax.axhline(0.5, color="k", lw=0.5, ls=":")
        ax.set_title(m)
        ax.set_xlabel("budget (% of expert bytes)")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of the full merge's loss gain kept")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
