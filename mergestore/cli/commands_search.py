"""materialize, evict: a merge commit's blocks are a cache its plan can always rebuild."""

from __future__ import annotations

import click

from mergestore.api import Store
from mergestore.cli.common import json_option, with_store
from mergestore.cli.output import emit_json, human_bytes, plural, progress_bar


@click.command()
@click.argument("ref")
@click.option("--tensor", "tensors", multiple=True, help="Only this tensor (repeatable).")
@json_option
@with_store
def materialize(store: Store, ref: str, tensors: tuple[str, ...], as_json: bool) -> None:
    """Compute and store the blocks of a lazy or evicted merge commit REF."""
    with progress_bar("materialize", None, not as_json) as bar:
        info = store.materialize(ref, tensors=list(tensors) or None, progress=bar)
    if as_json:
        emit_json(info)
        return
    if info["state"] == "materialized":
        click.echo(f"{info['commit'][:12]} is already materialized")
        return
    click.echo(
        f"{info['commit'][:12]}: {info['state']} -> {info['state_after']}; computed "
        f"{info['tensors_computed']} tensors, wrote {human_bytes(info.get('bytes_written', 0))}"
    )


@click.command()
@click.argument("refs", nargs=-1, required=True)
@json_option
@with_store
def evict(store: Store, refs: tuple[str, ...], as_json: bool) -> None:
    """Drop the blocks only merge commits REFS use; keep commit, plan and block ids.

    Any read computes them again from the plan, checking every block id. `gc` frees the
    pack space the dropped blocks leave.
    """
    rows = store.evict(*refs)
    if as_json:
        emit_json({"evicted": rows})
        return
    for ref, r in zip(refs, rows, strict=True):
        if r["state"] == "lazy":
            click.echo(f"{ref}: lazy, nothing stored to drop")
            continue
        click.echo(
            f"{ref}: dropped {plural(r['dropped_now'], 'stored block')}; evicted in all "
            f"{human_bytes(r['stored_bytes'])} stored ({human_bytes(r['raw_bytes'])} raw)"
        )


COMMANDS = [materialize, evict]


def state_line(store: Store, cid: bytes, state: str) -> str:
    """show's line for a lazy or evicted merge commit."""
    if state == "lazy":
        return "state   lazy: plan committed, not computed (`mergestore materialize`)"
    ev = store.eviction(cid) or {}
    return (
        f"state   evicted: {plural(ev.get('blocks', 0), 'stored block')} dropped, "
        f"{human_bytes(ev.get('stored_bytes', 0))} stored freed; reads recompute them"
    )


def maybe_run_recipe(
    store: Store,
    config_path: str,
    branch: str | None,
    budget: str | None,
    max_error: float | None,
    lazy: bool,
    force: bool,
    message: str,
    as_json: bool,
    saliency: str | None = None,
) -> bool:
    """Run `config_path` as a recipe if it is one (several YAML documents); False if not."""
    from pathlib import Path

    from mergestore.merge.recipe import is_recipe

    text = Path(config_path).read_text(encoding="utf-8")
    if not is_recipe(text):
        return False
    prefix = branch or Path(config_path).stem
    rows = store.merge_recipe(
        text,
        prefix=prefix,
        budget=budget,
        max_error=max_error,
        lazy=lazy,
        force=force,
        message=message,
        saliency=saliency,
    )
    if as_json:
        emit_json({"recipe": prefix, "steps": rows})
        return True
    for r in rows:
        if r.get("memo"):
            what = "up to date"
        elif r.get("lazy"):
            what = "lazy (not computed)"
        else:
            what = f"merged {r.get('tensors_computed', 0)} tensors in {r['wall_seconds']:.2f} s"
        click.echo(f"{r['branch']:<28} {r['commit'][:12]}  {what}")
    return True
