"""fsck, du, gc."""

from __future__ import annotations

import sys

import click

from mergestore.api import Store
from mergestore.cli.common import json_option, with_store
from mergestore.cli.output import emit_json, human_bytes, plural, short


@click.command()
@click.option("--full", is_flag=True, help="Also read every block and check its hash.")
@json_option
@with_store
def fsck(store: Store, full: bool, as_json: bool) -> None:
    """Check the store's integrity; exits non-zero on any problem."""
    rep = store.fsck(full=full)
    if as_json:
        emit_json(rep.to_json())
    else:
        for p in rep.problems:
            who = f" (affects {', '.join(short(c) for c in p.commits)})" if p.commits else ""
            click.echo(f"{p.kind}: {p.message}{who}")
        state = "ok" if rep.ok else f"{len(rep.problems)} problem(s)"
        click.echo(
            f"{state}: {plural(rep.refs, 'ref')}, {plural(rep.commits, 'commit')}, "
            f"{plural(rep.objects, 'object')}, {plural(rep.blocks, 'stored block')}"
            + (f", {rep.blocks_verified:,} verified" if full else "")
        )
        if rep.affected_commits:
            click.echo(
                f"affected commits ({len(rep.affected_commits)}): "
                + " ".join(short(c) for c in rep.affected_commits)
            )
        if rep.blocks_without_check:
            n = rep.blocks_without_check
            click.echo(
                f"note: {plural(n, 'stored block')} written by store format 1 "
                f"{'has' if n == 1 else 'have'} no read check, so reads hash "
                f"{'it' if n == 1 else 'them'} with blake3; `mergestore repack` adds the checks"
            )
    if not rep.ok:
        sys.exit(1)


@click.command()
@json_option
@with_store
def du(store: Store, as_json: bool) -> None:
    """Logical vs stored bytes, by codec and by commit, with dedup and compression ratios."""
    u = store.disk_usage()
    if as_json:
        emit_json(u)
        return
    click.echo(f"commits            {u['commits']}")
    click.echo(f"logical            {human_bytes(u['logical_bytes'])}")
    click.echo(
        f"deduplicated       {human_bytes(u['deduplicated_bytes'])}   "
        f"{u['deduplicated_logical_ratio']:.3f} of logical"
    )
    click.echo(
        f"stored             {human_bytes(u['stored_bytes'])}   "
        f"stored/raw {u['stored_raw_ratio']:.3f}, {u['stored_logical_ratio']:.3f} of logical"
    )
    click.echo(
        f"packs on disk      {human_bytes(u['pack_bytes'])}   index {human_bytes(u['index_bytes'])}"
    )
    m = u["merges"]
    if m["materialized"] or m["lazy"] or m["evicted"]:
        ratio = f"{m['stored_raw_ratio']:.3f}" if m["stored_raw_ratio"] is not None else "-"
        click.echo(
            f"merge commits      {m['materialized']} materialized, {m['lazy']} lazy, "
            f"{m['evicted']} evicted; their blocks stored/raw {ratio}"
        )
        if m["evicted"]:
            click.echo(
                f"eviction saved     {human_bytes(m['evicted_stored_bytes'])} stored "
                f"({human_bytes(m['evicted_raw_bytes'])} raw)"
            )
    click.echo("by codec (stored blocks, raw -> stored, stored/raw):")
    for name, s in sorted(u["by_codec"].items()):
        ratio = s["stored_bytes"] / s["raw_bytes"] if s["raw_bytes"] else 1
        click.echo(
            f"  {name:<22} {plural(s['blocks'], 'stored block'):>20}  "
            f"{human_bytes(s['raw_bytes']):>12} -> "
            f"{human_bytes(s['stored_bytes']):>12} ({ratio:.3f})"
        )
    click.echo("by commit (stored bytes each commit added):")
    for c in u["by_commit"]:
        click.echo(
            f"  {c['id'][:10]}  {human_bytes(c['logical_bytes']):>12} logical  "
            f"+{human_bytes(c['new_stored_bytes']):>12} stored  {c['message']}"
        )


@click.command()
@click.option("--dry-run", "-n", is_flag=True, help="Only report what would be removed.")
@click.option(
    "--grace",
    default="14d",
    show_default=True,
    help="Keep reflog entries and commits younger than this (0, 30m, 2h, 14d, never). "
    "`--grace 0` removes everything no ref reaches.",
)
@click.option(
    "--repack-threshold",
    default=0.25,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Rewrite a pack once this fraction of it is dead.",
)
@json_option
@with_store
def gc(store: Store, dry_run: bool, grace: str, repack_threshold: float, as_json: bool) -> None:
    """Remove what no ref (and no recent reflog entry) reaches, and reclaim pack space."""
    rep = store.gc(grace=grace, dry_run=dry_run, repack_threshold=repack_threshold)
    if as_json:
        emit_json(rep.to_json())
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"live: {plural(rep.commits_live, 'commit')}, {plural(rep.objects_live, 'object')}, "
        f"{plural(rep.blocks_live, 'stored block')}"
    )
    click.echo(
        f"{verb}: {plural(rep.commits_removed, 'commit')}, "
        f"{plural(rep.objects_removed, 'object')}, {plural(rep.blocks_removed, 'stored block')}, "
        f"{plural(rep.stats_removed, 'statistic')}, "
        f"{plural(rep.reflog_expired, 'reflog entry', 'reflog entries')}"
    )
    rewrote = "would rewrite" if dry_run else "rewrote"
    click.echo(
        f"packs: {rewrote} {len(rep.packs_rewritten)}, {verb} {len(rep.packs_removed)}; "
        f"{human_bytes(rep.pack_bytes_before)} -> {human_bytes(rep.pack_bytes_after)} "
        f"({human_bytes(rep.bytes_reclaimed)} {'reclaimable' if dry_run else 'reclaimed'}; "
        f"{human_bytes(rep.dead_bytes_left)} dead below the repack threshold)"
    )
    for w in rep.warnings:
        click.echo(f"warning: {w}", err=True)


COMMANDS = [fsck, du, gc]
