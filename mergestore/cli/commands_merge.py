"""merge, plan, replay, explain, blame."""

from __future__ import annotations

import sys
from typing import Any

import click

from mergestore.api import Store
from mergestore.cli.common import json_option, with_store
from mergestore.cli.help_methods import MethodsHelp
from mergestore.cli.merge_abort import abort_option
from mergestore.cli.merge_options import apply_overrides, output_options, split_output
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
from mergestore.cli.saliency_output import (
    check_saliency_options,
    print_blame_scores,
    print_explain_saliency,
    print_saliency_summary,
    saliency_summary,
)


def _merge_options(fn: Any) -> Any:
    opts = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(exists=True, dir_okay=False),
            multiple=True,
            help="A mergekit YAML config (models are store refs or local paths). `merge` takes"
            " several (repeat it, or --config sweep/*.yml): one commit and branch each.",
        ),
        click.option(
            "--method", default=None, help="Merge method (linear, ties, ...: listed below)."
        ),
        click.option("--base", default=None, help="Base model (ref or path)."),
        click.option(
            "-w",
            "--weight",
            "weights",
            multiple=True,
            type=float,
            help="Per-model weight, in model order (repeatable).",
        ),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="NAME=VALUE",
            help="Method parameter (repeatable).",
        ),
        click.option("--dtype", default=None, help="Compute dtype (mergekit's dtype:)."),
        click.option("--out-dtype", default=None, help="Output dtype (mergekit's out_dtype:)."),
        click.option("--seed", type=int, default=None, help="Seed of the random drop masks."),
        click.option(
            "--budget",
            default=None,
            help="I/O budget of expert bytes read: 25%, 2GiB, 500MB, bytes.",
        ),
        click.option(
            "--max-error",
            type=float,
            default=None,
            help="Smallest read set whose bound is <= this share of the merge delta.",
        ),
        click.option(
            "--saliency",
            default=None,
            metavar="FILE|REF",
            help="Gradients or a Fisher diagonal (a safetensors file or a commit, e.g. from "
            "`mergestore saliency`): a budget keeps the blocks that matter most for the loss.",
        ),
        click.argument("models", nargs=-1),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _config(
    config_path: tuple[str, ...] | str | None,
    method: str | None,
    base: str | None,
    models: tuple[str, ...],
    weights: tuple[float, ...],
    params: tuple[str, ...],
    dtype: str | None,
    out_dtype: str | None,
    seed: int | None,
) -> Any:
    from mergestore.errors import MergeError
    from mergestore.merge.config import config_from_cli, load_config, with_overrides

    if isinstance(config_path, tuple):
        if len(config_path) > 1:
            raise MergeError("give one --config here (merge takes several)")
        config_path = config_path[0] if config_path else None
    kv = {}
    for item in params:
        k, sep, v = item.partition("=")
        if not sep:
            raise MergeError(f"--param {item!r}: expected NAME=VALUE")
        kv[k] = v
    if config_path:
        # What the config file says, the command line cannot say a second time: inputs and
        # their weights are refused; --param/--dtype/--out-dtype/--seed override the file.
        given = [name for name, v in (("--method", method), ("--base", base), ("-w", weights)) if v]
        if models:
            given.append("MODELS")
        if given:
            raise MergeError(
                f"{', '.join(given)}: not with --config (the config names the method, base,"
                " models and weights; --param, --dtype, --out-dtype and --seed override it)"
            )
        return with_overrides(load_config(config_path), kv, dtype, out_dtype, seed)
    if not method:
        raise MergeError("merge: give --method (or --config)")
    return config_from_cli(method, base, list(models), list(weights), kv, dtype, out_dtype, seed)


