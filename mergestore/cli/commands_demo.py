"""demo."""

from __future__ import annotations

import click

from mergestore.cli.common import json_option
from mergestore.cli.output import emit_json


@click.command()
@click.option(
    "--preset", default="small", show_default=True, help="Family size: tiny, small, bench-0.5g, ..."
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False),
    default=None,
    help="Work in this directory and keep it (default: a temp dir, removed).",
)
@json_option
def demo(preset: str, keep: str | None, as_json: bool) -> None:
    """Generate a model family, commit it, diff, merge and replay, in a temporary store."""
    from mergestore.demo import run_demo

    report = run_demo(keep, preset=preset, say=(lambda s: None) if as_json else click.echo)
    if as_json:
        emit_json(report)


COMMANDS = [demo]
