"""Kernel benchmark: every merge method on one large tensor, mergestore vs mergekit 0.1.5.

Usage:
    python bench/bench_ops.py [--size 4096] [--dtype bfloat16] [--repeat 2]
                              [--methods ties,linear] [--write-docs docs/methods.md]

Each method gets "4 inputs" of a size x size tensor: base + 3 others for base methods,
4 inputs for linear/karcher, base + 1 for the two-input methods, base + 2 for nuslerp,
1 for passthrough. Times are the best of --repeat runs of one tensor merge (wall clock, CPU,
torch's default thread count). mergekit is timed through its in-process
``merge_tensors`` if it is installed, and results are checked for equality (random methods
with the same global seed and rng="global"; ours is also timed with rng="per_tensor").
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergestore.ops import BaseRule, Scope, TensorContext, get_method, merge_tensor  # noqa: E402

W = [0.4, 0.35, 0.25, 0.3]
# Methods that rank magnitudes: mergekit's non-stable sort orders ties arbitrarily, and bf16
# data has many ties, so their outputs may differ where a tie straddles a cut.
RANKING = {"ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce"}

# method -> (number of non-base inputs (all inputs for IGNORED), shared, per-input params)
CASES: dict[str, tuple[int, dict, dict]] = {
    "linear": (4, {}, {"weight": 0.25}),
    "task_arithmetic": (3, {}, {"weight": 0.3}),
    "ties": (3, {}, {"weight": 0.3, "density": 0.5}),
    "dare_linear": (3, {}, {"weight": 0.3, "density": 0.5}),
    "dare_ties": (3, {}, {"weight": 0.3, "density": 0.5}),
    "breadcrumbs": (3, {}, {"weight": 0.3, "density": 0.5, "gamma": 0.01}),
    "breadcrumbs_ties": (3, {}, {"weight": 0.3, "density": 0.5, "gamma": 0.01}),
    "della": (3, {}, {"weight": 0.3, "density": 0.5, "epsilon": 0.1}),
    "della_linear": (3, {}, {"weight": 0.3, "density": 0.5, "epsilon": 0.1}),
    "slerp": (1, {"t": 0.4}, {}),
    "nuslerp": (2, {}, {"weight": 0.5}),
    "multislerp": (3, {}, {"weight": 0.3}),
    "karcher": (4, {}, {}),
    "model_stock": (3, {}, {}),
    "sce": (3, {"select_topk": 0.5}, {}),
    "nearswap": (1, {"t": 0.01}, {}),
    "ram": (3, {"epsilon": 1e-3}, {}),
    "ramplus_tl": (3, {"epsilon": 1e-3}, {}),
    "arcee_fusion": (1, {}, {}),
    "passthrough": (1, {}, {"scale": 0.5}),
}


def make(size: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(size, size, generator=g).to(dtype)
    xs = [(base.float() + 0.02 * torch.randn(size, size, generator=g)).to(dtype) for _ in range(n)]
    return base, xs


def best_of(fn, repeat: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_method(name, size, dtype, repeat, mk):
    n, shared, per = CASES[name]
    spec = get_method(name)
    base, xs = make(size, n, dtype)
    per_input = [{k: (W[i] if k == "weight" else v) for k, v in per.items()} for i in range(n)]
    use_base = spec.base is not BaseRule.IGNORED
    ctx = TensorContext(f"{name}.weight", seed=0, rng="per_tensor")
    gctx = TensorContext(f"{name}.weight", rng="global")

    t_ours, _ = best_of(
        lambda: merge_tensor(name, base if use_base else None, xs, shared, per_input, ctx), repeat
    )
    row = {"method": name, "ours": t_ours, "mergekit": None, "equal": None}
    if mk is None:
        return row

    def ours_global():
        torch.manual_seed(1)
        return merge_tensor(name, base if use_base else None, xs, shared, per_input, gctx)

    params = dict(shared)
    for p in spec.params:
        if p.scope is not Scope.SHARED and p.name in per:
            params[p.name] = [d[p.name] for d in per_input]
    tensors = [base, *xs] if use_base else xs

    def theirs():
        torch.manual_seed(1)
        return mk.merge_tensors(
            tensors, name, parameters=params, base_index=0 if use_base else None
        )

    t_mk, out_mk = best_of(theirs, repeat)
    out_ours = ours_global()
    row["mergekit"] = t_mk
    row["equal"] = bool(torch.equal(out_ours, out_mk))
    return row


def table(rows, size, dtype) -> str:
    lines = [
        f"Tensor {size}x{size} {str(dtype).replace('torch.', '')}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.machine()}; best of the runs, seconds.",
        "",
        "| method | mergestore | mergekit 0.1.5 | speed-up | bit-equal |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        mk = f"{r['mergekit']:.3f}" if r["mergekit"] is not None else "-"
        up = f"{r['mergekit'] / r['ours']:.1f}x" if r["mergekit"] is not None else "-"
        eq = {True: "yes", None: "-"}.get(r["equal"])
        if eq is None:
            eq = "no: tie at a rank cut" if r["method"] in RANKING else "NO (unexpected)"
        lines.append(f"| {r['method']} | {r['ours']:.3f} | {mk} | {up} | {eq} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--methods", default=",".join(CASES))
    ap.add_argument("--no-mergekit", action="store_true")
    ap.add_argument("--write-docs", type=Path, help="replace the table between bench markers")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)

    mk = None
    if not args.no_mergekit:
        try:
            warnings.filterwarnings("ignore")
            import mergekit.merge_methods as mk  # noqa: PLC0415
        except ImportError:
            print("mergekit not installed: timing mergestore only", file=sys.stderr)

    rows = []
    for name in args.methods.split(","):
        row = bench_method(name, args.size, dtype, args.repeat, mk)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    out = table(rows, args.size, dtype)
    print(out)
    if args.write_docs:
        text = args.write_docs.read_text()
        pattern = r"(<!-- bench_ops:start -->\n).*?(\n<!-- bench_ops:end -->)"
        new, count = re.subn(pattern, lambda m: m.group(1) + out + m.group(2), text, flags=re.S)
        if count != 1:
            raise SystemExit(f"no bench_ops markers in {args.write_docs}")
        args.write_docs.write_text(new)


if __name__ == "__main__":
    main()
