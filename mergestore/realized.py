"""The realized error of a budgeted merge: ||M_full − M_budget||_F, next to the bound.

It needs the full-read merge of the same plan. `explain` looks for one among the store's merge
commits (a plan that differs only in its budget and selection) and, when there is one,
compares the two outputs tensor by tensor; the relative figure divides by ||M_full − base||_F,
the merge delta itself. Both come from diff's engine (only blocks whose ids differ are read, in
fp64; nothing is kept). Nothing is merged or stored to find the twin: without one the realized
error is reported as unknown, with what to run to get it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from mergestore.store import merges

if TYPE_CHECKING:
    import torch

    from mergestore.diff import DiffResult
    from mergestore.store.objects import TensorRecord
    from mergestore.store.repo import Repository


class StoreView(Protocol):
    """What this module needs of `mergestore.Store` (it is called from there, not above it)."""

    repo: Repository

    def diff(self, a: str, b: str, *, keep: bool) -> DiffResult: ...
    def tensors(self, ref: bytes) -> list[TensorRecord]: ...
    def read_tensor(self, ref: bytes, name: str) -> torch.Tensor: ...


# The plan fields that make two merges the same merge at different budgets.
_SAME = ("method", "base", "tensors", "dtype", "out_dtype", "seed", "rng", "engine")
HOW = "merge the same inputs without --budget/--max-error, then explain again"


def _key(body: dict[str, Any]) -> tuple[Any, ...]:
    models = tuple(m.get("commit") for m in body.get("models", []))
    return (models, *(repr(body.get(k)) for k in _SAME))


def full_twin(store: StoreView, plan_body: dict[str, Any]) -> bytes | None:
    """A materialized merge commit whose plan reads everything and is otherwise this one."""
    want = _key(plan_body)
    repo = store.repo
    for plan_id, cid in sorted(merges.memo_entries(repo).items()):
        body = repo.get_plan(plan_id).body
        if (body.get("budget") or {}).get("active") or _key(body) != want:
            continue
        if merges.state(repo, repo.get_commit(cid)) == "materialized":
            return cid
    return None


def realized_error(
    store: StoreView, cid: bytes, plan_body: dict[str, Any]
) -> dict[str, Any] | None:
    """{"error", "relative", "full_merge"} against the full-read twin, or why it is unknown
    ({"error": None, "why": ...}); None for a merge that read everything."""
    if not (plan_body.get("budget") or {}).get("active"):
        return None
    twin = full_twin(store, plan_body)
    if twin is None:
        return {"error": None, "relative": None, "full_merge": None, "why": HOW}
    # diff's engine: only blocks whose ids differ are read, statistics in fp64, nothing kept
    err = _distance(store, twin, cid)
    if err is None:
        why = "some tensors differ in shape or dtype, or have no statistics: not measurable"
        return {"error": None, "relative": None, "full_merge": twin.hex(), "why": why}
    delta = (
        _distance(store, bytes.fromhex(plan_body["base"]), twin) if plan_body.get("base") else None
    )
    return {
        "error": err,
        "relative": err / delta if delta else None,
        "full_merge": twin.hex(),
        "why": None,
    }


def _distance(store: StoreView, a: bytes, b: bytes) -> float | None:
    """||B − A||_F over all tensors (a tensor on one side only counts whole), or None when two
    tensors of one name differ in shape."""
    res = store.diff(a.hex(), b.hex(), keep=False)
    names = {c: {t.name for t in store.tensors(c)} for c in (a, b)}
    total = 0.0
    for t in res.tensors:
        if t.status == "changed" and t.delta_l2 is not None:
            total += t.delta_l2**2
        elif t.status != "unchanged":  # retyped (--dtype float32 on bf16 inputs), no stats, ...
            sq = _read_distance_sq(store, a, b, t.name, names)
            if sq is None:
                return None
            total += sq
    return total**0.5


def _read_distance_sq(
    store: StoreView, a: bytes, b: bytes, name: str, names: dict[bytes, set[str]]
) -> float | None:
    """||B[name] − A[name]||² in fp64 from the tensors themselves (one side only: its norm)."""
    ta, tb = (store.read_tensor(c, name).double() if name in names[c] else None for c in (a, b))
    if ta is None or tb is None:
        t = tb if tb is not None else ta
        return float((t**2).sum()) if t is not None else 0.0
    if ta.shape != tb.shape:
        return None
    return float(((tb - ta) ** 2).sum())


def base_and_inputs(plan_body: dict[str, Any]) -> dict[str, Any]:
    """The plan's models split: {"base": model or None, "inputs": [models with "index"]}."""
    base, inputs = None, []
    for i, m in enumerate(plan_body.get("models", [])):
        if base is None and m.get("commit") == plan_body.get("base"):
            base = {**m, "index": i}
        else:
            inputs.append({**m, "index": i})
    return {"base": base, "inputs": inputs}
