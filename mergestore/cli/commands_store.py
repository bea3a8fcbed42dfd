"""init, commit, checkout, log, show, ls."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from mergestore.api import STORE_DIRNAME, Store
from mergestore.cli.common import json_option, parse_meta, with_store
from mergestore.cli.output import (
    branch_name,
    emit_json,
    human_bytes,
    moved_line,
    plural,
    progress_bar,
    replaced_lines,
    short,
)
from mergestore.formats.checkpoint import scan_checkpoint
from mergestore.formats.outdir import FORCE_RULE


def _size_arg(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1) if t else 1
    num = t[:-1] if t[-1:] in units else t
    try:
        return int(float(num) * mult)
    except ValueError:
        raise click.BadParameter(f"not a size: {text!r}") from None


@click.command()
@click.argument("path", required=False, type=click.Path())
@click.option("--block-size", default="1MiB", show_default=True, help="Target block size.")
@click.option(
    "--zstd-level",
    default=3,
    show_default=True,
    type=int,
    help="zstd level for the blocks' compression (higher: smaller, slower).",
)
@click.option("--no-delta", is_flag=True, help="Never store blocks as deltas against a base.")
@json_option
@click.pass_context
def init(
    ctx: click.Context,
    path: str | None,
    block_size: str,
    zstd_level: int,
    no_delta: bool,
    as_json: bool,
) -> None:
    """Create a store at PATH (default ./.mergestore, or --store)."""
    target = Path(
        path
        or ctx.find_root().obj.get("store")
        or os.environ.get("MERGESTORE_DIR")
        or STORE_DIRNAME
    )
    from mergestore.api import CONFIG_FILE

    if (target / CONFIG_FILE).is_file():  # as git init: say so, change nothing, succeed
        if as_json:
            emit_json({"store": str(target.resolve()), "already": True})
        else:
            click.echo(f"{target.resolve()} is already a mergestore (left unchanged)")
        return
    store = Store.init(
        target, block_size=_size_arg(block_size), zstd_level=zstd_level, delta_codecs=not no_delta
    )
    store.close()
    if as_json:
        emit_json(
            {
                "store": str(target.resolve()),
                "block_size": store.repo.config.block_size,
                "zstd_level": zstd_level,
                "delta_codecs": not no_delta,
            }
        )
    else:
        click.echo(f"Initialized empty mergestore in {target.resolve()}")


@click.command()
@click.argument("path", type=click.Path())
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("-b", "--branch", default=None, help="Branch to commit to (default: HEAD's).")
@click.option("--base", default=None, help="Commit this checkpoint was fine-tuned from.")
@click.option("--meta", multiple=True, help="User metadata KEY=VALUE (repeatable).")
@click.option(
    "--author",
    default=None,
    help="Author of the commit (default: $MERGESTORE_AUTHOR, else user@host).",
)
@click.option("--no-stats", is_flag=True, help="Don't compute delta statistics against --base.")
@click.option(
    "--verify-inputs",
    is_flag=True,
    help="Read and hash every file (default: files unchanged since stored cost a stat).",
)
@json_option
@with_store
def commit(
    store: Store,
    path: str,
    message: str,
    branch: str | None,
    base: str | None,
    meta: tuple[str, ...],
    author: str | None,
    no_stats: bool,
    verify_inputs: bool,
    as_json: bool,
) -> None:
    """Store the checkpoint at PATH as a new commit.

    PATH is an HF folder, one .safetensors file, a PEFT LoRA adapter folder, a folder of
    pytorch_model*.bin weights (converted with torch.load(weights_only=True)), or a Hugging
    Face id org/name[@revision] (from the local HF cache, else downloaded).
    """
    from mergestore.sources import prepared_source

    with prepared_source(path) as src:  # a hub id or .bin weights: the folder to store
        total = sum(f.size for f in scan_checkpoint(src.path).files)
        with progress_bar("commit", total, not as_json) as advance:
            res = store.commit(
                src.path,
                message=message,
                branch=branch,
                base=base,
                meta={**src.meta, **parse_meta(meta)},
                author=author,
                stats=not no_stats,
                progress=advance,
                verify_inputs=verify_inputs,
            )
    if as_json:
        emit_json(
            {
                "commit": res.commit.hex(),
                "tree": res.tree.hex(),
                "branch": branch_name(res.branch),
                "previous": res.previous.hex() if res.previous else None,
                "files": res.files,
                "tensors": res.tensors,
                "logical_bytes": res.logical_bytes,
                "written_bytes": res.written_bytes,
                "blocks": res.total_blocks,
                "new_blocks": res.new_blocks,
                "stats_computed": res.stats_computed,
                "files_read": res.files_read,
                "bytes_read": res.bytes_read,
                "seconds": round(res.seconds, 4),
            }
        )
    else:
        click.echo(res.commit.hex())
        click.echo(moved_line(res.branch, res.previous, res.commit, message), err=True)
        rate = res.logical_bytes / res.seconds if res.seconds else 0
        click.echo(
            f"{plural(res.files, 'file')}, {plural(res.tensors, 'tensor')}, "
            f"{plural(res.total_blocks, 'block')} ({res.new_blocks:,} new), "
            f"{human_bytes(res.logical_bytes)}: wrote "
            f"{human_bytes(res.written_bytes)} in {res.seconds:.2f} s ({human_bytes(rate)}/s)"
            + (
                f"; {res.files - res.files_read} unchanged files taken on a stat"
                if res.files_read < res.files
                else ""
            ),
            err=True,
        )


@click.command()
@click.argument("ref")
@click.argument("out", type=click.Path())
@click.option(
    "--force",
    is_flag=True,
    help="Write over a non-empty directory: " + FORCE_RULE + ".",
)
@click.option(
    "--tensor",
    "tensors",
    multiple=True,
    metavar="GLOB",
    help="Only these tensors, into one model.safetensors (repeatable).",
)
@json_option
@with_store
def checkout(
    store: Store, ref: str, out: str, force: bool, tensors: tuple[str, ...], as_json: bool
) -> None:
    """Write commit REF's files into directory OUT, byte for byte.

    All or nothing: the files are written into a temporary sibling of OUT that takes OUT's
    place at the end; a failed or interrupted checkout leaves OUT as it was."""
    cid = store.resolve(ref)
    total = store.commit_sizes(cid)["logical_bytes"] if not tensors else None
    with progress_bar("checkout", total, not as_json) as advance:
        res = store.checkout(
            cid.hex(), out, force=force, tensors=list(tensors) or None, progress=advance
        )
    if as_json:
        emit_json(
            {
                "commit": cid.hex(),
                "out": str(Path(out).resolve()),
                "files": res.files,
                "bytes_written": res.bytes_written,
                "bytes_read": res.bytes_read,
                "seconds": round(res.seconds, 4),
                "kept": res.kept,
                "removed": res.removed,
            }
        )
    else:
        click.echo(
            f"checked out {short(cid)} into {out}: {plural(res.files, 'file')}, "
            f"{human_bytes(res.bytes_written)} in {res.seconds:.2f} s"
        )
        for line in replaced_lines(res.removed, res.kept):
            click.echo(line, err=True)


def _fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t))


def _ref_data(store: Store) -> dict[bytes, list[dict[str, Any]]]:
    """The refs at each commit, as data (log --json): branches first, then tags."""
    refs: dict[bytes, list[dict[str, Any]]] = {}
    head = store.current_branch()
    for name, cid in store.branches().items():
        refs.setdefault(cid, []).append({"kind": "branch", "name": name, "head": name == head})
    for name, cid in store.tags().items():
        refs.setdefault(cid, []).append({"kind": "tag", "name": name, "head": False})
    return refs


def _decorations(refs: dict[bytes, list[dict[str, Any]]]) -> dict[bytes, list[str]]:
    """git's display of them: `HEAD -> main`, `math`, `tag: v1`."""

    def show(r: dict[str, Any]) -> str:
        if r["kind"] == "tag":
            return f"tag: {r['name']}"
        return f"HEAD -> {r['name']}" if r["head"] else r["name"]

    return {cid: [show(r) for r in rs] for cid, rs in refs.items()}


