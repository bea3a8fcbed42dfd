"""Remote benchmark: push, fetch, lazy clones over loopback to a real SeaweedFS S3 server.

    python bench/bench_remote.py [--preset bench-1g] [--work DIR] [--runs 3]
        [--out bench/out/remote.json] [--keep] [--lock FILE]

With --lock, the family and the source store are made first and FILE is held (flock) only
while timing.

A family (base + dense_small + lowrank_attn of the preset) goes into a store: base and
dense_small first. Every timed step is a whole process (`python -m mergestore.cli.main ...`,
or this script's own raw client steps), cold interpreter, page cache warm:

- push: `push rN main ds` to a fresh prefix, against `raw-put`: obstore's own multipart put
  (16 MiB parts, 8 concurrent) of the same bytes (the store's pack files) in one process;
- fetch: `clone URL DST` (full: GET, verify every block by id, write local packs, fsync,
  publish) against two yardsticks: `raw-get`, obstore's GET of those bytes as one object into
  memory (the issue's), and `raw-get-file`, the same GET streamed into a new file and fsynced
  (what any durable download of those bytes costs: the disk);
  push/fetch and raw runs alternate (A B A B ..., A B C for fetch), medians and each pair's
  ratio are kept;
- a push after one new fine-tune (lowrank_attn): bytes sent vs that commit's new stored bytes;
- `clone --lazy`: time and bytes;
- `checkout --tensor X` in a lazy clone (X the largest tensor dense_small changed): bytes
  fetched vs X's stored bytes (with delta references);
- a 10%-budget task_arithmetic merge of ds and la in a fresh lazy clone: `bytes_fetched` vs
  the plan's `expert_bytes_read` (+ `base_bytes_read`).
The work folder is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "remote"))
BUCKET = "bench"
PART = 16 << 20
CONCURRENCY = 8


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _store(endpoint: str):  # type: ignore[no-untyped-def]
    from obstore.store import S3Store

    return S3Store(
        BUCKET,
        endpoint=endpoint,
        region="us-east-1",
        client_options={"allow_http": True},
    )


def raw_put(endpoint: str, key: str, files: list[str]) -> None:
    """One process: obstore multipart put of these files' bytes as one object."""
    import obstore

    def chunks():
        for f in files:
            with open(f, "rb") as fh:
                while True:
                    b = fh.read(PART)
                    if not b:
                        break
                    yield b

    t = time.perf_counter()
    obstore.put(_store(endpoint), key, chunks(), chunk_size=PART, max_concurrency=CONCURRENCY)
    print(json.dumps({"seconds": time.perf_counter() - t}))


def raw_get(endpoint: str, key: str) -> None:
    """One process: obstore GET of one object into memory."""
    import obstore

    t = time.perf_counter()
    n = 0
    for chunk in obstore.get(_store(endpoint), key).stream(min_chunk_size=PART):
        n += len(chunk)
    print(json.dumps({"seconds": time.perf_counter() - t, "bytes": n}))


def raw_get_file(endpoint: str, key: str, path: str) -> None:
    """One process: obstore GET of one object streamed into a new file, then fsync."""
    import obstore

    t = time.perf_counter()
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in obstore.get(_store(endpoint), key).stream(min_chunk_size=PART):
            n += os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    print(json.dumps({"seconds": time.perf_counter() - t, "bytes": n}))


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, dict]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()[-2000:]}")
    try:
        out = json.loads(r.stdout)
    except ValueError:
        out = {}
    return wall, out


def ms(*args: object) -> list[str]:
    return [sys.executable, "-m", "mergestore.cli.main", *map(str, args)]


def me(*args: object) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def new_stored_bytes(store, new: str, old: list[str]) -> int:  # type: ignore[no-untyped-def]
    from mergestore.usage import new_stored_bytes as stored

    return stored(store.repo, store.resolve(new), [store.resolve(r) for r in old])


