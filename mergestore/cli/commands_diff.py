"""diff, analyze."""

from __future__ import annotations

import sys
from typing import Any

import click

from mergestore.api import Store
from mergestore.cli.common import json_option, with_store
from mergestore.cli.output import emit_json, human_bytes, plural, progress_bar, short


def _num(x: float | None, fmt: str = ".3e") -> str:
    return "-" if x is None else format(x, fmt)


def _shape(shape: Any) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _detail_line(t: Any) -> str:
    head = f"{t.status:<9} {t.name}"
    if t.status == "retyped":
        line = f"{head}  {t.a_dtype} {_shape(t.a_shape)} -> {t.dtype} {_shape(t.shape)}"
        if t.delta_l2 is None:
            return line
        return (
            f"{line}  |d| {_num(t.delta_l2)}  rel {_num(t.rel_delta)}  "
            f"cos {_num(t.cosine, '.6f')}  max {_num(t.max_abs)}"
        )
    if t.status in ("added", "removed"):
        return f"{head}  {t.dtype} {_shape(t.shape)}"
    if t.delta_l2 is None:
        return f"{head}  blocks {t.blocks_changed}/{t.blocks_total}  ({t.dtype}: no statistics)"
    return (
        f"{head}  blocks {t.blocks_changed}/{t.blocks_total}  |d| {_num(t.delta_l2)}  "
        f"rel {_num(t.rel_delta)}  cos {_num(t.cosine, '.6f')}  max {_num(t.max_abs)}  "
        f"elems {100 * (t.frac_changed or 0):.1f}%"
    )


def _retyped_measured(res: Any) -> bool:
    return any(t.status == "retyped" and t.delta_l2 is not None for t in res.tensors)


def _summary(res: Any) -> str:
    tot = res.totals()
    parts = [f"{tot[s]} {s}" for s in ("changed", "added", "removed", "retyped", "unchanged")]
    line = (
        f"{', '.join(parts)}; {tot['blocks_changed']:,} of {plural(tot['blocks_total'], 'block')}"
        " changed; "
        f"|d| {_num(tot['delta_l2'])}, rel {_num(tot['rel_delta'])} "
        f"({'changed and retyped' if _retyped_measured(res) else 'changed'} tensors)"
    )
    read = (
        f"read {human_bytes(res.bytes_read)} from the store; statistics: "
        f"{res.stats_computed} computed, {res.stats_reused} reused"
    )
    if res.norms_computed or res.norms_reused:
        read += f"; block norms: {res.norms_computed} computed, {res.norms_reused} reused"
    if res.b is None:
        read += f"; hashed {human_bytes(res.folder_bytes_read)} of the folder"
    return f"{line}\n{read} in {res.seconds:.2f} s"


def _bar(x: float | None, top: float, width: int = 24) -> str:
    if x is None or top <= 0:
        return ""
    return "#" * max(1, round(width * x / top))


def _stat_lines(res: Any) -> list[str]:
    shown = [t for t in res.tensors if t.status != "unchanged"]
    # by relative change, largest first; added/removed/retyped (no ratio) on top
    shown.sort(key=lambda t: (t.rel_delta is not None, -(t.rel_delta or 0.0), t.name))
    top = max((t.rel_delta or 0.0 for t in shown), default=0.0)
    width = max((len(t.name) for t in shown), default=10)
    lines = []
    for t in shown:
        rel = _num(t.rel_delta, ".2e") if t.status == "changed" else t.status
        blocks = f"{t.blocks_changed}/{t.blocks_total}"
        lines.append(f" {t.name:<{width}} | {rel:>9} {blocks:>9} {_bar(t.rel_delta, top)}")
    lines.append("")
    lines.append(f" {'layer':<6} {'changed':>9} {'blocks':>11} {'rel_delta':>10} {'|d|':>10}")
    for g in res.layers():
        name = "-" if g["layer"] is None else str(g["layer"])
        lines.append(
            f" {name:<6} {g['changed']:>4}/{g['tensors']:<4} "
            f"{g['blocks_changed']:>5}/{g['blocks_total']:<5} {_num(g['rel_delta'], '.2e'):>10} "
            f"{_num(g['delta_l2'], '.2e'):>10}"
        )
    return lines


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--stat", is_flag=True, help="One line per tensor by relative change, then layers.")
@click.option(
    "--tensor", "globs", multiple=True, help="Only tensors matching this glob (repeatable)."
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG heatmap of relative change, layers x modules.",
)
@click.option("--no-keep", is_flag=True, help="Don't keep computed statistics in the store.")
@click.option("--exit-code", is_flag=True, help="Exit 1 when A and B differ, 0 when equal.")
@json_option
@with_store
def diff(
    store: Store,
    a: str,
    b: str,
    stat: bool,
    globs: tuple[str, ...],
    plot: str | None,
    no_keep: bool,
    exit_code: bool,
    as_json: bool,
) -> None:
    """What changed from commit A to B (a commit, or a checkpoint folder), block by block.

    Identical blocks are settled from their ids; only changed blocks are read, and their
    statistics are kept for the next diff and for the budget planner.
    """
    from mergestore.diff import progress_total

    total = progress_total(store.repo, a, b) if not as_json else 0
    with progress_bar("diff", total or None, not as_json) as advance:
        res = store.diff(a, b, tensors=list(globs) or None, keep=not no_keep, progress=advance)
    if plot:
        from mergestore.diffplot import plot_diff

        plot_diff(res, plot, title=f"{a} -> {b}")
    differs = _differs(store, res) if exit_code else False
    if as_json:
        out = res.to_json()
        if plot:
            out["plot"] = plot
        if exit_code:
            out["differs"] = differs
        emit_json(out)
        if differs:
            sys.exit(1)
        return
    b_text = short(res.b) if res.b is not None else res.b_path
    click.echo(f"diff {short(res.a)} {b_text}")
    if stat:
        for line in _stat_lines(res):
            click.echo(line)
    else:
        for t in res.tensors:
            if t.status != "unchanged":
                click.echo(_detail_line(t))
    click.echo(_summary(res))
    if plot:
        click.echo(f"wrote {plot}")
    if differs:
        sys.exit(1)


def _differs(store: Store, res: Any) -> bool:
    """git diff --exit-code: any tensor not unchanged, or (two commits) any other file."""
    if any(t.status != "unchanged" for t in res.tensors):
        return True
    if res.b is None:
        return False
    files = [
        {e.path: e.object for e in store.tree(c).entries if e.kind != "tensorfile"}
        for c in (res.a, res.b)
    ]
    return files[0] != files[1]


@click.command()
@click.argument("expert")
@click.option("--base", default=None, help="Base commit (default: the one EXPERT records).")
@json_option
@with_store
def analyze(store: Store, expert: str, base: str | None, as_json: bool) -> None:
    """Compute and keep per-block delta statistics of EXPERT against BASE."""
    with progress_bar("analyze", None, not as_json) as advance:
        res = store.analyze(expert, base, progress=advance)
    if as_json:
        emit_json(res.to_json())
        return
    rate = res.bytes_read / res.seconds if res.seconds > 0 else 0.0
    click.echo(
        f"{short(res.expert)} vs {short(res.base)}: {plural(res.pairs, 'changed block pair')}, "
        f"{res.stats_computed} computed, {res.stats_reused} already kept; read "
        f"{human_bytes(res.bytes_read)} in {res.seconds:.2f} s ({human_bytes(rate)}/s)"
    )


COMMANDS = [diff, analyze]