@click.command()
@click.argument("ref", required=False)
@click.option("--all", "all_refs", is_flag=True, help="Commits reachable from any ref.")
@click.option("--graph", is_flag=True, help="Draw the commit DAG.")
@click.option(
    "-n",
    "--max-count",
    type=click.IntRange(min=0),
    default=None,
    help="Show at most this many commits (0 or more).",
)
@click.option("--oneline", is_flag=True, help="One line per commit: short id, refs, subject.")
@json_option
@with_store
def log(
    store: Store,
    ref: str | None,
    all_refs: bool,
    graph: bool,
    max_count: int | None,
    oneline: bool,
    as_json: bool,
) -> None:
    """Show commits reachable from REF (default HEAD)."""
    entries = store.log(ref, all_refs=all_refs)
    if max_count is not None:
        entries = entries[:max_count]
    refs = _ref_data(store)
    deco = _decorations(refs)
    if as_json:
        emit_json(
            {
                "head": store.current_branch(),
                "commits": [
                    {
                        "id": e.id.hex(),
                        "parents": [p.hex() for p in e.commit.parents],
                        "message": e.commit.message,
                        "author": e.commit.author,
                        "time": e.commit.time,
                        "base": e.commit.base.hex() if e.commit.base else None,
                        "plan": e.commit.plan.hex() if e.commit.plan else None,
                        "state": store.merge_state(e.id),
                        "refs": refs.get(e.id, []),
                    }
                    for e in entries
                ],
            }
        )
        return
    if graph:
        from mergestore.cli.graph import draw_graph

        for line in draw_graph(entries, deco):
            click.echo(line)
        return
    if oneline:
        for e in entries:
            d = f" ({', '.join(deco[e.id])})" if e.id in deco else ""
            subject = (e.commit.message or "(no message)").splitlines()[0]
            click.echo(click.style(short(e.id, 10), fg="yellow") + d + " " + subject)
        return
    for e in entries:
        c = e.commit
        d = f" ({', '.join(deco[e.id])})" if e.id in deco else ""
        st = store.merge_state(e.id) if c.plan else "materialized"
        mark = f" [{st}]" if st != "materialized" else ""
        click.echo(click.style(f"commit {e.id.hex()}", fg="yellow") + d + mark)
        if len(c.parents) > 1:
            click.echo("Merge:  " + " ".join(short(p, 8) for p in c.parents))
        click.echo(f"Author: {c.author}")
        click.echo(f"Date:   {_fmt_time(c.time)}")
        if c.base:
            click.echo(f"Base:   {short(c.base)}")
        click.echo("")
        for line in (c.message or "(no message)").splitlines():
            click.echo(f"    {line}")
        click.echo("")


