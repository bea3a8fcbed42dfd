"""`merge --abort`, and SIGTERM read as Ctrl-C while a merge runs (mergestore/merge/session.py).

A merge that fails stores nothing. One that is interrupted (Ctrl-C, SIGTERM) or killed after
some tensors were computed keeps them, with the inputs it stored, so that the same merge run
again resumes; the interrupt's error line says so. `mergestore merge --abort` drops that kept
work, as `git merge --abort` gives up a merge in progress (gc also drops it after its grace
period).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import click

from mergestore.cli.output import emit_json, human_bytes, plural

ABORT_HELP = (
    "Drop what interrupted or killed merges kept for a re-run to resume (their computed "
    "tensors and the inputs they stored), then stop. Give no other argument."
)
# options that name a merge to run: none may come with --abort
_MERGE_ARGS = ("config_path", "models", "method", "base", "branch", "out_dir", "weights", "params")


def abort_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --abort to `merge` (innermost decorator: the callback gets `store` and `as_json`)."""

    @click.option("--abort", "abort", is_flag=True, help=ABORT_HELP)
    @functools.wraps(fn)
    def wrapper(store: Any, *args: Any, abort: bool = False, **kwargs: Any) -> Any:
        if not abort:
            return fn(store, *args, **kwargs)
        given = [k for k in _MERGE_ARGS if kwargs.get(k)]
        if given:
            raise click.UsageError(
                "--abort takes no other argument (it drops kept work, it runs no merge)"
            )
        return _abort(store, bool(kwargs.get("as_json")))

    return wrapper


def _abort(store: Any, as_json: bool) -> None:
    res = store.abort_merges()
    if as_json:
        emit_json({"aborted": res})
        return
    n, j = res["sessions_dropped"], res["journals_dropped"]
    if not n and not j:
        click.echo("nothing to drop: no interrupted merge kept work")
        return
    click.echo(
        f"dropped the work of {plural(n + j, 'interrupted merge')}"
        f" ({human_bytes(res['bytes_freed'])} of packs given back"
        f"{'; gc reclaims the rest' if j else ''})"
    )


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While a merge runs, SIGTERM stops it as Ctrl-C does (the merge keeps what it computed
    and says so) instead of ending the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
