"""saliency: gradients or a Fisher diagonal of a stored checkpoint, for `merge --saliency`."""

from __future__ import annotations

import click

from mergestore.api import Store
from mergestore.cli.common import json_option, with_store
from mergestore.cli.output import emit_json, human_bytes, progress_bar


@click.command()
@click.argument("ref")
@click.option(
    "--calibration",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help='Calibration text: a .jsonl of {"text": ...} (or strings), or a plain text file.',
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output file (.safetensors is added when missing).",
)
@click.option("--fisher", is_flag=True, help="The empirical Fisher diagonal, not the gradient.")
@click.option(
    "--window",
    type=click.IntRange(min=2),
    default=128,
    show_default=True,
    help="Tokens per calibration window.",
)
@click.option(
    "--max-windows",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="At most this many windows, spread evenly over the text.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Windows per backward pass (gradient; Fisher takes one at a time).",
)
@click.option("--force", is_flag=True, help="Overwrite the output file.")
@json_option
@with_store
def saliency(
    store: Store,
    ref: str,
    calibration: str,
    out: str,
    fisher: bool,
    window: int,
    max_windows: int,
    batch: int,
    force: bool,
    as_json: bool,
) -> None:
    """Compute the saliency of checkpoint REF on calibration text (needs transformers:
    pip install "mergestore[saliency]"); then `merge ... --budget 25% --saliency FILE`."""
    with progress_bar("saliency", None, not as_json, unit="windows") as advance:
        res = store.saliency(
            ref,
            calibration,
            out,
            fisher=fisher,
            window=window,
            max_windows=max_windows,
            batch=batch,
            force=force,
            progress=advance,
        )
    if as_json:
        emit_json(res.to_json())
        return
    click.echo(res.path)
    click.echo(
        f"{res.kind} of {res.commit[:12]} on {res.windows} windows of {res.window} tokens "
        f"(loss {res.loss:.4g}): {res.tensors} tensors, {human_bytes(res.bytes)} "
        f"in {res.seconds:.1f} s",
        err=True,
    )


COMMANDS = [saliency]