@click.command()
@click.argument("ref", default="HEAD")
@json_option
@with_store
def show(store: Store, ref: str, as_json: bool) -> None:
    """Show a commit: fields, files, tensor count, logical and stored bytes."""
    cid = store.resolve(ref)
    c = store.get_commit(cid)
    files = store.files(cid)
    sizes = store.commit_sizes(cid)
    plan = store.plan_summary(cid) if c.plan and hasattr(store, "plan_summary") else None
    info = {
        "id": cid.hex(),
        "tree": c.tree.hex(),
        "parents": [p.hex() for p in c.parents],
        "base": c.base.hex() if c.base else None,
        "message": c.message,
        "author": c.author,
        "time": c.time,
        "meta": c.meta,
        "plan": c.plan.hex() if c.plan else None,
        "state": store.merge_state(cid),
        "files": [
            {"path": f.path, "kind": f.kind, "size": f.size, "tensors": f.tensors} for f in files
        ],
        "tensors": sum(f.tensors for f in files),
        **sizes,
    }
    if plan is not None:
        info["recipe"] = plan
    if as_json:
        emit_json(info)
        return
    click.echo(click.style(f"commit {cid.hex()}", fg="yellow"))
    for p in c.parents:
        click.echo(f"parent  {p.hex()}")
    if c.base:
        click.echo(f"base    {c.base.hex()}")
    click.echo(f"tree    {c.tree.hex()}")
    if info["state"] != "materialized":
        from mergestore.cli.commands_search import state_line

        click.echo(state_line(store, cid, info["state"]))
    click.echo(f"author  {c.author}")
    click.echo(f"date    {_fmt_time(c.time)}")
    for k, v in sorted(c.meta.items()):
        click.echo(f"meta    {k}={v}")
    click.echo("")
    for line in (c.message or "(no message)").splitlines():
        click.echo(f"    {line}")
    click.echo("")
    if plan is not None:
        from mergestore.cli.graph import format_recipe

        full_plan = store.merge_info(cid)[2]
        for line in format_recipe(plan, full_plan):
            click.echo(line)
        click.echo("")
    click.echo(
        f"{plural(len(files), 'file')}, {plural(info['tensors'], 'tensor')}, "
        f"{plural(sizes['blocks'], 'block')}"
    )
    ratio = sizes["stored_raw_ratio"]
    click.echo(
        f"logical {human_bytes(sizes['logical_bytes'])}, deduplicated "
        f"{human_bytes(sizes['deduplicated_bytes'])}, stored {human_bytes(sizes['stored_bytes'])}"
        + (f" (stored/raw {ratio:.3f})" if ratio is not None else "")
    )
    for f in files:
        extra = f"  ({plural(f.tensors, 'tensor')})" if f.kind == "tensorfile" else ""
        click.echo(f"  {human_bytes(f.size):>12}  {f.path}{extra}")


