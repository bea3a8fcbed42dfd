"""Text rendering of the commit DAG (`log --graph`) and of merge recipes (`show`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from mergestore.api import LogEntry
from mergestore.cli.output import human_bytes
from mergestore.history import topo_order


def _parents_shown(e: LogEntry, shown: set[bytes]) -> list[bytes]:
    """A commit's parents that are part of the drawing, without repeats, in order."""
    out: list[bytes] = []
    for p in e.commit.parents:
        if p in shown and p not in out:
            out.append(p)
    return out


def _connector_rows(edges: list[tuple[int, int]]) -> list[str]:
    """Rows of '|', '/' and '\\' that move each lane from its old column to its new one.

    Every edge moves one column per row, so a lane that shifts far draws a diagonal.
    """
    pos = [src for src, _dst in edges]
    rows: list[str] = []
    while any(p != dst for p, (_s, dst) in zip(pos, edges, strict=True)):
        width = 2 * (max(max(pos), max(d for _s, d in edges)) + 1)
        row = [" "] * width
        for i, (_src, dst) in enumerate(edges):
            p = pos[i]
            if dst > p:
                row[2 * p + 1] = "\\"
                pos[i] = p + 1
            elif dst < p:
                row[2 * p - 1] = "/"
                pos[i] = p - 1
            elif row[2 * p] == " ":
                row[2 * p] = "|"
        rows.append("".join(row).rstrip())
    return rows


def _merge_adjacent(columns: list[bytes]) -> tuple[list[bytes], list[int]]:
    """Join neighbouring lanes that wait for the same commit; returns lanes and old->new index."""
    out: list[bytes] = []
    where: list[int] = []
    for c in columns:
        if out and out[-1] == c:
            where.append(len(out) - 1)
        else:
            out.append(c)
            where.append(len(out) - 1)
    return out, where


def graph_rows(entries: Sequence[LogEntry], deco: dict[bytes, list[str]]) -> tuple[list[str], int]:
    """The lines of `log --graph`, and how many times a joining lane had to cross another.

    Lanes (`columns`) each wait for one commit; several may wait for the same one, as in git, and
    they join when they become neighbours, so forks from one base draw without crossings. A
    commit takes the leftmost lane waiting for it (others waiting for it join it first, crossing
    lanes in between only when the DAG leaves no other way); its first parent continues that
    lane and further parents open lanes to its right.
    """
    order = topo_order(entries)
    shown = {e.id for e in order}
    columns: list[bytes] = []
    lines: list[str] = []
    crossings = 0
    for e in order:
        if e.id not in columns:
            columns.append(e.id)
        col = columns.index(e.id)
        waiting = [i for i, w in enumerate(columns) if w == e.id]
        if len(waiting) > 1:
            crossings += sum(1 for i in range(col, waiting[-1]) if columns[i] != e.id)
            kept: list[bytes] = []
            edges = []
            for i, w in enumerate(columns):
                if w == e.id and i != col:
                    edges.append((i, col))  # col is the leftmost lane waiting for e
                else:
                    edges.append((i, len(kept)))
                    kept.append(w)
            lines += _connector_rows(edges)
            columns = kept
        row = " ".join("*" if i == col else "|" for i in range(len(columns)))
        d = f" ({', '.join(deco[e.id])})" if e.id in deco else ""
        msg = (e.commit.message.splitlines() or [""])[0]
        tag = " [merge]" if e.commit.plan else ""
        lines.append(f"{row}  {e.id.hex()[:10]}{d}{tag} {msg}")

        parents = _parents_shown(e, shown)
        opened = columns[:col] + parents + columns[col + 1 :]
        first = [i if i < col else i + len(parents) - 1 for i in range(len(columns))]
        merged, where = _merge_adjacent(opened)
        edges = [(i, where[first[i]]) for i in range(len(columns)) if i != col]
        edges += [(col, where[col + k]) for k in range(len(parents))]
        rows = _connector_rows(edges)
        if not parents and not rows and e is not order[-1]:
            # The lane ends here: a row without it, so the next commit drawn in this column is
            # not read as this one's parent (a blank line when no other lane is open).
            rows = [" ".join("|" for _ in merged)]
        lines += rows
        columns = merged
    return lines, crossings


def draw_graph(entries: Sequence[LogEntry], deco: dict[bytes, list[str]]) -> Iterator[str]:
    """git-style lanes: '*' marks a commit, '|' a line of descent, '\\' and '/' forks and joins."""
    yield from graph_rows(entries, deco)[0]


def format_recipe(plan: dict[str, Any], full: dict[str, Any] | None = None) -> Iterator[str]:
    """Human lines for a merge plan: method, parameters after defaults, inputs with theirs.

    `plan` is Store.plan_summary(); `full` the plan object itself (Store.merge_info), which holds
    the per-model parameters as given and the parameters each tensor resolved to.
    """
    full = full or {}
    config = full.get("config") or {}
    tensors = full.get("tensors") or []
    shared = dict(tensors[0].get("shared") or {}) if tensors else {}
    shared.update(plan.get("parameters") or {})
    extras = [f"seed {plan['seed']}"] if plan.get("seed") is not None else []
    extras += [f"{k} {plan[k]}" for k in ("dtype", "out_dtype") if plan.get(k)]
    yield f"recipe  {plan.get('method')}" + (f"  ({', '.join(extras)})" if extras else "")
    if shared:
        yield "        " + " ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(shared.items()))
    models = full.get("models") or []
    given = {m.get("model"): m.get("parameters") or {} for m in config.get("models") or []}
    width = max([len(str(m.get("ref"))) for m in models] + [4])
    base = plan.get("base")
    for m in models:
        ref, commit = str(m.get("ref")), str(m.get("commit", ""))
        role = "base " if base and commit == base else "model"
        params = " ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(given.get(ref, {}).items()))
        yield f"{role}   {ref:<{width}}  {commit[:12]}  {params}".rstrip()
    if not models:
        if base:
            yield f"base    {base}"
        for m in plan.get("models") or []:
            yield f"model   {m}"
    if plan.get("budget_bytes") is not None:
        yield f"budget  {human_bytes(plan['budget_bytes'])} of expert data"
    if plan.get("expert_bytes_read") is not None:
        yield f"read    {human_bytes(plan['expert_bytes_read'])} of expert data"
    if plan.get("error_bound") is not None:
        yield f"bound   ||M_full - M|| <= {plan['error_bound']:.6g}"


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return str(v)
