"""`mergestore demo`: the main job on a generated family, in a temporary store."""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergestore.api import Store

MIB = 1 << 20

Say = Callable[[str], None]


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_demo(
    workdir: str | None = None, *, preset: str = "small", say: Say = print
) -> dict[str, Any]:
    """Generate a base and experts, commit them, and run every layer that is available."""
    from fixtures.family import PRESETS, FamilySpec, make_family

    tmp = tempfile.TemporaryDirectory(prefix="mergestore-demo-") if workdir is None else None
    root = Path(workdir or tmp.name)  # type: ignore[union-attr]
    report: dict[str, Any] = {"workdir": str(root)}
    try:
        spec = PRESETS[preset]
        spec = FamilySpec(
            **{**spec.__dict__, "experts": ("dense_small", "frozen", "lowrank_attn", "uneven0")}
        )
        t0 = time.perf_counter()
        fam = make_family(root / "family", spec)
        say(
            f"generated a {preset} family in {time.perf_counter() - t0:.1f} s: base + "
            f"{', '.join(fam.experts)} ({fam.base})"
        )
        store = Store.init(root / "store")
        res = store.commit(fam.base, message="base model", branch="main")
        say(
            f"{'commit base':<20}{res.commit.hex()[:12]}  {res.logical_bytes / MIB:.1f} MiB in "
            f"{res.seconds:.2f} s"
        )
        report["base"] = res.commit.hex()
        for name, path in fam.experts.items():
            r = store.commit(path, message=f"{name} expert", branch=name, base="main")
            say(
                f"{'commit ' + name:<20}{r.commit.hex()[:12]}  {r.total_blocks} blocks "
                f"({r.new_blocks} new), wrote {r.written_bytes / MIB:.2f} MiB"
            )
            report[name] = r.commit.hex()
        out = root / "checkout"
        store.checkout("frozen", out)
        same = _digest(out) == _digest(fam.experts["frozen"])
        say(f"checkout frozen: byte-identical = {same}")
        report["checkout_identical"] = same
        du = store.disk_usage()
        say(
            f"du: logical {du['logical_bytes'] / MIB:.1f} MiB, stored "
            f"{du['stored_bytes'] / MIB:.1f} MiB (deduplicated/logical "
            f"{du['deduplicated_logical_ratio']:.3f}, stored/raw {du['stored_raw_ratio']:.3f})"
        )
        report["du"] = {
            k: du[k]
            for k in (
                "logical_bytes",
                "stored_bytes",
                "deduplicated_logical_ratio",
                "stored_raw_ratio",
            )
        }
        for step in _optional_steps():
            step(store, fam, report, say)
        store.close()
        return report
    finally:
        if tmp is not None:
            tmp.cleanup()


def _optional_steps() -> list[Callable[..., None]]:
    import importlib
    import importlib.util

    if importlib.util.find_spec("mergestore.demo_steps") is None:
        return []
    return list(importlib.import_module("mergestore.demo_steps").STEPS)
