"""The `mergestore` command line: argument parsing, output and exit codes only."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from mergestore import __version__
from mergestore.errors import MergestoreError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_path",
    type=click.Path(file_okay=False),
    default=None,
    help="Store directory (default: $MERGESTORE_DIR, then the nearest .mergestore upward).",
)
@click.version_option(__version__, prog_name="mergestore")
@click.pass_context
def cli(ctx: click.Context, store_path: str | None) -> None:
    """mergestore: a versioned checkpoint store with git-like semantics, built for merging."""
    ctx.obj = {"store": store_path}


def _register() -> None:
    from mergestore.cli import commands_refs, commands_store, maintenance

    for mod in (commands_store, commands_refs, maintenance):
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)
    # Later layers register themselves when present.
    for optional in ("diff", "merge", "demo", "repack", "status", "search", "remote"):
        try:
            mod = __import__(f"mergestore.cli.commands_{optional}", fromlist=["COMMANDS"])
        except ModuleNotFoundError as e:
            if e.name != f"mergestore.cli.commands_{optional}":
                raise
            continue
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        rv = cli.main(args=argv, prog_name="mergestore", standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except MergestoreError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        if os.environ.get("MERGESTORE_DEBUG"):
            raise
        where = f": {e.filename}" if e.filename else ""
        click.echo(f"error: {e.strerror or e}{where}", err=True)
        sys.exit(1)
    except Exception as e:  # a bug: say so in one line; MERGESTORE_DEBUG=1 shows the traceback
        if os.environ.get("MERGESTORE_DEBUG"):
            raise
        click.echo(f"internal error: {type(e).__name__}: {e} (set MERGESTORE_DEBUG=1)", err=True)
        sys.exit(70)


def run() -> None:
    """The `mergestore` console script: main(), then exit without tearing the interpreter down.

    By then the command has finished: the store is closed, every commit is durable (published
    by an LMDB transaction after its packs were synced) and the output is flushed below.
    Python's own shutdown (freeing torch's modules one by one) took 0.3-0.4 s of every command
    that imports torch, as long as the merge itself on small models.
    """
    code = 0
    try:
        main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            code = 1
        else:
            code = e.code or 0
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe, a closed stream
                stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
