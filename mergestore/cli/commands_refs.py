"""branch, tag, reflog."""

from __future__ import annotations

import time

import click

from mergestore.api import Store
from mergestore.cli.common import json_option, with_store
from mergestore.cli.output import emit_json, short


@click.command()
@click.argument("name", required=False)
@click.argument("ref", required=False)
@click.option("-d", "--delete", is_flag=True, help="Delete branch NAME.")
@click.option(
    "-m", "--move", is_flag=True, help="Rename branch NAME to REF (or HEAD's branch to NAME)."
)
@click.option("-M", "force_move", is_flag=True, help="Rename, replacing an existing branch.")
@click.option("-f", "--force", is_flag=True, help="Move NAME even if it exists.")
@json_option
@with_store
def branch(
    store: Store,
    name: str | None,
    ref: str | None,
    delete: bool,
    move: bool,
    force_move: bool,
    force: bool,
    as_json: bool,
) -> None:
    """List branches, create NAME at REF (default HEAD), delete NAME with -d, or rename with
    -m (`branch -m OLD NEW`, or `branch -m NEW` for HEAD's branch)."""
    move = move or force_move
    if delete and move:
        raise click.UsageError("-d and -m do not go together")
    if delete:
        if not name:
            raise click.UsageError("branch -d needs a NAME")
        old = store.delete_branch(name)
        if as_json:
            emit_json({"deleted": name, "was": old.hex()})
        else:
            click.echo(f"Deleted branch {name} (was {short(old)}).")
        return
    if move:
        if not name:
            raise click.UsageError("branch -m needs NEW (or OLD NEW)")
        src, dst = (name, ref) if ref is not None else (store.current_branch(), name)
        cid = store.rename_branch(src, dst, force=force or force_move)
        if as_json:
            emit_json(
                {"renamed": src, "branch": dst, "commit": cid.hex(), "head": store.current_branch()}
            )
        else:
            click.echo(f"Renamed branch {src} -> {dst} ({short(cid)}).")
        return
    if name is not None:  # "" is an invalid name, not "no name"
        cid = store.create_branch(name, ref or "HEAD", force=force)
        warnings = _ambiguity(name, "tag", store.tags())
        if as_json:
            emit_json({"branch": name, "commit": cid.hex(), "warnings": warnings})
        else:
            click.echo(f"{name} -> {short(cid)}")
            for w in warnings:
                click.echo(f"warning: {w}", err=True)
        return
    branches = store.branches()
    head = store.current_branch()
    if as_json:
        emit_json({"head": head, "branches": {k: v.hex() for k, v in branches.items()}})
        return
    for bname, cid in branches.items():
        mark = "*" if bname == head else " "
        msg = (store.get_commit(cid).message.splitlines() or [""])[0]
        click.echo(f"{mark} {bname:<24} {short(cid, 10)} {msg}")


@click.command()
@click.argument("name", required=False)
@click.argument("ref", required=False)
@click.option("-d", "--delete", is_flag=True, help="Delete tag NAME.")
@click.option("-f", "--force", is_flag=True, help="Move NAME even if it exists.")
@json_option
@with_store
def tag(
    store: Store, name: str | None, ref: str | None, delete: bool, force: bool, as_json: bool
) -> None:
    """List tags, create tag NAME at REF (default HEAD), or delete NAME with -d."""
    if delete:
        if not name or ref is not None:
            raise click.UsageError("tag -d needs one NAME")
        old = store.delete_tag(name)
        if as_json:
            emit_json({"deleted": name, "was": old.hex()})
        else:
            click.echo(f"Deleted tag {name} (was {short(old)}).")
        return
    if name is not None:  # "" is an invalid name, not "no name"
        cid = store.create_tag(name, ref or "HEAD", force=force)
        warnings = _ambiguity(name, "branch", store.branches())
        if as_json:
            emit_json({"tag": name, "commit": cid.hex(), "warnings": warnings})
        else:
            click.echo(f"{name} -> {short(cid)}")
            for w in warnings:
                click.echo(f"warning: {w}", err=True)
        return
    tags = store.tags()
    if as_json:
        emit_json({"tags": {k: v.hex() for k, v in tags.items()}})
        return
    for tname, cid in tags.items():
        click.echo(f"{tname:<24} {short(cid, 10)}")


def _ambiguity(name: str, other: str, others: dict[str, bytes]) -> list[str]:
    """git warns when a new ref makes a name ambiguous; every use of it is then an error."""
    if name not in others:
        return []
    return [
        f"{other} {name!r} exists too: {name!r} is now ambiguous wherever it is used "
        f"(say refs/heads/{name} or refs/tags/{name})"
    ]


@click.command()
@click.argument("ref", required=False)
@json_option
@with_store
def reflog(store: Store, ref: str | None, as_json: bool) -> None:
    """Show how refs moved (all refs, or REF), oldest first."""
    entries = store.reflog(ref)
    if as_json:
        emit_json(
            {
                "entries": [
                    {
                        "ref": name,
                        "old": e.old.hex() if e.old else None,
                        "new": e.new.hex() if e.new else None,
                        "time": e.time,
                        "message": e.message,
                    }
                    for name, e in entries
                ]
            }
        )
        return
    for name, e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
        old = short(e.old, 10) if e.old else "0" * 10
        new = short(e.new, 10) if e.new else "0" * 10
        click.echo(f"{when}  {name:<28} {old} -> {new}  {e.message}")


COMMANDS = [branch, tag, reflog]