@click.command(cls=MethodsHelp)
@_merge_options
@click.option("-m", "--message", default="", help="Commit message.")
@click.option(
    "-b",
    "--branch",
    default=None,
    help="Branch for the merge commit (default: a new branch merge/METHOD-N). An existing "
    "branch moves, unless it points at the base or an input (then --force is needed).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write the merged HF folder here, in the same pass (as checkout would).",
)
@click.option(
    "--verify-inputs",
    is_flag=True,
    help="Read and hash every file of models given as folders (default: unchanged files cost a "
    "stat).",
)
@click.option("--lazy", is_flag=True, help="Commit the plan without computing (reads compute it).")
@click.option(
    "--force",
    is_flag=True,
    help="Override the safety checks: move -b BRANCH even if it points at the base or an "
    "input, and recompute a plan already merged (it must give the same blocks).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where tensors are merged: this process, or a Ray cluster"
    ' (pip install "mergestore[ray]").',
)
@click.option(
    "--ray-address",
    default=None,
    help="Ray cluster to join: auto, ray://host:10001 (default: $RAY_ADDRESS, else a local one).",
)
@output_options
@json_option
@with_store
@abort_option
def merge(
    store: Store,
    config_path: tuple[str, ...],
    method: str | None,
    base: str | None,
    weights: tuple[float, ...],
    params: tuple[str, ...],
    dtype: str | None,
    out_dtype: str | None,
    seed: int | None,
    budget: str | None,
    max_error: float | None,
    saliency: str | None,
    models: tuple[str, ...],
    message: str,
    branch: str | None,
    out_dir: str | None,
    verify_inputs: bool,
    lazy: bool,
    force: bool,
    executor: str,
    ray_address: str | None,
    as_json: bool,
    **opts: Any,
) -> None:
    """Merge MODELS (store refs, paths, hub ids, BASE+ADAPTER) into a new commit on BRANCH
    (and, with --out, into an HF folder).

    Without -b the commit goes to a new branch merge/METHOD-N; HEAD's branch does not move.
    A plan already merged is not computed again: its commit is returned and BRANCH moved.
    A --config with several YAML documents is a recipe (mergekit-multi): step NAME becomes
    a commit on BRANCH/NAME. Several --config files: one commit each, on a branch named
    after the file, run concurrently with --executor ray."""
    from mergestore.cli.commands_merge_many import run_many, yaml_files

    if config_path and yaml_files(models):  # --config sweep/*.yml: the shell spread the rest
        config_path, models = (*config_path, *models), ()
    check_saliency_options(saliency, budget, max_error, several=len(config_path) > 1)
    if len(config_path) > 1:
        if branch or out_dir or lazy:
            from mergestore.errors import MergeError

            raise MergeError("-b/--out/--lazy with several configs: one commit per file")
        return run_many(
            store,
            config_path,
            executor=executor,
            ray_address=ray_address,
            budget=budget,
            max_error=max_error,
            message=message,
            force=force,
            as_json=as_json,
        )
    if config_path:  # a recipe: --saliency ranks every step's budget
        from mergestore.cli.commands_search import maybe_run_recipe

        if maybe_run_recipe(
            store,
            config_path[0],
            branch,
            budget,
            max_error,
            lazy,
            force,
            message,
            as_json,
            saliency=saliency,
        ):
            return
    output, over = split_output(opts)
    if output["overwrite"] and out_dir is None:
        raise click.UsageError("--overwrite replaces the --out folder: give --out DIR too")
    cfg = _config(config_path, method, base, models, weights, params, dtype, out_dtype, seed)
    cfg = apply_overrides(cfg, over)
    fetched = store.bytes_fetched  # a lazy clone fetches the blocks the merge reads
    if out_dir is not None:  # before anything is read or stored
        from pathlib import Path

        if lazy:
            from mergestore.errors import MergeError

            raise MergeError(
                "--lazy computes nothing, so it cannot write --out (materialize first)"
            )

        from mergestore.merge.outfolder import check_target

        check_target(Path(out_dir), output["overwrite"])
    from mergestore.merge.ray_warm import warm_for

    warm_for(executor, ray_address)  # Ray joins and starts workers while the merge plans
    from mergestore.cli.merge_abort import sigterm_interrupts

    # one write session: a failure stores nothing; an interrupt keeps what was computed
    with sigterm_interrupts(), store.gc_paused(), store.merge_session() as session:
        prep = store.prepare_merge(
            cfg,
            session=session,
            budget=budget,
            max_error=max_error,
            verify_inputs=verify_inputs,
            saliency=saliency,
            branch=branch,
            force_branch=force,
        )
        with progress_bar(
            "merge", len(prep.tasks), not as_json, unit="tensors", io=True
        ) as advance:
            res = store.execute_merge(
                prep,
                progress=advance,
                branch=branch,
                message=message,
                out=out_dir,
                lazy=lazy,
                force=force,
                executor=executor,
                ray_address=ray_address,
                force_branch=force,
                **output,
            )
    out = {
        "commit": res.commit.hex() if res.commit else None,
        "branch": branch_name(res.branch),
        "previous": res.previous.hex() if res.previous else None,
        "plan": res.plan.hex(),
        "method": cfg.merge_method,
        "memo": False,
        "lazy": lazy,
        **res.run,
        "bytes_fetched": store.bytes_fetched - fetched,
    }
    if res.out is not None:
        out["out"] = res.out
    if as_json:
        emit_json(out)
        return
    click.echo(out["commit"])
    msg = store.get_commit(res.commit).message
    click.echo(moved_line(res.branch, res.previous, res.commit, msg), err=True)
    if res.out is not None:
        click.echo(f"wrote {res.out['path']} ({plural(res.out['files'], 'file')})")
        for line in replaced_lines(res.out.get("removed", []), res.out.get("kept", [])):
            click.echo(line, err=True)
    r = res.run
    from mergestore.cli.merge_summary import import_lines, print_summary

    for line in import_lines(r):
        click.echo(line, err=True)
    if _report_memo_or_lazy(out):
        for note in r.get("notes", ()):
            click.echo(f"note: {note}", err=True)
        return
    print_summary(cfg.merge_method, out)  # out: the run record and bytes fetched
    if r.get("error_bound") is not None:
        click.echo(
            f"error bound {r['error_bound']:.4g} (relative estimate "
            f"{prep.selection.error_bound_rel:.3%})",
            err=True,
        )
    for note in r.get("notes", ()):
        click.echo(f"note: {note}", err=True)


