"""How plan, merge, explain and blame show a saliency-ranked budget (merge/saliency.py)."""

from __future__ import annotations

from typing import Any

import click

from mergestore.cli.output import human_bytes


def check_saliency_options(
    saliency: str | None, budget: str | None, max_error: float | None, *, several: bool = False
) -> None:
    if saliency is None:
        return
    if budget is None and max_error is None:
        raise click.UsageError("--saliency ranks blocks for a budget: give --budget or --max-error")
    if several:
        raise click.UsageError("--saliency takes one --config")


def saliency_summary(sel: Any) -> dict[str, Any]:
    """The plan summary's saliency part (none without --saliency)."""
    if not sel.saliency:
        return {}
    s = {k: v for k, v in sel.saliency.items() if k != "scores"}
    return {"saliency": s, "planning_bytes_read": sel.planning_bytes_read}


def print_saliency_summary(s: dict[str, Any]) -> None:
    sal = s.get("saliency")
    if not sal:
        return
    click.echo(
        f"saliency {sal['kind']} {sal['id'][:12]} ({sal['source']}); planning read "
        f"{human_bytes(s.get('planning_bytes_read') or 0)}"
    )
    click.echo(
        f"         score kept {sal['score_kept']:.4g}, omitted {sal['score_omitted']:.4g}; "
        f"predicted loss change of what is omitted {_change(sal)}"
    )


def _change(sal: dict[str, Any]) -> str:
    v = sal["predicted_loss_change_omitted"]
    return f"<= {v:.4g} (first order)" if sal["kind"] == "gradient" else f"~ {v:.4g} (Fisher)"


def print_explain_saliency(info: dict[str, Any]) -> None:
    sal = info.get("saliency")
    if not sal:
        return
    planning = info["realized"].get("planning_bytes_read")
    extra = f"; planning read {human_bytes(planning)}" if planning is not None else ""
    click.echo(f"saliency {sal['kind']} {sal['id'][:12]} ({sal['source']}){extra}")
    click.echo(
        f"         score kept {sal['score_kept']:.4g}, omitted {sal['score_omitted']:.4g}; "
        f"predicted loss change of the omitted blocks {_change(sal)}"
    )


def print_blame_scores(row: dict[str, Any], kind: str | None) -> None:
    """Each candidate block of one input: read or omitted, its score and predicted change."""
    for b in row.get("scores") or []:
        mark = "read   " if b["read"] else "omitted"
        change = (
            f"|dL| <= {b['loss_change']:.3g}"
            if kind == "gradient"
            else f"dL ~ {b['loss_change']:.3g}"
        )
        click.echo(f"    block {b['block']:>4} {mark} score {b['score']:.4g}  {change}")
