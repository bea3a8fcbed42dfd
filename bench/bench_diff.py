"""Benchmark `diff`: two ~1 GB checkpoints sharing about half their blocks.

    flock /tmp/mergestore-bench.lock python bench/bench_diff.py [--preset bench-1g] [--keep]

Generates (or reuses) a base and a `frozen` expert (attention + MLP of the last half of the
layers changed; embeddings, norms, head and the first half bit-identical) under
bench/out/diff/, commits both WITHOUT statistics (so the first diff computes them: cold), then
times a cold diff (computes and keeps statistics), a warm diff (reuses them), and a folder diff
of the uncommitted expert folder. Prints one JSON object; `changed GB/s` is raw bytes of the
changed B blocks per second of diff wall time. Page cache: the packs were just written, so warm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures.family import PRESETS, make_family  # noqa: E402
from mergestore.api import Store  # noqa: E402


def run(preset: str, out: Path, keep: bool) -> dict:
    spec = dataclasses.replace(PRESETS[preset], experts=("frozen",))
    t0 = time.perf_counter()
    fam = make_family(out / f"family-{preset}", spec, reuse=True)
    gen = time.perf_counter() - t0
    store_dir = out / "store"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    store = Store.init(store_dir)
    store.commit(fam.base, message="base", branch="main")
    store.commit(fam.experts["frozen"], message="frozen", branch="frozen", stats=False)
    rows = {}
    # cold on one worker thread first, keeping nothing (so the timed cold run below is cold too)
    from mergestore.diff import diff

    one = diff(store.repo, "main", "frozen", keep=False, workers=1)
    rows["cold_1_worker"] = {
        "seconds": round(one.seconds, 3),
        "changed_GBps": round(one.changed_bytes / one.seconds / 1e9, 3),
        "stats_computed": one.stats_computed,
    }
    folder = str(fam.experts["frozen"])
    for label, b in (("cold", "frozen"), ("warm", "frozen"), ("folder", folder)):
        res = store.diff("main", b)
        tot = res.totals()
        rows[label] = {
            "seconds": round(res.seconds, 3),
            "bytes_read": res.bytes_read,
            "folder_bytes_read": res.folder_bytes_read,
            "changed_bytes": res.changed_bytes,
            "changed_GBps": round(res.changed_bytes / res.seconds / 1e9, 3),
            "stats_computed": res.stats_computed,
            "stats_reused": res.stats_reused,
            "blocks_changed": tot["blocks_changed"],
            "blocks_total": tot["blocks_total"],
        }
    sizes = store.commit_sizes("frozen")
    breakdown = _breakdown(store)
    store.close()
    if not keep:
        shutil.rmtree(store_dir)
    return {
        "preset": preset,
        "model_bytes": sizes["logical_bytes"],
        "generate_seconds": round(gen, 1),
        "threads": os.environ.get("MERGESTORE_THREADS", "default"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **rows,
        "one_thread_ms_per_pair": breakdown,
    }


def _breakdown(store: Store, n: int = 48) -> dict:
    """Where a cold pair's time goes, on one thread: read + decode + verify, then statistics."""
    import torch

    from mergestore.diff import block_stats, read_pair

    repo = store.repo
    a = {t.name: t for t in store.tensors("main")}
    pairs = [
        (bb, ab, t.dtype)
        for t in store.tensors("frozen")
        for bb, ab in zip(t.blocks, a[t.name].blocks, strict=True)
        if bb != ab
    ][:n]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t_read = t_stats = 0.0
    for b, a_id, dtype in pairs:
        t0 = time.perf_counter()
        b_raw, a_raw = read_pair(repo, b, a_id, None)
        t1 = time.perf_counter()
        block_stats(b_raw, a_raw, dtype)
        t_stats += time.perf_counter() - t1
        t_read += t1 - t0
    torch.set_num_threads(threads)
    k = max(1, len(pairs))
    return {"read_decode_verify": round(t_read / k * 1e3, 2), "stats": round(t_stats / k * 1e3, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="bench-1g")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "diff"))
    p.add_argument("--keep", action="store_true", help="keep the store afterwards")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    print(json.dumps(run(a.preset, out, a.keep), indent=2))


if __name__ == "__main__":
    main()
