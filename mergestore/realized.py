"""The realized error of a budgeted merge: ||M_full − M_budget||_F, next to the bound.

It needs the full-read merge of the same plan. `explain` looks for one among the store's merge
commits (a plan that differs only in its budget and selection) and, when there is one,
compares the two outputs tensor by tensor; the relative figure divides by ||M_full − base||_F,
the merge delta itself. Nothing is computed or stored to find it: without a full-read twin the
realized error is reported as unknown, with what to run to get it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mergestore.store import merges

if TYPE_CHECKING:
    from mergestore.api import Store

# The plan fields that make two merges the same merge at different budgets.
_SAME = ("method", "base", "tensors", "dtype", "out_dtype", "seed", "rng", "engine")
HOW = "merge the same inputs without --budget/--max-error, then explain again"


def _key(body: dict[str, Any]) -> tuple[Any, ...]:
    models = tuple(m.get("commit") for m in body.get("models", []))
    return (models, *(repr(body.get(k)) for k in _SAME))


def full_twin(store: Store, plan_body: dict[str, Any]) -> bytes | None:
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


def realized_error(store: Store, cid: bytes, plan_body: dict[str, Any]) -> dict[str, Any] | None:
    """{"error", "relative", "full_merge"} against the full-read twin, or why it is unknown
    ({"error": None, "why": ...}); None for a merge that read everything."""
    if not (plan_body.get("budget") or {}).get("active"):
        return None
    twin = full_twin(store, plan_body)
    if twin is None:
        return {"error": None, "relative": None, "full_merge": None, "why": HOW}
    base = bytes.fromhex(plan_body["base"]) if plan_body.get("base") else None
    base_shapes = {t.name: t.shape for t in store.tensors(base)} if base is not None else {}
    err_sq = delta_sq = 0.0
    for rec in store.tensors(twin):
        full = store.read_tensor(twin, rec.name).double()
        err_sq += float(((full - store.read_tensor(cid, rec.name).double()) ** 2).sum())
        if base is not None and base_shapes.get(rec.name) == rec.shape:
            full = full - store.read_tensor(base, rec.name).double()
        delta_sq += float((full**2).sum())  # a tensor the base lacks is delta as a whole
    err, delta = err_sq**0.5, delta_sq**0.5
    return {
        "error": err,
        "relative": err / delta if delta > 0 else None,
        "full_merge": twin.hex(),
        "why": None,
    }


def base_and_inputs(plan_body: dict[str, Any]) -> dict[str, Any]:
    """The plan's models split: {"base": model or None, "inputs": [models with "index"]}."""
    base, inputs = None, []
    for i, m in enumerate(plan_body.get("models", [])):
        if base is None and m.get("commit") == plan_body.get("base"):
            base = {**m, "index": i}
        else:
            inputs.append({**m, "index": i})
    return {"base": base, "inputs": inputs}
