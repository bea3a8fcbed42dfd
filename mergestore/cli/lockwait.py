"""`waiting for the store lock (held by pid N: merge)`: what a command prints when it waits."""

from __future__ import annotations

import os
from collections.abc import Callable

import click


def describe_pid(pid: int) -> str:
    """The mergestore command a process runs (`merge`), else its program's name, else `?`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not args:
        return "?"
    from mergestore.cli.main import cli

    names = set(cli.commands)
    for a in args[1:]:
        if a in names:
            return a
    return os.path.basename(args[0])


def lock_wait_reporter() -> Callable[[list[int]], None]:
    """A Store.report_lock_waits callback that says, on stderr, who the command waits for."""

    def report(pids: list[int]) -> None:
        held = ", ".join(f"pid {p}: {describe_pid(p)}" for p in pids) or "another process"
        click.echo(f"waiting for the store lock (held by {held})", err=True)

    return report
