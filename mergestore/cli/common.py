"""Decorators and helpers shared by command modules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from mergestore.api import Store

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def open_store(ctx: click.Context) -> Store:
    return Store.open(ctx.find_root().obj.get("store"))


def with_store(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Open the store for a command and close it afterwards; passes it as `store`."""

    @functools.wraps(fn)
    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        store = open_store(ctx)
        from mergestore.cli.lockwait import lock_wait_reporter

        store.report_lock_waits(lock_wait_reporter())
        try:
            return fn(store, *args, **kwargs)
        finally:
            store.close()

    return wrapper


def parse_meta(items: tuple[str, ...]) -> dict[str, str]:
    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--meta")
        meta[key] = value
    return meta
