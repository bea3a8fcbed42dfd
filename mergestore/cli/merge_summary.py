"""The lines `merge` ends with: what came out, against the base, and any warnings."""

from __future__ import annotations

from typing import Any

import click

from mergestore.cli.output import human_bytes, plural


def summary_lines(method: str, r: dict[str, Any]) -> list[str]:
    """Human lines for a merge run record (the same fields `merge --json` prints)."""
    lines = [
        f"{method}: {plural(r['tensors'], 'tensor')}, {plural(r['parameters'], 'parameter')}, "
        + ", ".join(f"{d} x{n}" for d, n in r["output_dtypes"].items())
    ]
    vs = ""
    if r.get("base_bytes"):
        vs = f" (base {human_bytes(r['base_bytes'])}, {r['output_bytes'] / r['base_bytes']:.2f}x)"
    lines.append(f"output   {human_bytes(r['output_bytes'])}{vs}")
    lines.append(
        f"read     {human_bytes(r['expert_bytes_read'])} of experts (full "
        f"{human_bytes(r['expert_bytes_full'])}), {human_bytes(r['base_bytes_read'])} of base; "
        f"{plural(r['blocks_read'], 'stored block')} read, "
        f"{plural(r['blocks_written'], 'new block')} written "
        f"({human_bytes(r['bytes_written'])} stored)"
    )
    if r.get("bytes_fetched"):  # a lazy clone: blocks read from its remote's packs
        lines.append(f"fetched  {human_bytes(r['bytes_fetched'])} from the remote")
    lines.append(
        f"time     {r['wall_seconds']:.2f} s, peak memory {human_bytes(r['peak_rss_bytes'])}"
    )
    lines.extend(f"warning: {w}" for w in r.get("warnings", ()))
    return lines


def import_lines(r: dict[str, Any]) -> list[str]:
    """One line per folder input the merge stored, and the pack bytes that added."""
    lines = []
    for i in r.get("imported", ()):
        n = i["new_blocks"]
        if n == 0 and i["bytes_stored"] == 0:
            lines.append(f"input    {i['path']}: already stored as {i['commit'][:12]}")
            continue
        lines.append(
            f"input    {i['path']}: stored as {i['commit'][:12]}, {n} new block"
            f"{'' if n == 1 else 's'}, {human_bytes(i['bytes_stored'])} added"
        )
    return lines


def print_summary(method: str, r: dict[str, Any]) -> None:
    for line in summary_lines(method, r):
        click.echo(line, err=True)
