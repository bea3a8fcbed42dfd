"""Codec benchmark: ratio and throughput of each chain on synthetic bf16 checkpoints.

    python bench/bench_codecs.py            # 256 MiB per data set, writes bench/out/codecs.md
    python bench/bench_codecs.py --mib 32   # quicker
    python bench/bench_codecs.py --ab /tmp/ms-before --rounds 3   # before/after, interleaved

Data (all bf16, rows of 4096 values cut into ~1 MiB row-aligned blocks like the store does):
- base:       N(0, 0.02 * s_row), s_row = exp(N(0, 0.3)) per row (per-row scale variation)
- heavy:      Student-t (df=4) with the same per-row scales (trained weights have heavier tails)
- ft-small:   base + N(0, 1e-3 * row std)  (a light fine-tune; most words change only low bits)
- ft-large:   base + N(0, 2e-2 * row std)  (a heavy fine-tune)
Fine-tunes are also coded with the base block as the XOR reference.

Throughput is raw (uncompressed) MB/s (1e6 bytes/s): "1T" one thread, wall clock (best of
`--repeat` runs); "MB/s/CPU-s" the same single-thread run divided by the thread's CPU time, which
stays meaningful when other processes share the machine; "2T" a 2-worker thread pool over the
blocks, as the store runs it (wall clock). Decoding is verified against the input.

--ab DIR compares the codecs of another source tree (say `git archive` of an older commit)
with this one: the default chooser on base, heavy, ft-small +ref and ft-large +ref, one
subprocess per tree and round, the trees alternating so both see the same machine load;
MB per CPU-second, median over the rounds. Writes bench/out/codecs-ab.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import numpy as np
import torch
import zstandard

from mergestore.store.codecs import decode_block, encode_block

COLS = 4096
REF_ID = b"\xab" * 32


def to_bf16_bytes(x: np.ndarray) -> bytes:
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().tobytes()


def make_data(mib: int, seed: int = 0) -> dict[str, tuple[bytes, bytes | None]]:
    """name -> (raw bf16 bytes, reference bytes or None)."""
    rng = np.random.default_rng(seed)
    rows = mib * (1 << 20) // (2 * COLS)
    scale = (0.02 * np.exp(rng.normal(0, 0.3, rows))).astype(np.float32)[:, None]
    parts: dict[str, list[bytes]] = {k: [] for k in ("base", "heavy", "ft-small", "ft-large")}
    step = 2048  # rows per generation chunk (32 MiB of float32)
    for r0 in range(0, rows, step):
        s = scale[r0 : r0 + step]
        shape = (len(s), COLS)
        base = rng.standard_normal(shape, dtype=np.float32) * s
        base16 = torch.from_numpy(base).to(torch.bfloat16).float().numpy()
        heavy = rng.standard_t(4, shape).astype(np.float32) * s / np.sqrt(2.0)
        parts["base"].append(to_bf16_bytes(base16))
        parts["heavy"].append(to_bf16_bytes(heavy))
        row_std = base16.std(axis=1, keepdims=True)
        for name, rel in (("ft-small", 1e-3), ("ft-large", 2e-2)):
            noise = rng.standard_normal(shape, dtype=np.float32) * (rel * row_std)
            parts[name].append(to_bf16_bytes(base16 + noise))
    data = {k: b"".join(v) for k, v in parts.items()}
    return {
        "base": (data["base"], None),
        "heavy": (data["heavy"], None),
        "ft-small": (data["ft-small"], None),
        "ft-large": (data["ft-large"], None),
        "ft-small +ref": (data["ft-small"], data["base"]),
        "ft-large +ref": (data["ft-large"], data["base"]),
    }


def blocks(raw: bytes, block_bytes: int) -> list[memoryview]:
    view = memoryview(raw)
    return [view[i : i + block_bytes] for i in range(0, len(raw), block_bytes)]


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """Best wall time, best CPU time of the calling thread, and the last result."""
    wall = cpu = float("inf")
    result = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        result = fn()
        cpu = min(cpu, time.thread_time() - c0)
        wall = min(wall, time.perf_counter() - t0)
    return wall, cpu, result


def run_case(raw, ref, block_bytes, level, allowed, repeat, threads):
    raws = blocks(raw, block_bytes)
    refs = blocks(ref, block_bytes) if ref is not None else [None] * len(raws)

    def enc(i: int):
        kw = {"reference": refs[i], "reference_id": REF_ID} if refs[i] is not None else {}
        return encode_block(raws[i], dtype="BF16", level=level, allowed=allowed, **kw)

    def dec(pair):
        e, r = pair
        return decode_block(e.spec, e.payload, reference=r if e.ref else None)

    idx = range(len(raws))
    t_enc, c_enc, encoded = timed(lambda: [enc(i) for i in idx], repeat)
    pairs = list(zip(encoded, refs, strict=True))
    t_dec, c_dec, decoded = timed(lambda: [dec(p) for p in pairs], repeat)
    if any(d != bytes(r) for d, r in zip(decoded, raws, strict=True)):
        raise AssertionError("decode mismatch")
    with ThreadPoolExecutor(threads) as pool:
        t_enc2, _, _ = timed(lambda: list(pool.map(enc, idx)), repeat)
        t_dec2, _, _ = timed(lambda: list(pool.map(dec, pairs)), repeat)
    stored = sum(len(memoryview(e.payload)) for e in encoded)
    specs = Counter(e.spec for e in encoded)
    mb = len(raw) / 1e6
    return {
        "ratio": stored / len(raw),
        "enc1": mb / t_enc,
        "dec1": mb / t_dec,
        "enc_cpu": mb / c_enc,
        "dec_cpu": mb / c_dec,
        "enc2": mb / t_enc2,
        "dec2": mb / t_dec2,
        "spec": ", ".join(f"{s} ({n})" if len(specs) > 1 else s for s, n in specs.most_common(2)),
    }


CASES = [
    # (label, data sets, level, allowed)
    ("zstd -1", ("base", "ft-small", "ft-large"), 1, frozenset({"zstd"})),
    ("zstd -3", ("base",), 3, frozenset({"zstd"})),
    ("bplane", ("base", "heavy"), 1, frozenset({"bplane"})),
    ("auto", ("base", "heavy", "ft-small", "ft-large"), 1, None),
    ("auto (level 3)", ("base",), 3, None),
    ("auto + XOR ref", ("ft-small +ref", "ft-large +ref"), 1, None),
    ("auto + XOR ref (level 3)", ("ft-small +ref", "ft-large +ref"), 3, None),
]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()} {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, zstandard {zstandard.__version__} (libzstd "
        f"{'.'.join(map(str, zstandard.ZSTD_VERSION))}); 1-min load average at start {load:.2f}"
    )


AB_SETS = ("base", "heavy", "ft-small +ref", "ft-large +ref")


def ab_worker(mib: int, repeat: int) -> None:
    """One tree's figures for the --ab comparison, as JSON on stdout."""
    import json

    import mergestore

    data = make_data(mib)
    out = {"code": str(Path(mergestore.__file__).parents[1])}
    for name in AB_SETS:
        raw, ref = data[name]
        r = run_case(raw, ref, 1 << 20, 3, None, repeat, 1)
        out[name] = {k: r[k] for k in ("ratio", "enc_cpu", "dec_cpu", "spec")}
    print(json.dumps(out))


