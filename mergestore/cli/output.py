"""Output helpers shared by the commands: JSON mode, sizes, ids, progress bars."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.hex()
    if hasattr(o, "__fspath__"):
        return os.fspath(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 block', '2 blocks', '1,024 blocks' (`many` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def replaced_lines(removed: list[str], kept: list[str]) -> list[str]:
    """What writing over a non-empty folder removed and kept (checkout --force, merge
    --overwrite), one line each."""
    lines = []
    if removed:
        lines.append(f"removed {_files(removed)} of an older checkpoint")
    if kept:
        lines.append(f"kept {_files(kept)}: not the checkpoint's")
    return lines


def _files(paths: list[str]) -> str:
    shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
    return f"{plural(len(paths), 'file')} ({shown})"


def short(cid: bytes | str, n: int = 12) -> str:
    s = cid.hex() if isinstance(cid, bytes) else cid
    return s[:n]


def branch_name(ref: str | None) -> str | None:
    """refs/heads/x -> x (what `branch` prints and takes); other refs unchanged."""
    if ref is None:
        return None
    return ref[len("refs/heads/") :] if ref.startswith("refs/heads/") else ref


def moved_line(ref: str | None, old: bytes | None, new: bytes, message: str) -> str:
    """git's `[main 1ae73c2] message`, with where the branch was: `[b 0c5c0c2f5d72 -> ...]`."""
    summary = (message.splitlines() or [""])[0]
    if ref is None:
        return f"[detached {short(new)}] {summary}"
    where = f"{short(old)} -> {short(new)}" if old else f"(new branch) {short(new)}"
    return f"[{branch_name(ref)} {where}] {summary}"


def progress_enabled() -> bool:
    env = os.environ.get("MERGESTORE_PROGRESS")
    if env is not None:
        return env not in ("0", "", "no")
    return sys.stderr.isatty()


def io_text(since: tuple[int, int]) -> str:
    """Bytes this process read and wrote since `since` (an iotally.totals())."""
    from mergestore import iotally

    read, written = iotally.totals()
    return f"read {human_bytes(read - since[0])}, wrote {human_bytes(written - since[1])}"


@contextmanager
def progress_bar(
    description: str,
    total: int | None,
    enabled: bool = True,
    unit: str = "bytes",
    io: bool = False,
) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr; yields an advance(n) callback (None if off).

    `unit` "bytes" counts bytes (size and speed); anything else counts items: "12/21 tensors".
    `io` adds the bytes read and written since the bar started (mergestore/iotally.py),
    refreshed as they move, between items too.
    """
    if not enabled or not progress_enabled():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    counts: tuple[Any, ...] = (
        (DownloadColumn(binary_units=True), binary_speed_column())
        if unit == "bytes"
        else (MofNCompleteColumn(), TextColumn(unit))
    )
    if io:
        from mergestore import iotally

        counts = (*counts, _io_column(iotally.totals()))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n: prog.advance(task, n)


def _io_column(since: tuple[int, int]) -> Any:
    """A column `read 1.2 GiB, wrote 310 MiB`, polled on every refresh (so it moves inside a
    long tensor too). Built here: rich is imported only when a bar is shown."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class IoColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(io_text(since), style="progress.download")

    return IoColumn()


def binary_speed_column() -> Any:
    """rich's TransferSpeedColumn in binary units (it prints MB/s next to DownloadColumn's MiB):
    sizes and rates are both binary across the CLI (docs/format.md)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class BinarySpeedColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            text = "?" if speed is None else f"{human_bytes(speed)}/s"
            return Text(text, style="progress.data.speed")

    return BinarySpeedColumn()
