"""`mergestore merge --config a.yml --config b.yml` (or `--config sweep/*.yml`): many merges.

Each config becomes its own commit on a branch named after its file's stem. On Ray the merges
run concurrently; locally one after another. Progress shows merges done/total and bytes
read; a failed config is reported on its own line and the command exits 1 after the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from mergestore.api import Store
from mergestore.cli.output import emit_json, human_bytes, progress_enabled


def yaml_files(models: Sequence[str]) -> bool:
    """MODELS that a shell glob after --config spread out (`--config sweep/*.yml`)."""
    return bool(models) and all(m.endswith((".yml", ".yaml")) for m in models)


def run_many(
    store: Store,
    paths: Sequence[str],
    *,
    executor: str | None,
    ray_address: str | None,
    budget: str | None,
    max_error: float | None,
    message: str,
    force: bool,
    as_json: bool,
) -> None:
    show = not as_json and progress_enabled()
    bar: Any = None
    if show:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(
            TextColumn("merges"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[read]} read"),
            console=Console(stderr=True),
            transient=True,
        )
    read = [0]
    task = bar.add_task("merges", total=len(paths), read="0 B") if bar else None

    def on_merge(r: Any) -> None:
        if bar is not None:
            bar.advance(task, 1)
        if r.error and not as_json:
            click.echo(f"error: {r.label}: {r.error}", err=True)

    def on_bytes(n: int) -> None:
        read[0] += n
        if bar is not None:
            bar.update(task, read=human_bytes(read[0]))

    if bar is not None:
        bar.start()
    try:
        results = store.merge_many(
            list(paths),
            executor=executor,
            ray_address=ray_address,
            budget=budget,
            max_error=max_error,
            message=message,
            force=force,
            on_merge=on_merge,
            on_bytes=on_bytes,
        )
    finally:
        if bar is not None:
            bar.stop()
    failed = sum(not r.ok for r in results)
    if as_json:
        emit_json({"merges": [r.to_json() for r in results], "failed": failed})
    else:
        for r in results:
            if r.ok:
                click.echo(f"{r.result.commit.hex()} {r.branch}")
        expert = sum(r.result.run["expert_bytes_read"] for r in results if r.ok)
        click.echo(
            f"{len(results) - failed} of {len(results)} merges done; experts read "
            f"{human_bytes(expert)}" + (f", packs read {human_bytes(read[0])}" if read[0] else ""),
            err=True,
        )
    if failed:
        sys.exit(1)
