"""`merge --help` and `plan --help` list every merge method, read from the registry.

The list is built when help is shown, so a plain `mergestore merge` does not import the method
modules any earlier than it would.
"""

from __future__ import annotations

import click


def method_rows() -> list[tuple[str, str]]:
    """(name, what it does and its parameters) for every registered method, sorted."""
    from mergestore.merge.modelcard import METHODS
    from mergestore.ops.registry import get_method, method_names
    from mergestore.ops.spec import BaseRule

    rows = []
    for name in method_names():
        spec = get_method(name)
        line = METHODS[name][2] if name in METHODS else spec.description.split("\n")[0]
        params = ", ".join(p.name for p in spec.params)
        base = {BaseRule.REQUIRED: "needs --base", BaseRule.OPTIONAL: "--base optional"}.get(
            spec.base, "no base"
        )
        rows.append((name, f"{line} ({base}; parameters: {params or 'none'})"))
    return rows


class MethodsHelp(click.Command):
    """A command whose help ends with the merge methods."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        with formatter.section("Methods (--method, or merge_method: in a config)"):
            formatter.write_dl(method_rows())
