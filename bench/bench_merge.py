"""End-to-end merge benchmark: `mergestore merge` vs `mergekit-yaml` (0.1.5), CLI against CLI.

Usage (under the shared bench lock):
    flock /tmp/mergestore-bench.lock python bench/bench_merge.py \
        [--preset bench-0.5g] [--experts dense_small,frozen,lowrank_attn,uneven0] \
        [--methods linear,task_arithmetic,...] [--out bench/out/merge] [--write-docs]

Options for issue 14's tables: --config-dtype float32:bfloat16 (or bfloat16) adds mergekit's
`dtype:` / `out_dtype:` to every config; --fp32-norms rewrites the family's norm tensors to fp32
(fp32 norms next to bf16 weights); --commands writes the configs and prints, per method, the two
whole-process commands to time in pairs with an external A/B timer: mergestore (`merge --out`
writing the HF folder, into a fresh store per run: the pristine store's packs hard-linked, its
index copied, so earlier outputs cannot deduplicate) and mergekit-yaml writing its folder. Each
method's "prepare" line makes --runs such store copies beforehand, and each timed run takes the
next one and writes a new output folder, so neither timed command deletes an earlier run's
output (that cleanup, up to 0.1 s, is not the user's task: "cleanup" removes them all after).

Steps: generate the family (cached under --out), commit it to a store (not timed), then for each
method write one mergekit YAML config and run it twice: `mergestore merge --config` with store refs
and `mergekit-yaml` with absolute model paths (mergekit's defaults, CPU, `--no-write-model-card`).
Each child's wall time and its own peak RSS come from os.wait4 on that child's pid. Outputs are
compared tensor by tensor (max abs diff, tensors bit-identical). Two references are timed too:
a plain torch task-arithmetic script ("machine limit": safetensors load, add deltas, save) and
mergestore's floor (store read + decode of every input block, and hashing one output's bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import measure  # noqa: E402  (bench/measure.py)

DEFAULT_EXPERTS = "dense_small,frozen,lowrank_attn,uneven0"
DEFAULT_METHODS = "linear,task_arithmetic,ties,dare_ties,breadcrumbs,della,slerp,model_stock"
# Deterministic methods: outputs are compared with mergekit's. (ties/breadcrumbs may differ
# where bf16 magnitudes tie at the cut: mergekit's unstable sort vs our documented rule.)
RANDOM = {"dare_ties", "dare_linear", "della", "della_linear"}


def method_config(method: str, base: str, experts: list[str]) -> dict:
    """One mergekit config per method; `base`/`experts` are paths (mergekit) or refs (ours)."""
    w = round(1.0 / len(experts), 4)
    if method == "linear":
        return {
            "merge_method": "linear",
            "models": [{"model": e, "parameters": {"weight": w}} for e in experts],
        }
    if method == "slerp":
        return {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": experts[0]}],
            "parameters": {"t": 0.4},
        }
    if method == "nearswap":
        return {
            "merge_method": "nearswap",
            "base_model": base,
            "models": [{"model": base}, {"model": experts[0]}],
            "parameters": {"t": 0.001},
        }
    if method == "nuslerp":  # two models, no base: slerp of the weights themselves
        return {
            "merge_method": "nuslerp",
            "models": [
                {"model": experts[0], "parameters": {"weight": 0.6}},
                {"model": experts[1], "parameters": {"weight": 0.4}},
            ],
        }
    if method in ("multislerp", "karcher"):  # multislerp of the task vectors; karcher has no base
        cfg: dict = {"merge_method": method, "models": [{"model": e} for e in experts]}
        if method == "multislerp":
            cfg["base_model"] = base
            for m in cfg["models"]:
                m["parameters"] = {"weight": w}
        return cfg
    if method in ("ram", "sce"):
        models = [{"model": e} for e in experts]
        cfg = {"merge_method": method, "base_model": base, "models": models}
        if method == "sce":
            cfg["parameters"] = {"select_topk": 0.5}
        return cfg
    if method == "model_stock":
        return {
            "merge_method": "model_stock",
            "base_model": base,
            "models": [{"model": e} for e in experts],
        }
    params: dict = {"weight": 0.3}
    if method in ("ties", "dare_ties", "dare_linear", "della", "della_linear"):
        params["density"] = 0.5
    if method.startswith("della"):
        params["epsilon"] = 0.1
    if method.startswith("breadcrumbs"):
        params.update(density=0.9, gamma=0.01)
    return {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": e, "parameters": dict(params)} for e in experts],
    }


def with_dtypes(cfg: dict, config_dtype: str | None) -> dict:
    """cfg with mergekit's `dtype:` (and `out_dtype:`) from "DTYPE[:OUT_DTYPE]"."""
    if config_dtype:
        dtype, _, out = config_dtype.partition(":")
        cfg = {**cfg, "dtype": dtype}
        if out:
            cfg["out_dtype"] = out
    return cfg


