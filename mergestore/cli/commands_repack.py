"""repack: re-encode stored blocks with the best codec (Store.repack, store/repack.py)."""

from __future__ import annotations

import click

from mergestore.api import Store
from mergestore.cli.common import json_option, with_store
from mergestore.cli.output import emit_json, human_bytes, plural, progress_bar


@click.command()
@click.option("--dry-run", "-n", is_flag=True, help="Encode and report, but change nothing.")
@click.option(
    "--delta/--no-delta",
    default=None,
    help="Allow XOR deltas against the base block (default: the store's delta_codecs setting).",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Threads that encode blocks (1-64).",
)
@json_option
@with_store
def repack(store: Store, dry_run: bool, delta: bool | None, workers: int, as_json: bool) -> None:
    """Re-encode stored blocks with the best codec; old entries become space gc reclaims."""
    with progress_bar("repack", None, not as_json) as advance:
        rep = store.repack(dry_run=dry_run, delta=delta, progress=advance, workers=workers)
    if as_json:
        emit_json(rep.to_json())
        return
    would = "would re-encode" if dry_run else "re-encoded"
    click.echo(
        f"examined {plural(rep.blocks_examined, 'stored block')} "
        f"({human_bytes(rep.raw_bytes)} raw), "
        f"{would} {rep.blocks_reencoded}; deltas {rep.deltas_before} -> {rep.deltas_after}"
    )
    ratio_before = rep.stored_bytes_before / rep.raw_bytes if rep.raw_bytes else 1.0
    ratio_after = rep.stored_bytes_after / rep.raw_bytes if rep.raw_bytes else 1.0
    click.echo(
        f"stored {human_bytes(rep.stored_bytes_before)} ({ratio_before:.3f} of raw) -> "
        f"{human_bytes(rep.stored_bytes_after)} ({ratio_after:.3f})"
    )
    for name, n in sorted(rep.by_codec_after.items()):
        click.echo(f"  {name:<22} {plural(n, 'stored block'):>20}")
    if not dry_run and rep.dead_bytes:
        click.echo(
            f"{human_bytes(rep.dead_bytes)} of old entries are dead (`mergestore gc` frees them)"
        )
    if rep.checks_added:
        added = "would add" if dry_run else "added"
        click.echo(
            f"{added} the read check to {plural(rep.checks_added, 'stored block')} "
            "written by store format 1"
        )
    if rep.skipped_concurrent:
        click.echo(
            f"{plural(rep.skipped_concurrent, 'stored block')} changed meanwhile and were left "
            "as they are"
        )


COMMANDS = [repack]
