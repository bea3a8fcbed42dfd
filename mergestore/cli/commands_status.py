"""switch, status: git's habits for where HEAD is and what the store holds."""

from __future__ import annotations

import click

from mergestore.api import Store
from mergestore.cli.common import json_option, with_store
from mergestore.cli.output import emit_json, human_bytes, short


@click.command()
@click.argument("branch")
@click.option("-c", "--create", is_flag=True, help="Create BRANCH at START first.")
@click.argument("start", required=False, default="HEAD")
@json_option
@with_store
def switch(store: Store, branch: str, create: bool, start: str, as_json: bool) -> None:
    """Point HEAD at BRANCH (git switch); -c creates it at START (default HEAD)."""
    from mergestore.status import switch as do_switch

    cid = do_switch(store, branch, create=create, start=start)
    if as_json:
        emit_json({"branch": branch, "head": cid.hex(), "created": create})
        return
    what = "a new branch" if create else "branch"
    click.echo(f"Switched to {what} '{branch}' ({short(cid)})")


@click.command()
@json_option
@with_store
def status(store: Store, as_json: bool) -> None:
    """HEAD, the current branch, store size, running operations, remotes ahead/behind."""
    from mergestore.status import status as get_status

    st = get_status(store)
    if as_json:
        emit_json(st)
        return
    if st["detached"]:
        click.echo(f"HEAD detached at {short(st['head'] or '')}")
    elif st["unborn"]:
        click.echo(f"On branch {st['branch']} (no commits yet)")
    else:
        click.echo(f"On branch {st['branch']}, HEAD {short(st['head'])}")
    click.echo(
        f"store {st['store']}: {human_bytes(st['store_bytes'])} on disk, "
        f"{st['branches']} branches, {st['tags']} tags"
    )
    if st["in_progress"]:
        for op in st["in_progress"]:
            click.echo(f"in progress: {op}")
    else:
        click.echo("nothing in progress, nothing to resume")
    for r in st["remotes"]:
        if r["ahead"] == r["behind"] == 0:
            rel = "up to date with"
        else:
            rel = f"ahead {r['ahead']}, behind {r['behind']} of"
        click.echo(f"branch {r['branch']} is {rel} {r['remote']}/{r['branch']}")


COMMANDS = [switch, status]
