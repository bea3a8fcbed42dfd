"""Where a full clone's time goes: each part of `clone URL DST` measured alone, in one process.

    python bench/bench_clone_parts.py URL WORK_DIR [--runs 3]

URL is a remote a full store was pushed to (bench/bench_remote.py's `p0` prefix, say);
WORK_DIR gets a throwaway clone, removed at the end. Parts, each timed wall and CPU (this
process's user + system, all threads):

- imports: the modules `clone` loads (in a fresh interpreter, so nothing is cached);
- refs+indexes: the format marker, the refs, the pack indexes and object bundles;
- download: every batch the clone would fetch (remote/download.py's plan), ranged GETs, into
  memory, nothing else;
- check: decode and blake3 every fetched block against its id (check_fetched, on every core),
  from the payloads in memory, and the same on one thread (the CPU floor);
- write: the payloads appended to local packs (page cache), no fsync;
- fsync: the packs' fsync after that write;
- publish: the LMDB transactions of the batches (index entries only; the packs are synced).

Run it under the bench lock; it prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Timer:
    def __init__(self, out: dict[str, Any], name: str) -> None:
        self.out, self.name = out, name

    def __enter__(self) -> Timer:
        self.w, self.c = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.setdefault(self.name, []).append(
            {"wall": round(time.perf_counter() - self.w, 3), "cpu": round(_cpu() - self.c, 3)}
        )


def imports() -> dict[str, float]:
    code = (
        "import resource,time;t=time.perf_counter()\n"
        "import mergestore.cli.commands_remote, mergestore.remote.api, mergestore.remote.download\n"
        "from mergestore.lazy_numpy import np; np.empty(1)\n"
        "r=resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(time.perf_counter()-t, r.ru_utime+r.ru_stime)"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    whole = time.perf_counter() - t
    wall, cpu = map(float, out.stdout.split())
    return {"imports_wall": round(wall, 3), "process_cpu": round(cpu, 3), "process_wall": whole}


def one_run(url: str, work: Path, res: dict[str, Any]) -> None:
    from mergestore.remote import download
    from mergestore.remote.client import ObjectClient
    from mergestore.remote.fetch import read_remote_refs
    from mergestore.remote.layout import FORMAT_KEY
    from mergestore.remote.state import RemoteState
    from mergestore.remote.url import parse_url
    from mergestore.remote.verify import RawArena, check_fetched
    from mergestore.remote.walk import closure
    from mergestore.store.codecs import Encoded
    from mergestore.store.repo import Repository, StoreConfig

    dst = work / "parts-clone"
    shutil.rmtree(dst, ignore_errors=True)
    repo = Repository.init(dst, StoreConfig())
    client = ObjectClient(parse_url(url), "origin")
    with Timer(res, "refs_indexes"):
        client.get(FORMAT_KEY)
        refs = read_remote_refs(client)
        state = RemoteState(dst, "origin")
        state.sync(client)
        clos = closure(refs.values(), state.objects.get, lambda _o: False, "origin")
    need = download._needed(repo, state, clos.blocks)
    batches = download.plan_batches(need, download.fetch_chunk())
    res["batches"] = len(batches)
    with Timer(res, "download"):
        fetched = [download._get_batch(client, b) for b in batches]
    arena = RawArena()
    with Timer(res, "check"):
        for items in fetched:
            check_fetched(repo, "origin", items, arena)
    os.environ["MERGESTORE_THREADS"] = "1"
    with Timer(res, "check_one_thread"):
        for items in fetched:
            check_fetched(repo, "origin", items, arena)
    del os.environ["MERGESTORE_THREADS"]
    sessions = []
    with Timer(res, "write"):
        for items in fetched:
            w = repo.writer().__enter__()
            for _p, e, payload in items:
                w.add_encoded(e.block, e.raw_len, Encoded(e.spec, payload, e.ref))
            sessions.append(w)
    with Timer(res, "fsync"):
        for w in sessions:
            w._appender.sync()
    with Timer(res, "publish"):
        for w in sessions:
            w.publish()
            w.__exit__(None, None, None)
    res["stored_bytes"] = sum(e.length for items in fetched for _p, e, _b in items)
    res["raw_bytes"] = sum(e.raw_len for items in fetched for _p, e, _b in items)
    repo.close()
    shutil.rmtree(dst, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("work")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"load_start": os.getloadavg()}
    res["imports"] = [imports() for _ in range(a.runs)]
    for _ in range(a.runs):
        one_run(a.url, work, res)
    res["load_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
