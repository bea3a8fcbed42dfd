"""remote, push, fetch, pull, clone."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from mergestore.api import Store
from mergestore.cli.common import json_option, with_store
from mergestore.cli.output import (
    binary_speed_column,
    emit_json,
    human_bytes,
    plural,
    progress_enabled,
    short,
)
from mergestore.remote.url import mask_url

Phase = Callable[[str, "int | None"], "Callable[[int], None] | None"]


@contextmanager
def transfer_progress(as_json: bool) -> Iterator[Phase | None]:
    """Byte-counting progress bars on stderr, one per phase (bytes sent or received/total)."""
    if not progress_enabled():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        binary_speed_column(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as prog:

        def phase(description: str, total: int | None) -> Callable[[int], None]:
            task = prog.add_task(description, total=total)
            return lambda n: prog.advance(task, n)

        yield phase


@click.group(invoke_without_command=True)
@click.option("-v", "--verbose", is_flag=True, help="Show URLs (secrets masked).")
@json_option
@click.pass_context
def remote(ctx: click.Context, verbose: bool, as_json: bool) -> None:
    """List remotes; `remote add NAME URL`, `remote remove NAME`."""
    if ctx.invoked_subcommand is not None:
        return
    from mergestore.cli.common import open_store

    store = open_store(ctx)
    try:
        remotes = store.remotes()
        lazy = _lazy_flags(store)
    finally:
        store.close()
    if as_json:
        emit_json(
            {
                "remotes": [
                    {"name": n, "url": mask_url(u), "lazy": lazy[n], **_credentials(u, True)}
                    for n, u in remotes.items()
                ]
            }
        )
        return
    for name, url in remotes.items():
        if verbose:
            note = _credentials(url, False).get("credentials")
            click.echo(
                f"{name}\t{mask_url(url)}"
                + ("\t(lazy)" if lazy[name] else "")
                + (f"\t{note}" if note else "")
            )
        else:
            click.echo(name)


def _credentials(url: str, as_json: bool) -> dict:
    """A gs:// or az:// remote's credentials from the environment, secrets masked (cloud.py)."""
    from mergestore.remote.cloud import TABLES, credential_summary, store_config
    from mergestore.remote.url import parse_url

    spec = parse_url(url)
    if spec.scheme not in TABLES:
        return {}
    if as_json:
        return {"credentials": dict(store_config(spec).used)}
    return {"credentials": credential_summary(spec)}


def _lazy_flags(store: Store) -> dict[str, bool]:
    from mergestore.remote.config import load_remotes

    return {n: r.lazy for n, r in load_remotes(store.path).items()}


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--lazy", is_flag=True, help="Fetch records where blocks are, not the blocks.")
@json_option
@with_store
def remote_add(store: Store, name: str, url: str, lazy: bool, as_json: bool) -> None:
    """Add remote NAME at URL (s3://bucket/prefix, file:///path, gs://, az://)."""
    text = store.add_remote(name, url, lazy=lazy)
    if as_json:
        emit_json({"remote": name, "url": mask_url(text), "lazy": lazy})
    else:
        click.echo(f"{name}\t{mask_url(text)}")


@remote.command("remove")
@click.argument("name")
@json_option
@with_store
def remote_remove(store: Store, name: str, as_json: bool) -> None:
    """Forget remote NAME and its remote-tracking refs (the remote itself is untouched)."""
    text = store.remove_remote(name)
    if as_json:
        emit_json({"removed": name, "url": mask_url(text)})
    else:
        click.echo(f"Removed remote {name} ({mask_url(text)})")


@click.command()
@click.argument("remote_name", metavar="REMOTE")
@click.argument("refs", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Move remote refs even if not a fast-forward.")
@click.option("--tags", is_flag=True, help="Push every tag too.")
@json_option
@with_store
def push(
    store: Store, remote_name: str, refs: tuple[str, ...], force: bool, tags: bool, as_json: bool
) -> int:
    """Send branches or tags (default: the current branch) and what they need to REMOTE."""
    with transfer_progress(as_json) as phase:
        res = store.push(remote_name, *refs, force=force, tags=tags, progress=phase)
    if as_json:
        emit_json(res.to_json())
    else:
        click.echo(
            f"{plural(res.blocks, 'stored block')} in {plural(res.packs, 'pack')} "
            f"({human_bytes(res.block_bytes)} sent), {plural(res.objects, 'object')}, "
            f"{human_bytes(res.metadata_bytes)} of metadata"
        )
        for r in res.refs:
            name = r.ref.split("/", 2)[2]
            if r.status == "ok":
                old = short(r.old, 10) if r.old else "(new)"
                click.echo(f"  {name} -> {remote_name}/{name}  {old}..{short(r.new, 10)}")
            elif r.status == "up-to-date":
                click.echo(f"  {name} -> {remote_name}/{name}  up to date")
    for r in res.refs:
        if r.status == "rejected":
            click.echo(r.reason, err=True)
    return 0 if res.ok else 1


@click.command()
@click.argument("remote_name", metavar="REMOTE")
@json_option
@with_store
def fetch(store: Store, remote_name: str, as_json: bool) -> None:
    """Bring REMOTE's branches in as remote-tracking refs (REMOTE/NAME) and their data."""
    with transfer_progress(as_json) as phase:
        res = store.fetch(remote_name, progress=phase)
    if as_json:
        emit_json(res.to_json())
        return
    _print_fetch(res)


def _print_fetch(res) -> None:  # type: ignore[no-untyped-def]
    what = (
        f"{plural(res.promised, 'stored block')} left on the remote (lazy)"
        if res.lazy
        else f"{plural(res.blocks, 'stored block')} ({human_bytes(res.block_bytes)})"
    )
    click.echo(f"fetched {plural(res.objects, 'object')}, {what}")
    for name, (old, new) in res.updated.items():
        shown = name.removeprefix("refs/remotes/").removeprefix("refs/")
        click.echo(f"  {shown}  {short(old, 10) if old else '(new)'}..{short(new, 10)}")


@click.command()
@click.argument("remote_name", metavar="REMOTE")
@click.argument("branch")
@json_option
@with_store
def pull(store: Store, remote_name: str, branch: str, as_json: bool) -> None:
    """fetch REMOTE, then fast-forward BRANCH to REMOTE/BRANCH (nothing else)."""
    with transfer_progress(as_json) as phase:
        res = store.pull(remote_name, branch, progress=phase)
    if as_json:
        emit_json(res.to_json())
        return
    if res.status == "up-to-date":
        click.echo(f"{branch} is up to date with {remote_name}/{branch}")
    else:
        old = short(res.old, 10) if res.old else "(new)"
        click.echo(f"{branch}: {old}..{short(res.new, 10)} ({res.status})")


@click.command()
@click.argument("url")
@click.argument("path", type=click.Path())
@click.option("--lazy", is_flag=True, help="Fetch no blocks now; read them on demand.")
@json_option
def clone(url: str, path: str, lazy: bool, as_json: bool) -> None:
    """Make a new store at PATH from the remote at URL (remote `origin`)."""
    from mergestore.remote.api import do_clone

    with transfer_progress(as_json) as phase:
        repo, res = do_clone(url, path, lazy=lazy, phase=phase)
    head = repo.head_target()
    repo.close()
    if as_json:
        out = res.to_json()
        out.update({"store": path, "url": mask_url(url), "head": head})
        emit_json(out)
        return
    click.echo(f"Cloned {mask_url(url)} into {path}")
    _print_fetch(res)
    sys.stdout.flush()


COMMANDS = [remote, push, fetch, pull, clone]
