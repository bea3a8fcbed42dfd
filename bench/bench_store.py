"""Store benchmark: commit and checkout throughput (warm and cold page cache), dedup, ratio, RSS.

Usage:
    python bench/bench_store.py [--preset bench-1g] [--out bench/out/store.json] [--repeat 3]
        [--code DIR] [--label NAME] [--before bench/out/store-before.json] [--write-docs]

Builds (or reuses) a fixtures family under bench/out/ plus a >= 2 GB single checkpoint, then
times the real command line (`python -m mergestore.cli.main --store S commit ... --json`), one
subprocess per operation, so each operation's peak RSS comes from os.wait4 on that child alone.

- Throughput is logical bytes / the command's own "seconds" (commit: scan, read, hash, encode,
  append, fsync, publish; checkout: read, decode, verify, write). "wall" adds interpreter start-up
  and imports. Warm runs report the best of --repeat (other jobs share this 2-core machine; the
  load average at the start of each run is recorded), cold runs the best of --repeat as well.
- Cold: the inputs (commit: checkpoint files; checkout: pack files and the LMDB index) are
  fsynced and evicted with posix_fadvise(DONTNEED); residency is checked with mincore(2), and
  /proc/sys/vm/drop_caches is used only if fadvise left pages behind. The method that worked is
  recorded.
- --code DIR runs the CLI (and the in-process ceilings) from another source tree, for before/after
  comparisons; --before renders a before/after table against an earlier JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import measure  # noqa: E402  (bench/measure.py)

OUT_DIR = ROOT / "bench" / "out"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- section:store -->", "<!-- /section:store -->"
GB = 1e9

# ----- page cache ----------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache (mincore over a read-only mapping)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(b & 1 for b in bytes(vec)) * _PAGE
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def files_under(*paths: Path) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
    return out


def evict(paths: list[Path]) -> dict:
    """Drop `paths` from the page cache; returns how, and what stayed resident."""
    total = sum(p.stat().st_size for p in paths)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    left = sum(resident_bytes(p) for p in paths)
    method = "fadvise"
    if left > 0.01 * total:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            method = "fadvise+drop_caches"
        except OSError:
            method = "fadvise (drop_caches not permitted)"
        left = sum(resident_bytes(p) for p in paths)
    return {"method": method, "bytes": total, "resident_after": left}


def warm(paths: list[Path]) -> None:
    buf = bytearray(8 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_under(path))


# ----- running the CLI -----------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    result: dict
    wall: float
    max_rss: int
    user: float
    sys: float
    load: float

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def _env(code: str | None) -> dict[str, str]:
    env = os.environ.copy()
    env.pop("MERGESTORE_FAULT", None)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    return env


def measured(cmd: list[str], code: str | None) -> tuple[bytes, float, int, float, float]:
    """Run `cmd`; (stdout, wall seconds, peak RSS bytes, user s, sys s) of that process alone
    (bench/measure.py)."""
    with tempfile.TemporaryFile() as err:
        try:
            m = measure.run(cmd, env=_env(code), stderr=err)
        except RuntimeError as e:
            err.seek(0)
            raise RuntimeError(f"{e}: {err.read().decode()}") from None
    return m.stdout, m.wall, m.rss, m.user, m.system


def cli(args: list[str], code: str | None) -> Run:
    """One mergestore command in its own process, with its own peak RSS and CPU time."""
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "mergestore.cli.main", *args, "--json"]
    out, wall, rss, user, system = measured(cmd, code)
    return Run(json.loads(out), wall, rss, user, system, load)


def startup(code: str | None) -> tuple[int, float]:
    """Peak RSS and CPU seconds of a process that only imports the CLI (the floor under every
    command), best of 3 for the CPU time."""
    runs = [measured([sys.executable, "-c", "import mergestore.cli.main"], code) for _ in range(3)]
    return max(r[2] for r in runs), min(r[3] + r[4] for r in runs)


def fresh_store(path: Path, code: str | None) -> None:
    if path.exists():
        shutil.rmtree(path)
    cli(["--store", str(path), "init"], code)


# ----- inputs --------------------------------------------------------------------------------


def build_inputs(preset: str) -> tuple[object, Path]:
    """The family (reused if present) and a >= 2 GB base-only checkpoint for the RSS run."""
    from fixtures.family import PRESETS, make_family, model_bytes

    t0 = time.perf_counter()
    fam = make_family(OUT_DIR / f"family-{preset}", PRESETS[preset], reuse=True)
    spec = dataclasses.replace(PRESETS["bench-1g"], experts=())
    while model_bytes(spec) < 2 * GB:
        spec = dataclasses.replace(spec, n_layers=spec.n_layers + 1)
    big = make_family(OUT_DIR / "big-2g", spec, reuse=True)
    print(f"# inputs ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return fam, big.base


def changed_bytes(base: Path, expert: Path) -> dict:
    """Bytes of the expert that differ from the base: by tensor, and by 1 MiB store block."""
    from mergestore.formats.checkpoint import scan_checkpoint
    from mergestore.formats.safetensors import DTYPE_SIZES
    from mergestore.store.blocks import tensor_blocking

    def tensors(path: Path) -> dict:
        out = {}
        for f in scan_checkpoint(path).files:
            if f.header is None:
                continue
            for t in f.header.tensors:
                out[t.name] = (f.abspath, f.header.data_start + t.begin, t)
        return out

    a, b = tensors(base), tensors(expert)
    by_tensor = by_block = total = 0
    for name, (path_b, off_b, tb) in b.items():
        size = tb.end - tb.begin
        total += size
        if name not in a:
            by_tensor += size
            by_block += size
            continue
        path_a, off_a, _ta = a[name]
        with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
            fa.seek(off_a)
            fb.seek(off_b)
            da, db = fa.read(size), fb.read(size)
        if da == db:
            continue
        by_tensor += size
        blocking = tensor_blocking(tb.shape, DTYPE_SIZES[tb.dtype], 1 << 20)
        for r0, r1 in blocking.ranges():
            if da[r0:r1] != db[r0:r1]:
                by_block += r1 - r0
    return {"tensor_bytes": total, "changed_tensors": by_tensor, "changed_blocks": by_block}


def same_files(a: Path, b: Path) -> bool:
    import blake3

    fa, fb = files_under(a), files_under(b)
    if [p.relative_to(a) for p in fa] != [p.relative_to(b) for p in fb]:
        return False
    for x, y in zip(fa, fb, strict=True):
        hx = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hx.update_mmap(x)
        hy = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hy.update_mmap(y)
        if hx.digest() != hy.digest():
            return False
    return True


# ----- where the time goes -------------------------------------------------------------------


def stage_profile(ckpt: Path, scratch: Path) -> dict:
    """Commit and check out `ckpt` in this process with each stage wrapped in a timer.

    Reports CPU milliseconds per 1 MiB block for each stage (thread CPU time, summed over the
    threads that ran it, so other jobs on the machine hardly change it), and each command's
    own CPU time per GB. Stages nest: "work" contains read, blake3, lookup and encode.
    """
    import threading
    from collections import defaultdict

    import mergestore.checkout as co
    import mergestore.ingest as ing
    from mergestore.store import packs
    from mergestore.store import repo as repomod

    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    lock = threading.Lock()
    undo = []

    def wrap(obj, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def timed(*a, **k):
            c0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    acc[label][0] += time.thread_time() - c0
                    acc[label][1] += 1

        setattr(obj, name, timed)
        undo.append((obj, name, fn))

    def run(what: str, fn) -> dict:
        acc.clear()
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        nblocks = max(1, acc["work"][1]) if "work" in acc else 1
        logical = sum(p.stat().st_size for p in files_under(ckpt))
        out = {k: round(1e3 * v[0] / nblocks, 3) for k, v in sorted(acc.items())}
        out["cpu_s_per_gb"] = round(cpu / (logical / GB), 2)
        out["wall_s"] = round(wall, 2)
        out["load"] = round(os.getloadavg()[0], 2)
        return out

    from mergestore.store.repo import Repository

    store, out = scratch / "profile-store", scratch / "profile-out"
    for p in (store, out):
        if p.exists():
            shutil.rmtree(p)
    repo = Repository.init(store)
    wrap(ing, "read_exact", "read (pread)")
    wrap(ing, "block_id", "blake3")
    wrap(ing.codecs, "encode_block", "encode")
    wrap(repomod.WriteSession, "known", "lookup (LMDB)")
    wrap(ing._Ingest, "work", "work")
    wrap(packs.PackAppender, "append", "append (main thread)")
    wrap(packs.PackAppender, "sync", "fsync (main thread)")
    try:
        warm(files_under(ckpt))
        res = {"commit": run("commit", lambda: ing.commit_checkpoint(repo, ckpt, message="p"))}
        for obj, name, fn in reversed(undo):
            setattr(obj, name, fn)
        undo.clear()
        wrap(repomod.PackReader, "read", "read (pread)")
        wrap(repomod.codecs, "decode_block", "decode")
        wrap(repomod, "block_id", "blake3")
        wrap(co, "_pwrite_all", "write (pwrite)")
        wrap(repomod.Repository, "decode_verified", "work")  # once per block read
        warm(files_under(store))
        cid = repo.resolve("HEAD")
        res["checkout"] = run("checkout", lambda: co.checkout_commit(repo, cid, out))
    finally:
        for obj, name, fn in reversed(undo):
            setattr(obj, name, fn)
        repo.close()
        for p in (store, out):
            if p.exists():
                shutil.rmtree(p)
    return res


def stage_table(stages: dict) -> str:
    lines = ["| stage | CPU ms per 1 MiB block |", "|---|---|"]
    for what, d in stages.items():
        for k, v in d.items():
            if k in ("cpu_s_per_gb", "wall_s", "load"):
                continue
            lines.append(f"| {what}: {k} | {v} |")
        lines.append(
            f"| {what}: whole command, CPU s per GB (load {d['load']}) | {d['cpu_s_per_gb']} |"
        )
    return "\n".join(lines)


# ----- in-process ceilings -------------------------------------------------------------------


def ceilings(ckpt: Path, n_blocks: int = 256) -> dict:
    """What the codecs and blake3 alone do on both cores, on blocks already in memory."""
    from concurrent.futures import ThreadPoolExecutor

    import blake3

    from mergestore.formats.checkpoint import scan_checkpoint
    from mergestore.store import codecs

    blocks = []
    for f in scan_checkpoint(ckpt).files:
        if f.header is None:
            continue
        with open(f.abspath, "rb") as fh:
            for t in f.header.tensors:
                fh.seek(f.header.data_start + t.begin)
                data = fh.read(t.end - t.begin)
                for i in range(0, len(data) - (1 << 20) + 1, 1 << 20):
                    blocks.append((data[i : i + (1 << 20)], t.dtype))
                if len(blocks) >= n_blocks:
                    break
        if len(blocks) >= n_blocks:
            break
    blocks = blocks[:n_blocks]
    nbytes = sum(len(b) for b, _ in blocks)

    def rate(fn, items, threads: int) -> float:
        best = float("inf")
        for _ in range(3):
            with ThreadPoolExecutor(threads) as pool:
                t0 = time.perf_counter()
                list(pool.map(fn, items))
                best = min(best, time.perf_counter() - t0)
        return nbytes / best / GB

    def enc(item):
        return codecs.encode_block(item[0], dtype=item[1], level=3)

    def dec(e):
        return codecs.decode_block(e.spec, e.payload)

    encoded = [enc(b) for b in blocks]
    out = {}
    for n in (1, 2):
        out[f"blake3_{n}t"] = rate(lambda b: blake3.blake3(b[0]).digest(), blocks, n)
        out[f"encode_{n}t"] = rate(enc, blocks, n)
        out[f"hash_encode_{n}t"] = rate(lambda b: (blake3.blake3(b[0]).digest(), enc(b)), blocks, n)
        out[f"decode_{n}t"] = rate(dec, encoded, n)
        out[f"decode_hash_{n}t"] = rate(lambda e: blake3.blake3(dec(e)).digest(), encoded, n)
    out["ratio"] = sum(memoryview(e.payload).nbytes for e in encoded) / nbytes
    return {k: round(v, 3) for k, v in out.items()}


# ----- the benchmark -------------------------------------------------------------------------


def best(runs: list[Run], logical: int) -> dict:
    rates = [logical / r.result["seconds"] / GB for r in runs]
    i = max(range(len(runs)), key=lambda k: rates[k])
    r = runs[i]
    cpu = r.user + r.sys
    return {
        "gbps": round(rates[i], 3),
        "gbps_median": round(statistics.median(rates), 3),
        "seconds": r.result["seconds"],
        "wall": round(r.wall, 3),
        "wall_gbps": round(logical / r.wall / GB, 3),
        "cpu_seconds": round(cpu, 2),
        "cpu_util": round(cpu / r.wall, 2),
        "max_rss_mb": round(r.max_rss / 2**20, 1),
        "load": round(r.load, 2),
        "runs": [r.as_json() for r in runs],
    }


def bench(preset: str, repeat: int, code: str | None, label: str) -> dict:
    fam, big = build_inputs(preset)
    work = OUT_DIR / f"work-{label}"
    work.mkdir(parents=True, exist_ok=True)
    base_files = files_under(fam.base)
    logical = sum(p.stat().st_size for p in base_files)
    res: dict = {"label": label, "preset": preset, "logical_bytes": logical, "code": code}
    log = lambda msg: print(f"# {msg}", file=sys.stderr, flush=True)  # noqa: E731

    def commit(store: Path, path: Path, *extra: str) -> Run:
        return cli(["--store", str(store), "commit", str(path), "-m", path.name, *extra], code)

    # commit, warm: a fresh store per run
    store = work / "store"
    runs = []
    for i in range(repeat):
        fresh_store(store, code)
        warm(base_files)
        runs.append(commit(store, fam.base, "-b", "main"))
        log(f"commit warm {i}: {logical / runs[-1].result['seconds'] / GB:.3f} GB/s")
    res["commit_warm"] = best(runs, logical)
    after_base = dir_bytes(store)
    res["stored_ratio_base"] = round(after_base / logical, 4)

    # second commit of the same checkpoint: what does it add?
    r = commit(store, fam.base, "-b", "main")
    grown = dir_bytes(store) - after_base
    res["second_commit"] = {
        "gbps": round(logical / r.result["seconds"] / GB, 3),
        "written_bytes": r.result["written_bytes"],
        "store_growth_bytes": grown,
        "growth_fraction": round(grown / logical, 6),
        "new_blocks": r.result["new_blocks"],
    }
    log(f"second commit: +{grown} bytes ({grown / logical:.5%})")

    # a partial fine-tune (frozen tensors) committed against the base
    frozen = fam.experts["frozen"]
    ch = changed_bytes(fam.base, frozen)
    before = dir_bytes(store)
    warm(files_under(frozen))
    r = commit(store, frozen, "-b", "frozen", "--base", "main")
    grown = dir_bytes(store) - before
    res["frozen_commit"] = {
        **ch,
        "gbps": round(logical / r.result["seconds"] / GB, 3),
        "written_bytes": r.result["written_bytes"],
        "store_growth_bytes": grown,
        "growth_vs_changed": round(grown / ch["changed_blocks"], 4) if ch["changed_blocks"] else 0,
        "new_blocks": r.result["new_blocks"],
        "stats_computed": r.result["stats_computed"],
    }
    log(f"frozen: +{grown} bytes for {ch['changed_blocks']} changed bytes")

    # the rest of the family, for the family's stored/raw ratio
    family_logical = 2 * logical + dir_bytes(frozen)  # base twice (second commit) + frozen
    for name, path in fam.experts.items():
        if name == "frozen":
            continue
        warm(files_under(path))
        r = commit(store, path, "-b", name, "--base", "main")
        family_logical += dir_bytes(path)
        res.setdefault("expert_commits", {})[name] = {
            "gbps": round(logical / r.result["seconds"] / GB, 3),
            "written_bytes": r.result["written_bytes"],
        }
        log(f"expert {name}: {logical / r.result['seconds'] / GB:.3f} GB/s")
    distinct_logical = family_logical - logical  # the second base commit is the same model
    res["stored_ratio_family"] = round(dir_bytes(store) / distinct_logical, 4)
    res["family_models"] = 1 + len(fam.experts)

    # checkout, warm and cold, of the base and of the frozen expert (delta blocks)
    out = work / "out"
    store_files = files_under(store / "packs", store / "index")
    for ref, key in (("main", "checkout"), ("frozen", "checkout_frozen")):
        for mode in ("warm", "cold"):
            runs, how = [], None
            for i in range(repeat):
                if out.exists():
                    shutil.rmtree(out)
                if mode == "warm":
                    warm(store_files)
                else:
                    how = evict(store_files)
                runs.append(cli(["--store", str(store), "checkout", ref, str(out)], code))
                log(f"{key} {mode} {i}: {logical / runs[-1].result['seconds'] / GB:.3f} GB/s")
                if ref == "main" and mode == "warm" and i == 0:
                    res["checkout_identical"] = same_files(fam.base, out)
            res[f"{key}_{mode}"] = best(runs, logical)
            if how:
                res[f"{key}_{mode}"]["evict"] = how
    if out.exists():
        shutil.rmtree(out)

    # commit, cold: evict the checkpoint's files before each run
    runs = []
    for i in range(repeat):
        fresh_store(store, code)
        how = evict(base_files)
        runs.append(commit(store, fam.base, "-b", "main"))
        log(f"commit cold {i}: {logical / runs[-1].result['seconds'] / GB:.3f} GB/s")
    res["commit_cold"] = {**best(runs, logical), "evict": how}

    # peak RSS while committing (and checking out) a >= 2 GB checkpoint
    big_files = files_under(big)
    big_logical = sum(p.stat().st_size for p in big_files)
    fresh_store(store, code)
    warm(big_files)
    r = commit(store, big, "-b", "main")
    res["big_commit"] = {"logical_bytes": big_logical, **best([r], big_logical)}
    r = cli(["--store", str(store), "checkout", "main", str(out)], code)
    res["big_checkout"] = {"logical_bytes": big_logical, **best([r], big_logical)}
    log(f"big: commit rss {res['big_commit']['max_rss_mb']} MB")
    shutil.rmtree(out)
    shutil.rmtree(store)

    # floor: the interpreter and the CLI's imports alone
    rss, cpu = startup(code)
    res["startup_rss_mb"] = round(rss / 2**20, 1)
    res["startup_cpu_seconds"] = round(cpu, 2)
    res["ceilings"] = ceilings(fam.base)
    try:
        res["stages"] = stage_profile(fam.base, work)
    except (AttributeError, ImportError) as e:  # an older tree (--code) may lack a stage
        res["stages_error"] = str(e)
    return res


# ----- reporting -----------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(
            ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")
        )
        simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except (OSError, StopIteration):
        simd = "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import blake3
    import lmdb
    import zstandard

    return (
        f"{os.cpu_count()} cores {cpu} ({simd}), {mem:.0f} GiB RAM, ext4 on virtio disk, "
        f"Python {platform.python_version()}, blake3 {blake3.__version__}, "
        f"zstandard {zstandard.__version__}, lmdb {lmdb.__version__}"
    )


def _cpu_per_gb(r: dict, key: str) -> float:
    """CPU seconds (user + system) per GB, less the interpreter's start-up and imports: unlike
    GB/s, hardly changed by other jobs competing for the two cores."""
    cpu = r[key]["cpu_seconds"] - r.get("startup_cpu_seconds", 0.0)
    return round(cpu / (r["logical_bytes"] / GB), 2)


ROWS = [
    ("commit, warm (GB/s)", lambda r: r["commit_warm"]["gbps"]),
    ("commit, cold (GB/s)", lambda r: r["commit_cold"]["gbps"]),
    ("commit wall incl. start-up, warm (GB/s)", lambda r: r["commit_warm"]["wall_gbps"]),
    ("commit CPU use, warm (cores)", lambda r: r["commit_warm"]["cpu_util"]),
    ("commit CPU time per GB, warm (s)", lambda r: _cpu_per_gb(r, "commit_warm")),
    (
        "commit on 2 idle cores, bound from CPU time (GB/s)",
        lambda r: round(2 / _cpu_per_gb(r, "commit_warm"), 2),
    ),
    ("load average during commit, warm", lambda r: r["commit_warm"]["load"]),
    ("second commit of the same checkpoint (GB/s)", lambda r: r["second_commit"]["gbps"]),
    (
        "second commit adds (% of its size)",
        lambda r: f"{100 * r['second_commit']['growth_fraction']:.4f}%",
    ),
    ("frozen expert --base: commit (GB/s)", lambda r: r["frozen_commit"]["gbps"]),
    (
        "frozen expert: changed bytes (1 MiB blocks)",
        lambda r: f"{r['frozen_commit']['changed_blocks'] / 1e6:.0f} MB",
    ),
    (
        "frozen expert: store grows by",
        lambda r: (
            f"{r['frozen_commit']['store_growth_bytes'] / 1e6:.0f} MB "
            f"({r['frozen_commit']['growth_vs_changed']:.2f} of changed)"
        ),
    ),
    ("checkout, warm (GB/s)", lambda r: r["checkout_warm"]["gbps"]),
    ("checkout, cold (GB/s)", lambda r: r["checkout_cold"]["gbps"]),
    (
        "checkout of the frozen expert (deltas), warm (GB/s)",
        lambda r: r["checkout_frozen_warm"]["gbps"],
    ),
    ("checkout CPU use, warm (cores)", lambda r: r["checkout_warm"]["cpu_util"]),
    ("checkout CPU time per GB, warm (s)", lambda r: _cpu_per_gb(r, "checkout_warm")),
    (
        "checkout on 2 idle cores, bound from CPU time (GB/s)",
        lambda r: round(2 / _cpu_per_gb(r, "checkout_warm"), 2),
    ),
    ("load average during checkout, warm", lambda r: r["checkout_warm"]["load"]),
    ("stored/raw, base alone", lambda r: r["stored_ratio_base"]),
    ("stored/raw, base + experts", lambda r: r["stored_ratio_family"]),
    ("peak RSS, commit of 1 GB (MB)", lambda r: r["commit_warm"]["max_rss_mb"]),
    (
        "peak RSS, commit of 2 GB (MB)",
        lambda r: (
            f"{r['big_commit']['max_rss_mb']} ({r['big_commit']['logical_bytes'] / 1e9:.2f} GB"
            f", {r['big_commit']['gbps']} GB/s)"
        ),
    ),
    ("peak RSS, checkout of 2 GB (MB)", lambda r: r["big_checkout"]["max_rss_mb"]),
    ("peak RSS, CLI imports alone (MB)", lambda r: r["startup_rss_mb"]),
    ("CPU time of the CLI imports alone (s)", lambda r: r["startup_cpu_seconds"]),
    ("ceiling: blake3 + encode, 2 threads (GB/s)", lambda r: r["ceilings"]["hash_encode_2t"]),
    ("ceiling: decode + blake3, 2 threads (GB/s)", lambda r: r["ceilings"]["decode_hash_2t"]),
]


def table(after: dict, before: dict | None) -> str:
    def cell(fn, r):
        try:
            return str(fn(r))
        except (KeyError, TypeError):
            return "–"

    if before:
        lines = [
            f"| measurement | before ({before['label']}) | after ({after['label']}) |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {cell(fn, before)} | {cell(fn, after)} |" for name, fn in ROWS]
    else:
        lines = ["| measurement | value |", "|---|---|"]
        lines += [f"| {name} | {cell(fn, after)} |" for name, fn in ROWS]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    """Replace the generated part of the store section (between its own markers)."""
    gen_begin, gen_end = "<!-- bench_store:begin -->", "<!-- bench_store:end -->"
    doc = DOCS.read_text()
    start, stop = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    section = doc[start:stop]
    block = f"{gen_begin}\n{text}\n{gen_end}"
    if gen_begin in section:
        a, b = section.index(gen_begin), section.index(gen_end) + len(gen_end)
        section = section[:a] + block + section[b:]
    else:
        section = "\n## Store: commit and checkout\n\n" + block + "\n"
    DOCS.write_text(doc[:start] + section + doc[stop:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="bench-1g")
    p.add_argument("--out", type=Path, default=OUT_DIR / "store.json")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--code", help="source tree to run the CLI from (default: this one)")
    p.add_argument("--label", default="current")
    p.add_argument("--before", type=Path, help="earlier JSON to compare against")
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    p.add_argument("--render", action="store_true", help="only render --out (no measuring)")
    p.add_argument("--profile-only", action="store_true", help="only the in-process stage profile")
    args = p.parse_args()

    sys.path.insert(0, str(Path(args.code).resolve() if args.code else ROOT))
    code = str(Path(args.code).resolve()) if args.code else None
    if args.profile_only:
        fam, _big = build_inputs(args.preset)
        (OUT_DIR / "work-profile").mkdir(parents=True, exist_ok=True)
        print(stage_table(stage_profile(fam.base, OUT_DIR / "work-profile")))
        return 0
    if args.render:
        res = json.loads(args.out.read_text())
    else:
        res = bench(args.preset, args.repeat, code, args.label)
        res["machine"] = machine()
        res["when"] = time.strftime("%Y-%m-%d %H:%M")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    before = json.loads(args.before.read_text()) if args.before else None
    text = table(res, before)
    if "stages" in res:
        text += (
            f"\n\nWhere the time goes ({res['label']}; in-process, thread CPU time per stage):"
            "\n\n" + stage_table(res["stages"])
        )
    print(text)
    if args.write_docs:
        cmd = f"python bench/bench_store.py --preset {res['preset']} --label {res['label']}"
        if before:
            cmd += " --before <earlier json>"
        write_docs(
            f"Machine: {res['machine']}. Measured {res['when']} on a `{res['preset']}` family "
            f"({res['logical_bytes'] / 1e9:.2f} GB per model, {res['family_models']} models).\n\n"
            f"Command: `{cmd}`\n\n{text}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
