"""Demo steps that exercise merge, budgets, replay and diff on the demo's family."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from mergestore.api import Store


def merge_step(store: Store, fam: Any, report: dict[str, Any], say: Callable[[str], None]) -> None:
    experts = [e for e in fam.experts]
    res = store.merge(
        method="ties",
        base="main",
        models=experts,
        weights=[1.0] * len(experts),
        params={"density": 0.5},
        branch="ties",
        message="ties merge",
    )
    r = res.run
    say(
        f"{'merge ties':<20}{res.commit.hex()[:12]}  {r['tensors']} tensors in "
        f"{r['wall_seconds']:.2f} s, read {r['expert_bytes_read'] / 2**20:.2f} MiB of experts, "
        f"wrote {r['bytes_written'] / 2**20:.2f} MiB"
    )
    full = store.merge(
        method="task_arithmetic",
        base="main",
        models=experts,
        weights=[0.5] * len(experts),
        branch="ta",
        message="task arithmetic",
    )
    part = store.merge(
        method="task_arithmetic",
        base="main",
        models=experts,
        weights=[0.5] * len(experts),
        budget="25%",
        branch="ta25",
        message="task arithmetic at a 25% budget",
    )
    p = part.run
    say(
        f"{'merge ta @25%':<20}{part.commit.hex()[:12]}  read "
        f"{p['expert_bytes_read'] / 2**20:.2f} of {p['expert_bytes_full'] / 2**20:.2f} MiB; "
        f"error bound {p['error_bound']:.4g}"
    )
    rep = store.replay("ta25")
    say(f"{'replay ta25':<20}identical = {rep['identical']} ({rep['blocks']} blocks checked)")
    report["merge"] = {
        "ties": res.commit.hex(),
        "task_arithmetic": full.commit.hex(),
        "budget_25": part.commit.hex(),
        "budget_run": p,
        "replay_identical": rep["identical"],
    }


def diff_step(store: Store, fam: Any, report: dict[str, Any], say: Callable[[str], None]) -> None:
    if importlib.util.find_spec("mergestore.diff") is None:
        return
    from mergestore import diff

    fn = getattr(diff, "demo_step", None)
    if fn is not None:
        fn(store, fam, report, say)


STEPS = [diff_step, merge_step]