def fp32_norms(src: Path, dst: Path) -> None:
    """A copy of the HF folder `src` whose norm tensors (names containing "norm") are fp32, the
    rest unchanged: the mixed-dtype checkpoints (fp32 norms next to bf16 weights) users have."""
    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in sorted(src.iterdir()):
        if f.suffix != ".safetensors":
            if f.name != "model.safetensors.index.json":
                shutil.copy2(f, dst / f.name)
            continue
        tensors = load_file(str(f))
        for name, t in tensors.items():
            if "norm" in name:
                tensors[name] = t.to(torch.float32)
            total += tensors[name].numel() * tensors[name].element_size()
        save_file(tensors, str(dst / f.name), metadata={"format": "pt"})
    index = src / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["metadata"]["total_size"] = total
        (dst / index.name).write_text(json.dumps(data, indent=2) + "\n")


def fresh_store_cmd(pristine: Path, run: Path) -> str:
    """Shell commands making `run` a fresh copy of the store `pristine` in a few milliseconds:
    packs hard-linked (append-only: a run's appended tail is referenced by no copied index),
    the LMDB index and the rest copied."""
    return (
        f"rm -rf {run} && mkdir -p {run} && cp -al {pristine}/packs {run}/packs && "
        f"cp -a {pristine}/index {pristine}/config.json {pristine}/locks {run}/"
    )


def mergestore_cmd(args: argparse.Namespace) -> list[str]:
    """The CLI, or (with --code DIR) the CLI of another copy of the package, e.g. a "before"."""
    if not args.code:
        return ["mergestore"]
    code = Path(args.code).resolve()
    return [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {str(code)!r}); "
        "from mergestore.cli.entry import run; run()",  # as the console script starts
    ]