@click.command()
@click.argument("ref", default="HEAD")
@click.option("--tensors", "show_tensors", is_flag=True, help="List tensors instead of files.")
@json_option
@with_store
def ls(store: Store, ref: str, show_tensors: bool, as_json: bool) -> None:
    """List the files (or tensors) of a commit."""
    cid = store.resolve(ref)
    if show_tensors:
        recs = store.tensor_shapes(cid)  # a lazy merge's from its plan: it stays lazy
        lazy = store.merge_state(cid) == "lazy"
        if as_json:
            emit_json(
                {
                    "commit": cid.hex(),
                    "tensors": [
                        {
                            "name": t.name,
                            "dtype": t.dtype,
                            "shape": list(t.shape),
                            "bytes": t.nbytes,
                            "blocks": t.blocks,
                        }
                        for t in recs
                    ],
                    "blocks": sum(t.blocks for t in recs),
                    "computed": not lazy,
                }
            )
            return
        for t in recs:
            shape = "x".join(map(str, t.shape)) or "scalar"
            n = t.blocks
            click.echo(
                f"{t.dtype:>5} {shape:>16} {n:>5} {'block ' if n == 1 else 'blocks'}  {t.name}"
            )
        click.echo(
            f"{plural(len(recs), 'tensor')}, {plural(sum(t.blocks for t in recs), 'block')}"
            + ("  (a lazy merge, not computed: from its plan)" if lazy else "")
        )
        return
    files = store.files(cid)
    if as_json:
        emit_json(
            {
                "commit": cid.hex(),
                "files": [
                    {"path": f.path, "kind": f.kind, "size": f.size, "tensors": f.tensors}
                    for f in files
                ],
            }
        )
        return
    for f in files:
        click.echo(f"{f.size:>14}  {f.path}")


COMMANDS = [init, commit, checkout, log, show, ls]