def _report_memo_or_lazy(out: dict[str, Any]) -> bool:
    """One line for a memo hit or a lazy merge; False for a computed merge."""
    if out.get("forced"):
        click.echo(
            f"recomputed: same blocks as {out['commit'][:12]} (plan {out['plan'][:12]})", err=True
        )
        return True
    if out.get("memo"):
        extra = ""
        if out.get("tensors_computed"):
            extra = f"; computed its {out['tensors_computed']} missing tensors"
        click.echo(f"already merged as {out['commit']} (plan {out['plan']}){extra}", err=True)
        return True
    if out.get("lazy"):
        click.echo(
            f"lazy: committed plan {out['plan'][:12]} with {out['tensors']} tensors, none "
            "computed (reads compute them; or `mergestore materialize`)",
            err=True,
        )
        return True
    return False


@click.command(cls=MethodsHelp)
@_merge_options
@json_option
@with_store
def plan(
    store: Store,
    config_path: tuple[str, ...],
    method: str | None,
    base: str | None,
    weights: tuple[float, ...],
    params: tuple[str, ...],
    dtype: str | None,
    out_dtype: str | None,
    seed: int | None,
    budget: str | None,
    max_error: float | None,
    saliency: str | None,
    models: tuple[str, ...],
    as_json: bool,
) -> None:
    """Print the plan a merge would run (reads no expert data)."""
    check_saliency_options(saliency, budget, max_error)
    cfg = _config(config_path, method, base, models, weights, params, dtype, out_dtype, seed)
    prep = store.prepare_merge(
        cfg, budget=budget, max_error=max_error, commit_paths=False, saliency=saliency
    )
    body = prep.plan_body
    summary = _plan_summary(prep)
    if as_json:
        emit_json({"plan": prep.plan.id.hex(), **summary, "body": body})
        return
    click.echo(f"plan {prep.plan.id.hex()}")
    _print_summary(summary)


def _plan_summary(prep: Any) -> dict[str, Any]:
    sel = prep.selection
    per_tensor: dict[str, dict[str, int]] = {}
    for t, ms in sel.read.items():
        per_tensor[t] = {prep.models[m].ref.text: len(b) for m, b in ms.items()}
    models = [
        {"ref": m.ref.text, "commit": m.commit.hex(), "index": i} for i, m in enumerate(prep.models)
    ]
    base = models[prep.base_index] if prep.base_index is not None else None
    return {
        "method": prep.cfg.merge_method,
        "models": models,
        "base": base,
        "inputs": [m for m in models if m is not base],
        "tensors": len(prep.plans),
        "budget_bytes": sel.budget_bytes,
        "expert_bytes_full": sel.expert_bytes_full,
        "expert_bytes_planned": sel.expert_bytes_planned if sel.active else sel.expert_bytes_full,
        "error_bound": sel.error_bound,
        "error_bound_rel": sel.error_bound_rel,
        "analyze_bytes_read": sel.analyze_bytes_read,
        "blocks_per_model": {
            prep.models[m].ref.text: n for m, n in sorted(sel.per_model_blocks.items())
        },
        "bytes_per_model": {
            prep.models[m].ref.text: n for m, n in sorted(sel.per_model_planned.items())
        },
        "blocks_per_tensor": per_tensor,
        **saliency_summary(sel),
        "notes": list(sel.notes),
    }