def paired(
    runs: int,
    ours: Callable[[int], tuple[float, int]],
    raw: Callable[[], float],
    raw_bytes: int,
    names: tuple[str, str],
    also: tuple[str, Callable[[], float]] | None = None,
) -> dict | None:
    """`runs` alternating pairs: our command (ours(i) -> seconds, bytes moved), then the raw
    object-store transfer of the same packs (raw() -> seconds); rates, per-pair ratios, load.
    `names`: what ours is called and which raw transfer ("push", "put"); `also`: a second raw
    transfer (name, timer) timed in the same turn, its ratios kept apart."""
    if not runs:
        return None
    ours_t: list[float] = []
    raw_t: list[float] = []
    also_t: list[float] = []
    moved = 0
    for i in range(runs):
        w, moved = ours(i)
        ours_t.append(w)
        raw_t.append(raw())
        if also:
            also_t.append(also[1]())
            print(f"raw {also[0]} {raw_bytes / also_t[-1] / 2**20:.1f} MiB/s", flush=True)
        print(f"{names[0]} {moved / ours_t[-1] / 2**20:.1f} MiB/s, raw {names[1]} "
              f"{raw_bytes / raw_t[-1] / 2**20:.1f} MiB/s", flush=True)  # fmt: skip
    ratios = [(moved / o) / (raw_bytes / r) for o, r in zip(ours_t, raw_t, strict=True)]
    out = {
        "bytes": moved,
        "seconds": ours_t,
        f"raw_{names[1]}_bytes": raw_bytes,
        f"raw_{names[1]}_seconds": raw_t,
        "mib_s": moved / statistics.median(ours_t) / 2**20,
        "raw_mib_s": raw_bytes / statistics.median(raw_t) / 2**20,
        "ratio_pairs": ratios,
        "load": loadavg(),
        "ratio_median": statistics.median(ratios),
    }
    if also:
        also_ratios = [(moved / o) / (raw_bytes / r) for o, r in zip(ours_t, also_t, strict=True)]
        out[f"raw_{also[0]}_seconds"] = also_t
        out[f"raw_{also[0]}_mib_s"] = raw_bytes / statistics.median(also_t) / 2**20
        out[f"ratio_pairs_{also[0]}"] = also_ratios
        out[f"ratio_median_{also[0]}"] = statistics.median(also_ratios)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    rp = sub.add_parser("raw-put")
    rp.add_argument("endpoint")
    rp.add_argument("key")
    rp.add_argument("files", nargs="+")
    rg = sub.add_parser("raw-get")
    rg.add_argument("endpoint")
    rg.add_argument("key")
    rf = sub.add_parser("raw-get-file")
    rf.add_argument("endpoint")
    rf.add_argument("key")
    rf.add_argument("path")
    p.add_argument("--preset", default="bench-1g")
    p.add_argument("--work", default="/work/scratch/i16/bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "remote.json"))
    p.add_argument("--keep", action="store_true")
    p.add_argument("--lock", help="flock this file while timing (a shared machine's bench lock)")
    p.add_argument("--family", help="an existing family folder to use (made by fixtures.family)")
    p.add_argument(
        "--bytes-only",
        action="store_true",
        help="only the byte counts (no throughput timing, so no lock needed)",
    )
    a = p.parse_args()
    if a.cmd == "raw-put":
        return raw_put(a.endpoint, a.key, a.files)
    if a.cmd == "raw-get":
        return raw_get(a.endpoint, a.key)
    if a.cmd == "raw-get-file":
        return raw_get_file(a.endpoint, a.key, a.path)
    run(a)


def run(a: argparse.Namespace) -> None:
    from seaweed import start_seaweed

    from fixtures.family import PRESETS, make_family
    from mergestore.api import Store

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"preset": a.preset, "load_start": loadavg(), "cpus": os.cpu_count()}
    spec = dataclasses.replace(PRESETS[a.preset], experts=("dense_small", "lowrank_attn"))
    fam = make_family(Path(a.family) if a.family else work / "fam", spec, reuse=True)
    server = start_seaweed(work / "seaweed", bucket=BUCKET)
    env = {
        **os.environ,
        "MERGESTORE_PROGRESS": "0",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
    }
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    ep = server.endpoint
    try:
        src = work / "src"
        shutil.rmtree(src, ignore_errors=True)
        s = Store.init(src)
        s.commit(fam.base, message="base")
        s.commit(fam.experts["dense_small"], message="ds", branch="ds", base="main")
        packs = sorted(str(f) for f in (src / "packs").glob("pack-*.pack"))
        pack_bytes = sum(os.path.getsize(f) for f in packs)
        res["family_raw_bytes"] = sum(
            f.stat().st_size for d in (fam.base, fam.experts["dense_small"]) for f in d.iterdir()
        )
        res["stored_bytes"] = pack_bytes
        s.close()
        if a.lock and not a.bytes_only:
            import fcntl

            lock_fd = os.open(a.lock, os.O_RDWR | os.O_CREAT, 0o644)
            print("waiting for the bench lock", flush=True)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # released when the process exits
            res["load_start"] = loadavg()
            print(f"timing; load {res['load_start']}", flush=True)

        def url(prefix: str) -> str:
            return f"s3://{BUCKET}/{prefix}?endpoint={ep}"

        # --- push vs raw put, alternating ---
        if a.bytes_only:
            subprocess.run(ms("--store", src, "remote", "add", "r0", url("p0")), env=env,
                           check=True, capture_output=True)  # fmt: skip
            _w, out = timed(ms("--store", src, "push", "r0", "main", "ds", "--json"), env)
            res["first_push"] = {"block_bytes": out["block_bytes"], "pack_bytes": out["pack_bytes"]}

        def push(i: int) -> tuple[float, int]:
            subprocess.run(ms("--store", src, "remote", "add", f"r{i}", url(f"p{i}")), env=env,
                           check=True, capture_output=True)  # fmt: skip
            w, out = timed(ms("--store", src, "push", f"r{i}", "main", "ds", "--json"), env)
            return w, out["pack_bytes"]

        def raw(*args: object) -> float:
            return timed(me(*args), env)[0]

        runs = 0 if a.bytes_only else a.runs
        res["push"] = paired(runs, push, lambda: raw("raw-put", ep, "raw/0", *packs), pack_bytes,
                             ("push", "put"))  # fmt: skip

        # --- a second push sends nothing ---
        _w, out = timed(ms("--store", src, "push", "r0", "main", "ds", "--json"), env)
        res["second_push_block_bytes"] = out["block_bytes"]

        # --- fetch (full clone) vs raw get (into memory; into a file, fsynced), alternating ---
        def clone(i: int) -> tuple[float, int]:
            dst = work / f"clone{i}"
            shutil.rmtree(dst, ignore_errors=True)
            w, out = timed(ms("clone", url("p0"), dst, "--json"), env)
            shutil.rmtree(dst, ignore_errors=True)
            return w, out["block_bytes"] + out["metadata_bytes"]

        def raw_to_file() -> float:
            path = work / "raw-get-file"
            path.unlink(missing_ok=True)
            w = raw("raw-get-file", ep, "raw/0", path)
            path.unlink()
            return w

        res["fetch"] = paired(runs, clone, lambda: raw("raw-get", ep, "raw/0"), pack_bytes,
                              ("clone", "get"), also=("get_file", raw_to_file))  # fmt: skip

        # --- a push after one new fine-tune ---
        s = Store.open(src)
        s.commit(fam.experts["lowrank_attn"], message="la", branch="la", base="main")
        want = new_stored_bytes(s, "la", ["main", "ds"])
        s.close()
        w, out = timed(ms("--store", src, "push", "r0", "la", "--json"), env)
        res["push_one_fine_tune"] = {
            "commit_new_stored_bytes": want,
            "block_bytes_sent": out["block_bytes"],
            "metadata_bytes": out["metadata_bytes"],
            "ratio": out["block_bytes"] / want if want else None,
            "seconds": w,
        }

        # --- lazy clone ---
        lazy = work / "lazy"
        shutil.rmtree(lazy, ignore_errors=True)
        w, out = timed(ms("clone", "--lazy", url("p0"), lazy, "--json"), env)
        res["lazy_clone"] = {
            "seconds": w,
            "metadata_bytes": out["metadata_bytes"],
            "blocks_left_on_remote": out["blocks_left_on_remote"],
            "local_pack_bytes": sum(f.stat().st_size for f in (lazy / "packs").glob("*")),
        }

        # --- checkout --tensor X in the lazy clone ---
        code = (
            "import json,sys\n"
            "from mergestore.api import Store\n"
            "s=Store.open(sys.argv[1])\n"
            "base={t.name:t.blocks for t in s.tensors('main')}\n"
            "ch=[t for t in s.tensors('origin/ds') if t.blocks!=base.get(t.name)]\n"
            "x=max(ch,key=lambda t:t.nbytes)\n"
            "seen=set();st=0\n"
            "for b in x.blocks:\n"
            "  if b in seen: continue\n"
            "  seen.add(b);loc=s.repo.block_location(b);st+=loc.length\n"
            "  if loc.ref and loc.ref not in seen:\n"
            "    seen.add(loc.ref);st+=s.repo.block_location(loc.ref).length\n"
            "s.checkout('origin/ds',sys.argv[2],tensors=[x.name])\n"
            "print(json.dumps({'tensor':x.name,'tensor_bytes':x.nbytes,'stored_bytes':st,"
            "'bytes_fetched':s.bytes_fetched}))\n"
            "s.close()\n"
        )
        w, out = timed([sys.executable, "-c", code, str(lazy), str(work / "one")], env)
        out["seconds"] = w
        out["ratio"] = out["bytes_fetched"] / out["stored_bytes"]
        res["lazy_checkout_tensor"] = out

        # --- a 10%-budget task_arithmetic merge in a fresh lazy clone ---
        lazy2 = work / "lazy2"
        shutil.rmtree(lazy2, ignore_errors=True)
        timed(ms("clone", "--lazy", url("p0"), lazy2, "--json"), env)
        merge = ["merge", "--method", "task_arithmetic", "--base", "main", "origin/ds"]
        merge += ["origin/la", "-w", "0.5", "-w", "0.5", "--budget", "10%", "-b", "m", "--json"]
        w, out = timed(ms("--store", lazy2, *merge), env)
        res["lazy_budget_merge"] = {
            "seconds": w,
            "bytes_fetched": out["bytes_fetched"],
            "expert_bytes_read": out["expert_bytes_read"],
            "base_bytes_read": out["base_bytes_read"],
            "expert_bytes_full": out["expert_bytes_full"],
            "fetched_over_read": out["bytes_fetched"]
            / (out["expert_bytes_read"] + out["base_bytes_read"]),
        }
        res["load_end"] = loadavg()
    finally:
        server.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
