"""What merging block by block would save: a probe, not a benchmark of the product.

A merge today decodes each input tensor whole (decode, join, verify), then runs the kernel over
the whole tensors; on a 2-core VM whose memory bandwidth barely grows with the second core
(docs/benchmarks.md, issue 14 session 8), the decoded tensors' trips through memory cost time.
This probe times the two orders on one store and config, for task_arithmetic's bf16 lane kernel
(elementwise, so the two give the same bits; the probe checks that they do):

- whole: every block of every input decoded into its tensor, then the kernel over the tensors;
- per block: block j of every input decoded into a block-sized buffer, then the kernel on it.

Reads go one block at a time in both (`Repository.read_block_into`, verified), so only the order
differs. Tasks whose inputs are not all bf16 of one shape and blocking are skipped.

    MERGESTORE_DIR=STORE python bench/probe_fusion.py STORE CONFIG.yml [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mergestore import native
from mergestore.api import Store
from mergestore.merge.config import load_config
from mergestore.merge.run import prepare
from mergestore.ops.lane16 import gta_divisor, round16


def _eligible(task: Any) -> bool:
    recs = [task.base, *task.inputs]
    if task.base is None or any(r is None for r in recs):
        return False
    first = recs[0]
    return all(
        r.dtype == "BF16" and r.shape == first.shape and len(r.blocks) == len(first.blocks)
        for r in recs
    ) and all(s is None for s in task.selected)


class _Probe:
    def __init__(self, repo: Any, weights: list[float]) -> None:
        self.repo = repo
        self._local = threading.local()
        self.weights = round16(weights, False)
        self.divisor = gta_divisor(self.weights, False)

    def _buffer(self, k: int, n: int) -> np.ndarray:
        """This thread's k-th reused buffer, n bytes (paged in once, as the engine's pool
        keeps its buffers: fresh memory per tensor would be timed too)."""
        bufs = self._local.__dict__.setdefault("bufs", {})
        buf = bufs.get(k)
        if buf is None or len(buf) < n:
            buf = bufs[k] = np.zeros(n, dtype=np.uint8)
        return buf[:n]

    def _kernel(self, out: np.ndarray, base: np.ndarray, rows: list[np.ndarray]) -> None:
        kernels = native.kernels
        assert kernels is not None
        w = self.weights[: len(rows)]
        kernels.gta_sum_bf16(out, base, rows, w, False, self.divisor, False, 1.0, False, False)

    def _read(
        self, bid: bytes, out: np.ndarray, loc: Any, base: tuple[bytes, np.ndarray] | None
    ) -> None:
        """Block `bid` into `out`; `base`: the base's block at this place (id, raw bytes),
        handed in when it is this block's delta reference."""
        ref = base[1] if base is not None and loc.ref == base[0] else None
        self.repo.read_block_into(bid, out, location=loc, reference=ref)

    def whole(self, task: Any) -> bytes:
        recs = [task.base, *task.inputs]
        locs = self.repo.block_locations({b for r in recs for b in r.blocks})
        sizes = [locs[b].raw_len for b in task.base.blocks]
        offs = np.cumsum([0, *sizes])
        arrays = [self._buffer(k, int(offs[-1])) for k in range(len(recs))]
        for j, bid in enumerate(task.base.blocks):
            self._read(bid, arrays[0][offs[j] : offs[j + 1]], locs[bid], None)
        for r, arr in zip(recs[1:], arrays[1:], strict=True):
            for j, bid in enumerate(r.blocks):
                base = (task.base.blocks[j], arrays[0][offs[j] : offs[j + 1]])
                self._read(bid, arr[offs[j] : offs[j + 1]], locs[bid], base)
        out = self._buffer(len(recs), int(offs[-1])).view(np.uint16)
        flat = [a.view(np.uint16) for a in arrays]
        self._kernel(out, flat[0], flat[1:])
        return out.tobytes()

    def per_block(self, task: Any) -> bytes:
        recs = [task.base, *task.inputs]
        locs = self.repo.block_locations({b for r in recs for b in r.blocks})
        sizes = [locs[b].raw_len for b in task.base.blocks]
        out = self._buffer(len(recs), sum(sizes)).view(np.uint16)
        scratch = [self._buffer(k, max(sizes)) for k in range(len(recs))]
        pos = 0
        for j, n in enumerate(sizes):
            bufs = [s[:n] for s in scratch]
            self._read(task.base.blocks[j], bufs[0], locs[task.base.blocks[j]], None)
            base = (task.base.blocks[j], bufs[0])
            for r, buf in zip(recs[1:], bufs[1:], strict=True):
                self._read(r.blocks[j], buf, locs[r.blocks[j]], base)
            flat = [b.view(np.uint16) for b in bufs]
            self._kernel(out[pos : pos + n // 2], flat[0], flat[1:])
            pos += n // 2
        return out.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("config")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    repo = Store.open(Path(args.store)).repo
    cfg = load_config(Path(args.config))
    if cfg.merge_method != "task_arithmetic":
        raise SystemExit("probe_fusion: the config must be a task_arithmetic merge")
    prep = prepare(repo, cfg, commit_paths=False)
    tasks = [t for t in prep.tasks if _eligible(t)]
    if not tasks:
        raise SystemExit("probe_fusion: no tensor whose inputs are all bf16 of one shape")
    weights = [float(p.get("weight", 1.0)) for p in tasks[0].plan.per_input]
    probe = _Probe(repo, weights)
    for t in tasks:  # the same bits in both orders
        if probe.whole(t) != probe.per_block(t):
            raise SystemExit(f"probe_fusion: {t.plan.name}: the two orders differ")
    times: dict[str, list[float]] = {"whole": [], "per_block": []}
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        for _ in range(args.repeat):
            for name in ("whole", "per_block"):
                fn = getattr(probe, name)
                t0 = time.perf_counter()
                for _r in pool.map(fn, tasks):
                    pass
                times[name].append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "tasks": len(tasks),
                "skipped": len(prep.tasks) - len(tasks),
                "threads": args.threads,
                "whole_s": sorted(times["whole"]),
                "per_block_s": sorted(times["per_block"]),
            }
        )
    )


if __name__ == "__main__":
    main()