def ab_compare(old: Path, mib: int, repeat: int, rounds: int, out: Path) -> None:
    import json
    import statistics
    import subprocess
    import sys

    trees = {"before": old.resolve(), "after": Path(__file__).resolve().parents[1]}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    load0 = os.getloadavg()[0]
    for i in range(rounds):
        for label, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=str(tree))
            cmd = [sys.executable, __file__, "--ab-worker", "--mib", str(mib)]
            cmd += ["--repeat", str(repeat)]
            r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            if Path(res["code"]) != tree:
                raise SystemExit(f"{label}: imported mergestore from {res['code']}, not {tree}")
            runs[label].append(res)
            print(f"round {i + 1} {label}: {res}", flush=True)
    lines = [
        f"Machine: {machine()}",
        "",
        f"Command: `python bench/bench_codecs.py --ab {old} --rounds {rounds} --mib {mib} "
        f"--repeat {repeat}`; load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end.",
        "",
        "| data | before ratio | after ratio | before enc | after enc | before dec | after dec "
        "| before chain | after chain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in AB_SETS:
        b = [r[name] for r in runs["before"]]
        a = [r[name] for r in runs["after"]]

        def med(rs: list[dict], key: str) -> float:
            return statistics.median(r[key] for r in rs)

        lines.append(
            f"| {name} | {b[0]['ratio']:.3f} | {a[0]['ratio']:.3f} "
            f"| {med(b, 'enc_cpu'):.0f} | {med(a, 'enc_cpu'):.0f} "
            f"| {med(b, 'dec_cpu'):.0f} | {med(a, 'dec_cpu'):.0f} "
            f"| `{b[0]['spec']}` | `{a[0]['spec']}` |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n\nenc/dec: MB of raw data per CPU-second of one thread.\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ab", type=Path, help="source tree to compare against (before/after)")
    ap.add_argument("--rounds", type=int, default=3, help="--ab: rounds per tree")
    ap.add_argument("--ab-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mib", type=int, default=256, help="MiB of bf16 per data set")
    ap.add_argument("--block-kib", type=int, default=1024, help="target block size")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/out/codecs.md"))
    args = ap.parse_args()
    if args.ab_worker:
        ab_worker(args.mib, args.repeat)
        return
    if args.ab:
        ab_compare(args.ab, args.mib, args.repeat, args.rounds, Path("bench/out/codecs-ab.md"))
        return

    header = machine()
    print(header, flush=True)
    t0 = time.perf_counter()
    data = make_data(args.mib)
    print(f"generated {len(data)} data sets of {args.mib} MiB in {time.perf_counter() - t0:.0f}s")
    # whole rows per block, as the store cuts them
    block_bytes = max(1, args.block_kib * 1024 // (2 * COLS)) * 2 * COLS

    raw0 = data["base"][0]
    base_blocks = blocks(raw0, block_bytes)
    t_hash, c_hash, _ = timed(lambda: [blake3.blake3(b).digest() for b in base_blocks], 2)

    n2 = args.threads
    lines = [
        f"| data | codec | ratio | enc MB/s 1T | dec MB/s 1T | enc MB/s/CPU-s | dec MB/s/CPU-s "
        f"| enc MB/s {n2}T | dec MB/s {n2}T | chain (most blocks) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, names, level, allowed in CASES:
        for name in names:
            raw, ref = data[name]
            r = run_case(raw, ref, block_bytes, level, allowed, args.repeat, n2)
            line = (
                f"| {name} | {label} | {r['ratio']:.3f} | {r['enc1']:.0f} | {r['dec1']:.0f} "
                f"| {r['enc_cpu']:.0f} | {r['dec_cpu']:.0f} "
                f"| {r['enc2']:.0f} | {r['dec2']:.0f} | `{r['spec']}` |"
            )
            lines.append(line)
            print(line, flush=True)
    footer = (
        f"\nblake3 of the same blocks, 1 thread: {len(raw0) / 1e6 / t_hash:.0f} MB/s "
        f"({len(raw0) / 1e6 / c_hash:.0f} MB per CPU-second). "
        f"{args.mib} MiB per data set, blocks of {block_bytes} bytes "
        f"({block_bytes // (2 * COLS)} rows of {COLS} bf16). "
        f"Load average at end {os.getloadavg()[0]:.2f}.\n"
    )
    print(footer)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python bench/bench_codecs.py " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k not in ("out", "ab", "rounds", "ab_worker")
    )
    args.out.write_text(f"Machine: {header}\n\nCommand: `{cmd}`\n\n" + "\n".join(lines) + footer)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
