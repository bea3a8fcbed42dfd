"""merge's output options: --out's --overwrite, model card, shard size, tokenizer, device."""

from __future__ import annotations

from typing import Any

import click

from mergestore.formats.outdir import FORCE_RULE

_UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_shard_size(text: str) -> int:
    """mergekit's --out-shard-size: bytes, with K/M/B suffixes meaning x1e3/1e6/1e9."""
    t = text.strip().upper()
    if len(t) > 1 and t.endswith("B") and t[-2] in "KMGT":  # 500MB reads as 500M
        t = t[:-1]
    mult = 1
    if t and t[-1] in _UNITS:
        mult, t = _UNITS[t[-1]], t[:-1]
    try:
        n = int(float(t) * mult)
    except ValueError:
        raise click.BadParameter(
            f"not a size: {text!r} (bytes, or with K/M/B: 500M, 5B)", param_hint="--out-shard-size"
        ) from None
    if n <= 0:
        raise click.BadParameter("must be positive", param_hint="--out-shard-size")
    return n


OPTIONS = [
    click.option(
        "--overwrite",
        is_flag=True,
        help="With --out: write over a non-empty folder: " + FORCE_RULE + ".",
    ),
    click.option(
        "--write-model-card/--no-write-model-card",
        "write_card",
        default=True,
        show_default=True,
        help="Write README.md (the model card) into the merge's files.",
    ),
    click.option(
        "--out-shard-size",
        default=None,
        metavar="SIZE",
        help="Lay the output out in shards of at most SIZE bytes (K/M/B suffixes, as mergekit; "
        "default: the base's own shards when the tensors match, else 5B).",
    ),
    click.option(
        "--copy-tokenizer/--no-copy-tokenizer",
        "copy_tokenizer",
        default=True,
        show_default=True,
        help="Copy the tokenizer files into the merge's files.",
    ),
    click.option(
        "--tokenizer-source",
        default=None,
        metavar="SOURCE",
        help="base, union, or one input model (mergekit's tokenizer_source:).",
    ),
    click.option(
        "--device",
        default=None,
        metavar="cpu|cuda[:N]",
        help="Where the torch lane merges (mergekit's --cuda); default cpu.",
    ),
    click.option(
        "--chat-template",
        default=None,
        metavar="TEMPLATE",
        help="auto, a built-in name (chatml, llama3, ...) or a Jinja string (chat_template:).",
    ),
]


def output_options(fn: Any) -> Any:
    for opt in reversed(OPTIONS):
        fn = opt(fn)
    return fn


def split_output(opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(execute_merge keyword arguments, config overrides) from the options' values."""
    out = {
        "overwrite": opts.pop("overwrite", False),
        "write_card": opts.pop("write_card", True),
        "copy_tokenizer": opts.pop("copy_tokenizer", True),
    }
    from mergestore.merge.device import parse_device

    out["device"] = parse_device(opts.pop("device", None))
    size = opts.pop("out_shard_size", None)
    out["shard_bytes"] = parse_shard_size(size) if size is not None else None
    over = {
        k: v
        for k, v in (
            ("tokenizer_source", opts.pop("tokenizer_source", None)),
            ("chat_template", opts.pop("chat_template", None)),
        )
        if v is not None
    }
    return out, over


def apply_overrides(cfg: Any, over: dict[str, Any]) -> Any:
    """The config with CLI values for tokenizer_source / chat_template (they win over YAML)."""
    if not over:
        return cfg
    from mergestore.merge.config import config_from_mapping

    data = cfg.to_dict()
    if "tokenizer_source" in over:
        data.pop("tokenizer", None)
    text = cfg.raw_text
    if text is not None:  # keep the recorded YAML true to what runs
        import yaml

        doc = yaml.safe_load(text) or {}
        if isinstance(doc, dict):
            if "tokenizer_source" in over:
                doc.pop("tokenizer", None)
            doc.update(over)
            text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    return config_from_mapping({**data, **over}, raw_text=text)
