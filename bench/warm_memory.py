"""Touch most of the machine's free memory once, then give it back, before any benchmark.

On a freshly booted VM, guest memory that was never used costs the hypervisor a first-touch
fault: writing 400 MiB to a new file took 0.96 CPU-s there and 0.08 s once the pages had been
used before (docs/benchmarks.md, "Before measuring"). Every process that allocates or fills the
page cache pays it, mergekit as well as mergestore, so timings taken before this differ from
later ones by chance. Run once per boot:

    python bench/warm_memory.py [--leave-gib 2]
"""

from __future__ import annotations

import argparse
import mmap
import os
import time

GIB = 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leave-gib", type=float, default=2.0, help="memory to leave untouched")
    args = ap.parse_args()
    chunks = int((available_bytes() - args.leave_gib * GIB) // GIB)
    t0 = time.perf_counter()
    maps = []
    for _ in range(max(chunks, 0)):
        m = mmap.mmap(-1, GIB)
        for off in range(0, GIB, PAGE):
            m[off] = 1
        maps.append(m)
    for m in maps:
        m.close()
    print(f"touched {len(maps)} GiB in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