def run_child(cmd: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Wall seconds and the command's own peak RSS (bench/measure.py: not inflated by this
    process's own peak). stderr goes to `log` (or is dropped)."""
    with open(log or os.devnull, "wb") as err:
        try:
            m = measure.run(cmd, env=env, stderr=err)
        except RuntimeError as e:
            tail = log.read_text()[-2000:] if log else ""
            raise RuntimeError(f"{e}: {tail}") from None
    return {"wall": m.wall, "rss": m.rss, "stdout": m.stdout.decode()}


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def warm(paths: list[Path]) -> None:
    """Read input files once so both tools start from the page cache."""
    for p in paths:
        for f in sorted(p.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(16 << 20):
                        pass


def compare(ours: Path, theirs: Path) -> dict:
    """Max abs diff over all tensors (fp32) and how many tensors are bit-identical."""
    import torch
    from safetensors import safe_open

    def tensors(d: Path) -> dict:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as fh:
                for k in fh.keys():  # noqa: SIM118 (a safe_open handle)
                    out[k] = (f, k)
        return out

    a, b = tensors(ours), tensors(theirs)
    if set(a) != set(b):
        return {"error": f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}"}
    worst, same, n_diff, n_el = 0.0, 0, 0, 0
    for k in sorted(a):
        with safe_open(str(a[k][0]), "pt") as fa, safe_open(str(b[k][0]), "pt") as fb:
            x, y = fa.get_tensor(k), fb.get_tensor(k)
        if x.dtype != y.dtype or x.shape != y.shape:
            return {"error": f"{k}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}"}
        if torch.equal(
            x.view(torch.uint8) if x.dim() else x, y.view(torch.uint8) if y.dim() else y
        ):
            same += 1
            n_el += x.numel()
            continue
        d = (x.float() - y.float()).abs()
        worst = max(worst, float(d.max()))
        n_diff += int((d > 0).sum())
        n_el += x.numel()
    return {
        "max_abs_diff": worst,
        "tensors_identical": same,
        "tensors": len(a),
        "elements_differing": n_diff / max(1, n_el),
    }


# -- the two reference programs (run as children of this script) --------------------------------

PLAIN_TA = """
import json, sys, torch
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import save_file

base, experts, out, w = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:-2]], sys.argv[-2], \
    float(sys.argv[-1])

def files(d):
    idx = d / "model.safetensors.index.json"
    if idx.exists():
        m = json.loads(idx.read_text())["weight_map"]
        return {k: d / f for k, f in m.items()}
    with safe_open(str(d / "model.safetensors"), "pt") as fh:
        return {k: d / "model.safetensors" for k in fh.keys()}

bmap, emaps = files(base), [files(e) for e in experts]
result = {}
for name, bf in bmap.items():
    with safe_open(str(bf), "pt") as fh:
        b = fh.get_tensor(name)
    acc = torch.zeros_like(b)
    for m in emaps:
        with safe_open(str(m[name]), "pt") as fh:
            acc += w * (fh.get_tensor(name) - b)
    result[name] = b + acc
Path(out).mkdir(parents=True, exist_ok=True)
save_file(result, str(Path(out) / "model.safetensors"), metadata={"format": "pt"})
"""


def floor(store: Path, config: Path) -> None:
    """Store read + decode of every input block a task_arithmetic merge reads, with the
    engine's reader on 2 tensors at a time, plus blake3 of one output's worth of bytes.
    Tensors are read as the merge reads them: numpy arrays on the torch-free lane (no torch
    import), else torch tensors."""
    import blake3
    import numpy as np

    from mergestore.api import Store
    from mergestore.merge.config import load_config
    from mergestore.merge.engine import Engine, EngineStats
    from mergestore.merge.run import prepare
    from mergestore.ops import alloc
    from mergestore.store.packs import ReadMeter
    from mergestore.store.parallel import reuse_freed_memory
    from mergestore.threads import ordered_map

    s = Store.open(store)
    cfg = load_config(config)
    prep = prepare(s.repo, cfg, commit_paths=False)
    eng = Engine(s.repo, method=cfg.merge_method, dtype=None, out_dtype=None, seed=0)
    eng.choose_lanes(prep.tasks)
    stats = EngineStats(expert_meters=[ReadMeter() for _ in prep.models])
    t0 = time.perf_counter()
    out_bytes = 0

    def as_bytes(t) -> np.ndarray:
        if isinstance(t, np.ndarray):
            return np.ascontiguousarray(t).reshape(-1).view(np.uint8)
        import torch

        return t.contiguous().view(-1).view(torch.uint8).numpy()

    def one(task):
        ld = eng._load(task, stats)
        data = as_bytes(ld.base if ld.base is not None else ld.inputs[0])
        h = blake3.blake3(max_threads=1)
        h.update(memoryview(data))
        return data.nbytes

    # Memory as the engine's run() has it: freed blocks stay in the heap, and the tensors'
    # buffers are recycled (otherwise every tensor faults fresh pages in: ~0.4 s of sys time
    # that no merge pays).
    reuse_freed_memory()
    with alloc.pooling():
        for n in ordered_map(one, prep.tasks, workers=2, window=2):
            out_bytes += n
    print(json.dumps({"seconds": time.perf_counter() - t0, "out_bytes": out_bytes}))


# -- driver -------------------------------------------------------------------------------------


def setup(args: argparse.Namespace) -> tuple[Path, Path, list[Path], list[str]]:
    import dataclasses

    from fixtures.family import PRESETS, make_family

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = args.experts.split(",")
    spec = dataclasses.replace(PRESETS[args.preset], experts=tuple(names))
    if args.dtype:
        spec = dataclasses.replace(spec, dtype=args.dtype)
    t0 = time.perf_counter()
    fam = make_family(out / f"family-{args.preset}", spec, reuse=True)
    if args.fp32_norms:
        from fixtures.family import Family

        root = out / f"family-{args.preset}-fp32norms"
        dirs = {"base": fam.base, **fam.experts}
        for name, d in dirs.items():
            target = root / ("base" if name == "base" else f"experts/{name}")
            if not (target / "config.json").exists():
                fp32_norms(d, target)
        experts = {n: root / "experts" / n for n in fam.experts}
        fam = Family(root=root, base=root / "base", experts=experts, spec=spec)
    print(f"family: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    store = out / "store"
    if not (store / "done").exists():
        if store.exists():
            shutil.rmtree(store)
        ms = ["mergestore"]
        env = dict(os.environ, MERGESTORE_DIR=str(store))
        subprocess.run(ms + ["init", str(store)], check=True, env=env, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run(
            ms + ["commit", str(fam.base), "-m", "base", "-b", "main"], check=True, env=env
        )
        for n, p in fam.experts.items():
            subprocess.run(
                ms + ["commit", str(p), "-m", n, "-b", n, "--base", "main"], check=True, env=env
            )
        (store / "done").write_text("ok")
        print(f"store commits: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return out, store, [fam.base, *fam.experts.values()], names


def write_yaml(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def bench(args: argparse.Namespace) -> list[dict]:
    out, pristine, model_dirs, names = setup(args)
    # A fresh copy of the input store per run: outputs of an earlier run would deduplicate.
    store = out / "store-run"
    shutil.rmtree(store, ignore_errors=True)
    subprocess.run(["cp", "-a", str(pristine), str(store)], check=True)
    try:
        return _bench(args, out, store, model_dirs, names)
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _bench(
    args: argparse.Namespace, out: Path, store: Path, model_dirs: list[Path], names: list[str]
) -> list[dict]:
    base_dir, expert_dirs = model_dirs[0], model_dirs[1:]
    env = dict(os.environ, MERGESTORE_DIR=str(store))
    rows = []
    for method in args.methods.split(","):
        row: dict = {"method": method, "load_before": loadavg()}
        mk_cfg = write_yaml(
            out / f"{method}.mergekit.yml",
            with_dtypes(
                method_config(method, str(base_dir), [str(p) for p in expert_dirs]),
                args.config_dtype,
            ),
        )
        ms_cfg = write_yaml(
            out / f"{method}.mergestore.yml",
            with_dtypes(method_config(method, "main", names), args.config_dtype),
        )
        mk_out, ms_out = out / "mk-out", out / "ms-out"
        for d in (mk_out, ms_out):
            shutil.rmtree(d, ignore_errors=True)
        warm(model_dirs)
        branch = f"bench-{method}-{int(time.time())}"
        r = run_child(
            [*mergestore_cmd(args), "merge", "--config", str(ms_cfg), "-b", branch, "-m", method]
            + ["--json"],
            env=env,
            log=out / f"{method}.mergestore.log",
        )
        row["ms_wall"], row["ms_rss"] = r["wall"], r["rss"]
        row["ms_json"] = json.loads(r["stdout"])
        print(f"{method}: mergestore {r['wall']:.1f}s {r['rss'] / 2**30:.2f} GiB", file=sys.stderr)
        if not args.no_mergekit:
            warm(model_dirs)
            r = run_child(
                ["mergekit-yaml", str(mk_cfg), str(mk_out), "--no-write-model-card"],
                log=out / f"{method}.mergekit.log",
            )
            row["mk_wall"], row["mk_rss"] = r["wall"], r["rss"]
            print(
                f"{method}: mergekit {r['wall']:.1f}s {r['rss'] / 2**30:.2f} GiB", file=sys.stderr
            )
            if method not in RANDOM:
                co = subprocess.run(
                    ["mergestore", "checkout", branch, str(ms_out)], env=env, capture_output=True
                )
                if co.returncode != 0:
                    raise RuntimeError(f"checkout failed: {co.stderr.decode()}")
                row["parity"] = compare(ms_out, mk_out)
                print(f"{method}: parity {row['parity']}", file=sys.stderr)
        row["load_after"] = loadavg()
        rows.append(row)
        for d in (mk_out, ms_out):
            shutil.rmtree(d, ignore_errors=True)
    if not args.no_refs:
        ta = json.loads(json.dumps(method_config("task_arithmetic", "main", names)))
        ta_cfg = write_yaml(out / "floor.mergestore.yml", ta)
        plain_out = out / "plain-out"
        shutil.rmtree(plain_out, ignore_errors=True)
        warm(model_dirs)
        r = run_child(
            [sys.executable, "-c", PLAIN_TA, str(base_dir), *map(str, expert_dirs), str(plain_out)]
            + ["0.3"]
        )
        shutil.rmtree(plain_out, ignore_errors=True)
        rows.append(
            {"method": "plain torch task_arithmetic", "ms_wall": r["wall"], "ms_rss": r["rss"]}
        )
        r = run_child([sys.executable, __file__, "--floor", str(store), str(ta_cfg)], env=env)
        rows.append(
            {
                "method": "floor: store read+decode+hash (task_arithmetic inputs)",
                "ms_wall": r["wall"],
                "ms_rss": r["rss"],
                "inner": json.loads(r["stdout"]),
            }
        )
    return rows


def print_commands(args: argparse.Namespace) -> None:
    """Per method: the mergestore and mergekit commands (one shell line each) and the read
    floor's, as JSON lines, for a paired whole-process timer."""
    out, store, model_dirs, names = setup(args)
    base_dir, expert_dirs = model_dirs[0], model_dirs[1:]
    tag = (args.config_dtype or "stored").replace(":", "-")
    runs = out / "runs"
    ms = shlex.join(mergestore_cmd(args))
    copies = " && ".join(
        fresh_store_cmd(store, runs / f"store-{i}") for i in range(1, args.runs + 1)
    )
    counters = f"echo 1 > {runs}/next-ms && echo 1 > {runs}/next-mk"
    prepare = f"rm -rf {runs} && mkdir -p {runs} && {copies} && {counters}"

    def take(side: str) -> str:
        """Shell: n = this side's next run number (a run past --runs finds no store and fails)."""
        return f"n=$(cat {runs}/next-{side}) && echo $((n + 1)) > {runs}/next-{side} && "

    for method in args.methods.split(","):
        mk_cfg = write_yaml(
            out / f"{method}.{tag}.mergekit.yml",
            with_dtypes(
                method_config(method, str(base_dir), [str(p) for p in expert_dirs]),
                args.config_dtype,
            ),
        )
        ms_cfg = write_yaml(
            out / f"{method}.{tag}.mergestore.yml",
            with_dtypes(method_config(method, "main", names), args.config_dtype),
        )
        ours = (
            f"{take('ms')}MERGESTORE_DIR={runs}/store-$n {ms} merge --config {ms_cfg} -b m "
            f"-m {method} --json --out {runs}/ms-out-$n > {out}/{method}.{tag}.json"
        )
        theirs = f"{take('mk')}mergekit-yaml {mk_cfg} {runs}/mk-out-$n --no-write-model-card"
        line = {"method": method, "mergestore": ours, "mergekit": theirs}
        print(json.dumps({**line, "prepare": prepare, "cleanup": f"rm -rf {runs}"}))
    floor_cfg = write_yaml(
        out / f"floor.{tag}.yml",
        with_dtypes(method_config("task_arithmetic", "main", names), args.config_dtype),
    )
    floor_cmd = f"MERGESTORE_DIR={store} {sys.executable} {__file__} --floor {store} {floor_cfg}"
    print(json.dumps({"method": "floor", "mergestore": floor_cmd}))


def table(rows: list[dict]) -> str:
    lines = [
        "| method | mergestore wall | mergekit wall | speed-up | mergestore peak RSS | "
        "mergekit peak RSS | max abs diff (tensors bit-identical) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        mk = r.get("mk_wall")
        par = r.get("parity")
        if par and "error" not in par:
            p = f"{par['max_abs_diff']:.3g} ({par['tensors_identical']}/{par['tensors']})"
        elif par:
            p = par["error"]
        else:
            p = "random method (not compared)" if r["method"] in RANDOM else "—"
        lines.append(
            f"| {r['method']} | {r['ms_wall']:.1f} s | "
            + (f"{mk:.1f} s | {mk / r['ms_wall']:.1f}× | " if mk else "— | — | ")
            + f"{r['ms_rss'] / 2**30:.2f} GiB | "
            + (f"{r['mk_rss'] / 2**30:.2f} GiB | " if mk else "— | ")
            + f"{p} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--floor":
        floor(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench-0.5g")
    ap.add_argument("--experts", default=DEFAULT_EXPERTS)
    ap.add_argument(
        "--dtype", help="the family's dtype (bfloat16, float16, float32; default: the preset's)"
    )
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "merge"))
    ap.add_argument("--no-mergekit", action="store_true", help="time mergestore only")
    ap.add_argument("--no-refs", action="store_true", help="skip the plain-torch and floor runs")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--code", help="time the mergestore package in this directory instead")
    ap.add_argument(
        "--setup-only", action="store_true", help="generate and commit the family, time nothing"
    )
    ap.add_argument("--config-dtype", help="DTYPE[:OUT_DTYPE] for every config (mergekit's)")
    ap.add_argument("--fp32-norms", action="store_true", help="the family with fp32 norms")
    ap.add_argument(
        "--commands", action="store_true", help="write configs, print the commands to time"
    )
    ap.add_argument(
        "--runs", type=int, default=12, help="--commands: store copies each prepare line makes"
    )
    args = ap.parse_args()
    if args.setup_only:
        setup(args)
        return
    if args.commands:
        print_commands(args)
        return
    t0 = time.perf_counter()
    rows = bench(args)
    meta = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average at the end {loadavg()}; total {time.perf_counter() - t0:.0f} s"
    )
    print(table(rows))
    print(meta)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))


if __name__ == "__main__":
    main()
