"""The `mergestore` command line: argument parsing, output and exit codes only."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from mergestore import __version__
from mergestore.errors import MergestoreError

# The module of each command: only the invoked command's module is imported (a memo hit
# or `log` does not pay for every other command's imports); --help imports them all. A
# command not listed here still works, by importing every module (tests/test_cli_lazy.py
# checks this table against the modules' COMMANDS).
COMMAND_MODULES = {
    **dict.fromkeys(["init", "commit", "checkout", "log", "show", "ls"], "commands_store"),
    **dict.fromkeys(["branch", "tag", "reflog"], "commands_refs"),
    **dict.fromkeys(["fsck", "du", "gc"], "maintenance"),
    **dict.fromkeys(["diff", "analyze"], "commands_diff"),
    **dict.fromkeys(["merge", "plan", "replay", "explain", "blame"], "commands_merge"),
    "demo": "commands_demo",
    "repack": "commands_repack",
    **dict.fromkeys(["switch", "status"], "commands_status"),
    **dict.fromkeys(["materialize", "evict"], "commands_search"),
    **dict.fromkeys(["remote", "push", "fetch", "pull", "clone"], "commands_remote"),
    "saliency": "commands_saliency",
}
_CORE = ("commands_store", "commands_refs", "maintenance")
_OPTIONAL = ("diff", "merge", "demo", "repack", "status", "search", "remote", "saliency")


class LazyGroup(click.Group):
    """A click group that imports a command's module when the command is looked up."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None or not _load(module):
            _load_all()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        _load_all()
        return super().list_commands(ctx)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 success; 1 an error (one `error: ...` line on stderr); 2 a usage "
    "error (bad option or argument); 130 interrupted. With --json, an error also prints "
    '{"error": "...", "code": N} on stdout.',
)
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


_loaded: set[str] = set()


def _load(module: str) -> bool:
    """Register one command module's COMMANDS; False when an optional layer is absent."""
    if module in _loaded:
        return True
    try:
        mod = __import__(f"mergestore.cli.{module}", fromlist=["COMMANDS"])
    except ModuleNotFoundError as e:
        if module in _CORE or e.name != f"mergestore.cli.{module}":
            raise
        return False  # later layers register themselves when present
    for cmd in mod.COMMANDS:
        cli.add_command(cmd)
    _loaded.add(module)
    return True


def _load_all() -> None:
    for module in (*_CORE, *(f"commands_{m}" for m in _OPTIONAL)):
        _load(module)


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _fail(message: str, code: int, as_json: bool, details: dict | None = None) -> None:
    """One `error: ...` line on stderr; with --json also {"error", "code"} (and `details`,
    say what an interrupted merge kept) on stdout; exit."""
    message = " ".join(message.split())  # one line, whatever the message held
    click.echo(f"error: {message}", err=True)
    if as_json:
        click.echo(json.dumps({"error": message, "code": code, **(details or {})}))
    sys.exit(code)


def _usage_message(e: click.UsageError) -> str:
    msg = e.format_message().rstrip(".")
    if msg:
        msg = msg[0].lower() + msg[1:]
    path = e.ctx.command_path if e.ctx is not None else "mergestore"
    return f"{msg} (see '{path} --help')"


def hoist_global_options(args: list[str]) -> list[str]:
    """`mergestore log --store S` as `mergestore --store S log`: users type global options
    after the command too (git would refuse; every mergestore command takes --store)."""
    end = args.index("--") if "--" in args else len(args)
    moved: list[str] = []
    rest: list[str] = []
    i = 0
    while i < end:
        a = args[i]
        if a == "--store" and i + 1 < end:
            moved += args[i : i + 2]
            i += 2
            continue
        if a.startswith("--store="):
            moved.append(a)
        else:
            rest.append(a)
        i += 1
    return moved + rest + args[end:]


def main(argv: list[str] | None = None) -> None:
    """Entry point: every error is one `error: ...` line on stderr (and, with --json, one
    {"error": ..., "code": N} object on stdout) and an exit code: 0 success, 1 an error, 2 a
    usage error (a bad option or argument, as click and git use it), 130 interrupted."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
    try:
        rv = cli.main(
            args=hoist_global_options(args), prog_name="mergestore", standalone_mode=False
        )
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except MergestoreError as e:
        _fail(str(e), e.exit_code, as_json)
    except click.exceptions.Abort as e:  # click's form of Ctrl-C; a merge says what it kept
        why = e.__cause__ or e.__context__
        said = str(why) if isinstance(why, KeyboardInterrupt) else ""
        _fail(said or "aborted", EXIT_INTERRUPTED, as_json, getattr(why, "details", None))
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()  # `mergestore merge` alone: its help, as git does
        sys.exit(EXIT_USAGE)
    except click.UsageError as e:
        _fail(_usage_message(e), EXIT_USAGE, as_json)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code, as_json)
    except KeyboardInterrupt as e:  # a merge says what it kept (merge/session.py)
        _fail(str(e) or "interrupted", EXIT_INTERRUPTED, as_json, getattr(e, "details", None))
    except OSError as e:
        if os.environ.get("MERGESTORE_DEBUG"):
            raise
        where = f": {e.filename}" if e.filename else ""
        _fail(f"{e.strerror or e}{where}", EXIT_ERROR, as_json)
    except Exception as e:  # a bug: say so in one line; MERGESTORE_DEBUG=1 shows the traceback
        if os.environ.get("MERGESTORE_DEBUG"):
            raise
        _fail(
            f"internal error: {type(e).__name__}: {e} (set MERGESTORE_DEBUG=1)", EXIT_ERROR, as_json
        )


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
