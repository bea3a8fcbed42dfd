"""How much new memory costs on this machine right now: one JSON line to quote beside a set.

On the 2-core VM the balloon device hands free guest memory back to the host (free page
reporting), and touching it again costs a host fault: the same merge's sys time moved from
0.5 s to 2.3 s between sets (docs/benchmarks.md, issue 14 session 8). mergestore and mergekit
touch different amounts of new memory, so a set's ratio moves with this state. Run this before
and after a set and quote both lines:

    python bench/vm_probe.py [--dir DIR] [--mib 64]

- anon_gb_s: new anonymous memory written once, every byte (as a buffer's first fill);
- page_cache_gb_s: a new file of the same size written in DIR (the page cache, no fsync);
- reported_gib: memory reported to the host since boot (None if the kernel has no counter);
- free_gib: MemFree.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import tempfile
import time

REPORTED = "/sys/module/page_reporting/parameters/reported_kib"


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reported() -> float | None:
    try:
        with open(REPORTED) as f:
            return int(f.read()) / (1 << 20)
    except (OSError, ValueError):
        return None


def anon_rate(nbytes: int) -> float:
    """GB/s of writing new anonymous memory (every byte, as a buffer's first fill does)."""
    m = mmap.mmap(-1, nbytes)
    chunk = b"\1" * (1 << 20)
    t0 = time.perf_counter()
    for off in range(0, nbytes, len(chunk)):
        m[off : off + len(chunk)] = chunk
    dt = time.perf_counter() - t0
    m.close()
    return nbytes / dt / 1e9


def page_cache_rate(folder: str, nbytes: int) -> float:
    """GB/s of writing a new file (new page-cache pages, no fsync)."""
    chunk = b"\1" * (1 << 20)
    fd, path = tempfile.mkstemp(dir=folder, prefix=".vm-probe-")
    try:
        t0 = time.perf_counter()
        for _ in range(nbytes // len(chunk)):
            os.write(fd, chunk)
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return nbytes / dt / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=".", help="a folder on the disk the benchmark writes to")
    ap.add_argument("--mib", type=int, default=64)
    args = ap.parse_args()
    n = args.mib << 20
    reported = _reported()
    print(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "anon_gb_s": round(anon_rate(n), 2),
                "page_cache_gb_s": round(page_cache_rate(args.dir, n), 2),
                "reported_gib": None if reported is None else round(reported, 1),
                "free_gib": round(_meminfo("MemFree") / (1 << 30), 1),
                "mib": args.mib,
            }
        )
    )


if __name__ == "__main__":
    main()
