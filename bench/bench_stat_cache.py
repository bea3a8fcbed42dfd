"""The stat cache: commit of an unchanged folder, and a merge naming stored folders.

Sets up a family (base + experts) in a store, then times whole `mergestore` processes, paired
(A B A B ...), medians:
- `commit BASE` of the unchanged base: a stat per file, against `commit --verify-inputs`,
  which reads and hashes every file as every commit did before the stat cache;
- `merge --config` of a YAML naming the folders, against the same YAML with `--verify-inputs`,
  and against the same merge naming the store refs;
- with `--cold`, the input files are dropped from the page cache (posix_fadvise DONTNEED)
  before every run.

    python bench/bench_stat_cache.py --preset bench-0.5g --experts dense_small,frozen \\
        --work /tmp/statcache-bench --runs 5 [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run  # noqa: E402

from fixtures.family import PRESETS, make_family  # noqa: E402


def drop_cache(folders: list[Path]) -> None:
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--experts", default="dense_small,frozen")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold", action="store_true")
    args = ap.parse_args()
    import dataclasses

    spec = dataclasses.replace(PRESETS[args.preset], experts=tuple(args.experts.split(",")))
    fam = make_family(args.work / "fam", spec, reuse=True)
    old = time.time_ns() - 60 * 10**9  # out of the racy window
    for p in fam.root.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(old, old))
    store = args.work / "store"
    shutil.rmtree(store, ignore_errors=True)
    ms = ["mergestore"]
    s = ["--store", str(store)]
    run([*ms, "init", str(store)])
    run([*ms, *s, "commit", str(fam.base), "-m", "base", "-b", "main"])
    for name, path in fam.experts.items():
        run([*ms, *s, "commit", str(path), "-m", name, "-b", name, "--base", "main"])
    names = list(fam.experts)
    yml_paths = args.work / "paths.yml"
    yml_refs = args.work / "refs.yml"
    for yml, base, models in (
        (yml_paths, str(fam.base), [str(p) for p in fam.experts.values()]),
        (yml_refs, "main", names),
    ):
        lines = ["merge_method: task_arithmetic", f"base_model: {base}", "dtype: bfloat16"]
        lines += ["models:"] + [f"  - model: {m}\n    parameters: {{weight: 0.5}}" for m in models]
        yml.write_text("\n".join(lines) + "\n")
    commit = [*ms, *s, "commit", str(fam.base), "-b", "main"]
    # Repeated merges are memo hits (the same plan): these rows time what comes before the
    # merge itself, resolving and committing the inputs. Add "--force" here to time it too.
    merge = [*ms, *s, "merge", "-b", "out", "--config"]
    cases = {
        "commit unchanged (stat cache)": commit,
        "commit --verify-inputs": [*commit, "--verify-inputs"],
        "merge YAML of folders (stat cache)": [*merge, str(yml_paths)],
        "merge YAML of folders --verify-inputs": [*merge, str(yml_paths), "--verify-inputs"],
        "merge YAML of refs": [*merge, str(yml_refs)],
    }  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in cases}
    folders = [fam.base, *fam.experts.values()]
    env = dict(os.environ, MERGESTORE_PROGRESS="0")
    for _ in range(args.runs + 1):  # the first round warms up and is not counted
        for name, cmd in cases.items():
            if args.cold:
                drop_cache(folders)
            m = run([*cmd, "--json"], env=env)
            times[name].append(m.wall)
    out = {
        "family_bytes_per_model": sum(p.stat().st_size for p in fam.base.rglob("*") if p.is_file()),
        "cold": args.cold,
        "runs": args.runs,
        "median_wall_s": {k: round(statistics.median(v[1:]), 3) for k, v in times.items()},
        "load": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