def _print_summary(s: dict[str, Any]) -> None:
    click.echo(f"method   {s['method']}  ({plural(s['tensors'], 'tensor')})")
    if s["base"] is not None:
        click.echo(f"base     {s['base']['ref']:<20} {short(s['base']['commit'])}")
    for m in s["inputs"]:
        click.echo(f"input    {m['ref']:<20} {short(m['commit'])}")
    if s["budget_bytes"] is not None:
        click.echo(f"budget   {human_bytes(s['budget_bytes'])}")
    click.echo(
        f"reads    {human_bytes(s['expert_bytes_planned'])} of "
        f"{human_bytes(s['expert_bytes_full'])} expert bytes"
    )
    for name, n in s["blocks_per_model"].items():
        click.echo(
            f"         {name:<20} {plural(n, 'block')}, {human_bytes(s['bytes_per_model'][name])}"
        )
    if s["error_bound"] is not None:
        click.echo(f"bound    {s['error_bound']:.4g} (relative {s['error_bound_rel']:.3%})")
    print_saliency_summary(s)
    for note in s["notes"]:
        click.echo(f"note: {note}")


@click.command()
@click.argument("ref")
@json_option
@with_store
def replay(store: Store, ref: str, as_json: bool) -> None:
    """Re-execute a merge commit's plan and check every output block id."""
    rep = store.replay(ref)
    if as_json:
        emit_json(rep)
    elif rep["identical"]:
        click.echo(
            f"identical: {plural(rep['tensors'], 'tensor')}, "
            f"{plural(rep['blocks'], 'block')} match "
            f"({rep['seconds']:.2f} s)"
        )
    else:
        click.echo(
            f"DIFFERENT: first differing tensor {rep['first_difference']}; "
            f"{rep['blocks_matched']}/{rep['blocks']} blocks match",
            err=True,
        )
        if rep.get("plan_engine") and rep["plan_engine"] != rep["engine"]:
            click.echo(
                f"note: the plan was made by {rep['plan_engine']}, this is {rep['engine']} "
                "(engine 2 changed how per-tensor random drops are drawn)",
                err=True,
            )
    if not rep["identical"]:
        sys.exit(1)


@click.command()
@click.argument("ref")
@json_option
@with_store
def explain(store: Store, ref: str, as_json: bool) -> None:
    """What a merge read, from whom; estimated vs realized."""
    info = store.explain(ref)
    if as_json:
        emit_json(info)
        return
    click.echo(f"merge {info['commit']}  plan {short(info['plan'])}")
    click.echo(f"method   {info['method']}")
    r = info["realized"]
    if info["base"] is not None:
        b = info["base"]
        click.echo(
            f"base     {b['ref']:<16} {short(b['commit'])}  read "
            f"{human_bytes(r['base_bytes_read'])} (not charged to the budget)"
        )
    for m in info["inputs"]:
        planned = info["planned_bytes_by_model"].get(str(m["index"]))
        real = r["expert_bytes_read_by_model"][m["index"]]
        extra = f"  planned {human_bytes(planned)}" if planned is not None else ""
        click.echo(f"input    {m['ref']:<16} {short(m['commit'])}  read {human_bytes(real)}{extra}")
    click.echo(
        f"expert   read {human_bytes(r['expert_bytes_read'])} of "
        f"{human_bytes(r['expert_bytes_full'])}"
        + (
            f", budget {human_bytes(r['budget_bytes'])}"
            if r.get("budget_bytes") is not None
            else ""
        )
    )
    click.echo(
        f"wrote    {human_bytes(r['bytes_written'])}; "
        f"{plural(r['blocks_read'], 'stored block')} read; {r['wall_seconds']:.2f} s"
    )
    if r.get("error_bound") is not None:
        click.echo(
            f"bound    {r['error_bound']:.4g} (relative {info['estimates']['error_bound_rel']:.3%})"
        )
    print_explain_saliency(info)
    real_err = info["realized_error"]
    if real_err is None:  # read everything: nothing to compare
        pass
    elif real_err["error"] is not None:
        rel = real_err["relative"]
        click.echo(
            f"realized {real_err['error']:.4g} (relative "
            + (f"{rel:.3%}" if rel is not None else "n/a")
            + f"; against the full-read merge {short(real_err['full_merge'])})"
        )
    else:
        click.echo(f"realized unknown: {real_err['why']}")
    for note in r.get("notes", ()):
        click.echo(f"note: {note}")


@click.command()
@click.argument("ref")
@click.argument("tensor")
@json_option
@with_store
def blame(store: Store, ref: str, tensor: str, as_json: bool) -> None:
    """Which inputs shaped which blocks of TENSOR in merge REF."""
    info = store.blame(ref, tensor)
    if as_json:
        emit_json(info)
        return
    click.echo(f"{tensor}: {plural(info['blocks'], 'block')}, method {info['method']}")
    for row in info["inputs"]:
        click.echo(f"  {row['ref']:<16} {row['status']}: read blocks {row['read'] or '-'}")
        print_blame_scores(row, info.get("saliency"))


COMMANDS = [merge, plan, replay, explain, blame]
