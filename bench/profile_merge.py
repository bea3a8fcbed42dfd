"""Where one merge's time goes: wall and CPU seconds per phase, and CPU per pipeline stage.

Usage (the store is changed: give it a copy):
    MERGESTORE_DIR=STORE python bench/profile_merge.py [--json-profile] -- merge --config X.yml ...

Runs the CLI in this process, as the console script does, with timers around the phases:
imports (the CLI up to the merge command), planning (merge.run.prepare: configs, refs, plan,
tasks), the engine (per journal chunk; inside it the CPU time of each pipeline stage, from the
threads' own clocks: read + decode + verify of input blocks, the merge kernel, the output's
hash + encode (the --out folder's pwrites apart) and the writer's pack append), each publish
(pack fsync, then the LMDB transaction) and the folder's finish (the rest of the files, the
rename). Prints one table to stderr (or JSON with --json-profile); the command's own output goes
to stdout as usual.
The timers cost a few microseconds per tensor.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

T0 = time.perf_counter()
CPU0 = time.process_time()

_lock = threading.Lock()
wall: dict[str, float] = defaultdict(float)
cpu: dict[str, float] = defaultdict(float)  # process CPU seconds during a phase (all threads)
stage: dict[str, float] = defaultdict(float)  # CPU seconds of the threads running a stage
count: dict[str, int] = defaultdict(int)


def phase(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn, its wall time and the process's CPU time while it runs added to `name`."""

    def timed(*a: Any, **k: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            with _lock:
                wall[name] += time.perf_counter() - w
                cpu[name] += time.process_time() - c
                count[name] += 1

    return timed


_tls = threading.local()  # the stage the running thread works for


def on_thread(name: str, fn: Callable[..., Any], top: bool = True) -> Callable[..., Any]:
    """fn, the CPU time of the thread running it added to the stage `name`; helper threads it
    starts (ThreadPoolExecutor.submit, patched below) add theirs to the same stage."""

    def timed(*a: Any, **k: Any) -> Any:
        c, before = time.thread_time(), getattr(_tls, "stage", None)
        _tls.stage = name
        try:
            return fn(*a, **k)
        finally:
            _tls.stage = before
            with _lock:
                stage[name] += time.thread_time() - c
                count[name] += top

    return timed


def _patch_submit() -> None:
    from concurrent.futures import ThreadPoolExecutor

    submit = ThreadPoolExecutor.submit

    def staged_submit(self: Any, fn: Callable[..., Any], /, *a: Any, **k: Any) -> Any:
        name = getattr(_tls, "stage", None)
        return submit(self, on_thread(name, fn, top=False) if name else fn, *a, **k)

    ThreadPoolExecutor.submit = staged_submit  # type: ignore[method-assign]


def instrument() -> None:
    from mergestore.merge import engine, outfolder, pieces, run
    from mergestore.store import packs, repo

    _patch_submit()
    run.prepare = phase("planning", run.prepare)
    pieces.run_tasks = phase("engine", pieces.run_tasks)  # journal.compute imports it per call
    E = engine.Engine
    E._load_named = on_thread("read+decode+verify", E._load_named)
    E._merge = on_thread("kernel", E._merge)
    E._prepare_output = on_thread("hash+encode (+folder)", E._prepare_output)
    E._keep = on_thread("pack append", E._keep)
    outfolder.FolderOutput.put = on_thread("folder pwrite", outfolder.FolderOutput.put)
    packs.PackAppender.sync = phase("pack fsync", packs.PackAppender.sync)
    repo.WriteSession.publish = phase("publish (fsync + LMDB)", repo.WriteSession.publish)
    outfolder.FolderOutput.finish = phase("folder finish", outfolder.FolderOutput.finish)


def report(as_json: bool) -> None:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    total_wall, total_cpu = time.perf_counter() - T0, ru.ru_utime + ru.ru_stime
    rows = [("whole process (from interpreter start)", total_wall, total_cpu, None)]
    rows.append(("imports and CLI set-up", wall["imports"], cpu["imports"], None))
    for name in ("planning", "engine", "pack fsync", "publish (fsync + LMDB)", "folder finish"):
        rows.append((name, wall[name], cpu[name], count[name]))
    stages = [(k, v, count[k]) for k, v in stage.items()]
    if as_json:
        out = {
            "phases": [{"phase": n, "wall": w, "cpu": c, "calls": k} for n, w, c, k in rows],
            "engine_stages_cpu": {n: v for n, v, _ in stages},
            "user": ru.ru_utime,
            "sys": ru.ru_stime,
            "peak_rss": ru.ru_maxrss * 1024,
            "threads": os.environ.get("MERGESTORE_THREADS", ""),
            "load": os.getloadavg(),
        }
        print(json.dumps(out), file=sys.stderr)
        return
    print(f"{'phase':44s} {'wall s':>8s} {'CPU s':>8s}  calls", file=sys.stderr)
    for n, w, c, k in rows:
        print(f"{n:44s} {w:8.3f} {c:8.3f}  {'' if k is None else k}", file=sys.stderr)
    print("engine stages (CPU s of the threads running them and their helpers):", file=sys.stderr)
    for n, v, k in stages:
        print(f"  {n:42s} {'':8s} {v:8.3f}  {k}", file=sys.stderr)
    print(
        f"user {ru.ru_utime:.3f} s, sys {ru.ru_stime:.3f} s, peak RSS {ru.ru_maxrss / 1024:.0f}"
        f" MiB, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        file=sys.stderr,
    )


def main() -> None:
    argv = sys.argv[1:]
    as_json = "--json-profile" in argv
    argv = [a for a in argv if a != "--json-profile"]
    if argv and argv[0] == "--":
        argv = argv[1:]
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as cli/entry.py
    from mergestore.cli.main import main as cli_main

    instrument()
    wall["imports"], cpu["imports"] = time.perf_counter() - T0, time.process_time() - CPU0
    sys.argv = ["mergestore", *argv]
    try:
        cli_main()
    except SystemExit:
        pass
    finally:
        report(as_json)


if __name__ == "__main__":
    main()
