"""Tokenizer merges (issue 19 item 3): tokenizer_source union / base / a model, and the
tokenizer: block (tokens with source and force, pad_to_multiple_of), from the CLI, against
real mergekit 0.1.5 run single-threaded: the same vocabulary and added tokens, the same
embed_tokens / lm_head (and every other tensor) bit for bit, the same config.json vocab_size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mergekit_ref import mergekit_yaml
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tokmodels import write_family


@pytest.fixture(scope="session")
def tok_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_family(tmp_path_factory.mktemp("tokfam"))


def _yaml(fam: dict[str, Path], body: str) -> str:
    for name, path in fam.items():
        body = body.replace(f"@{name}", str(path))
    return body


UNION = """\
merge_method: task_arithmetic
base_model: @base
models:
  - model: @chat
    parameters: {weight: 0.6}
  - model: @tool
    parameters: {weight: 0.4}
dtype: float32
tokenizer_source: union
"""

UNION_TOKENS_PAD = """\
merge_method: task_arithmetic
base_model: @base
models:
  - model: @chat
    parameters: {weight: 0.7}
  - model: @tool
    parameters: {weight: 0.5}
dtype: bfloat16
tokenizer:
  pad_to_multiple_of: 16
  tokens:
    "<|im_end|>":
      source: {kind: model_token, model: @chat, token: "<|im_end|>"}
    "<tool_call>":
      source: {kind: zero}
    "w3":
      source: @tool
      force: true
"""

BASE_PAD = """\
merge_method: ties
base_model: @base
models:
  - model: @chat
    parameters: {weight: 0.7, density: 0.6}
  - model: @tool
    parameters: {weight: 0.5, density: 0.5}
dtype: float32
out_dtype: bfloat16
tokenizer: {source: base, pad_to_multiple_of: 8}
"""

MODEL_SOURCE = """\
merge_method: linear
base_model: @base
models:
  - model: @base
    parameters: {weight: 0.2}
  - model: @chat
    parameters: {weight: 0.5}
  - model: @tool
    parameters: {weight: 0.3}
tokenizer:
  source: @chat
  tokens:
    "foo_bar":
      source: @tool
    "<|im_start|>":
      source: {kind: model_token, model: @tool, token_id: 3}
      force: true
"""


def _vocab(folder: Path) -> list[tuple[str, int]]:
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,body",
    [
        ("union", UNION),
        ("union_tokens_pad", UNION_TOKENS_PAD),
        ("base_pad", BASE_PAD),
        ("model", MODEL_SOURCE),
    ],
)
def test_tokenizer_merge_matches_mergekit(
    cli, tmp_path: Path, tok_family, name: str, body: str
) -> None:
    config = tmp_path / f"{name}.yml"
    config.write_text(_yaml(tok_family, body))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    store = tmp_path / "store"
    assert cli("--store", store, "init").code == 0
    r = cli("--store", store, "merge", "--config", config, "--out", ours, "--json")
    assert r.code == 0, r.err
    mergekit_yaml(config, theirs)

    assert _vocab(ours) == _vocab(theirs)
    added = [json.loads((d / "tokenizer.json").read_text())["added_tokens"] for d in (ours, theirs)]
    assert added[0] == added[1]
    a, b = load_file(str(ours / "model.safetensors")), load_file(str(theirs / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in b:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    cfg = [json.loads((d / "config.json").read_text()) for d in (ours, theirs)]
    assert cfg[0]["vocab_size"] == cfg[1]["vocab_size"] == a["lm_head.weight"].shape[0]
    # the output loads as a tokenizer and knows the chat tokens
    tok = Tokenizer.from_file(str(ours / "tokenizer.json"))
    assert tok.token_to_id("<|im_start|>") is not None or name == "base_pad"
    # the checkout of the commit is the same folder
    co = tmp_path / "co"
    assert cli("--store", store, "checkout", r.json()["commit"], co).code == 0
    assert (co / "tokenizer.json").read_bytes() == (ours / "tokenizer.json").read_bytes()


# -- from the CLI, without mergekit ---------------------------------------------------------


@pytest.fixture
def tok_store(cli, tmp_path: Path, tok_family) -> Path:
    store = tmp_path / "store"
    assert cli("--store", store, "init").code == 0
    for name, path in tok_family.items():
        assert cli("--store", store, "commit", path, "-b", name).code == 0
    return store


def _state(store: Path) -> tuple:
    packs = sorted((p.name, p.stat().st_size) for p in (store / "packs").iterdir())
    return packs, (store / "index").stat().st_mtime_ns if (store / "index").exists() else None


def _rows(folder: Path, name: str = "lm_head.weight") -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))[name]


def test_cli_tokenizer_source_union(cli, tmp_path: Path, tok_store: Path, tok_family) -> None:
    s, out = tok_store, tmp_path / "out"
    args = ["--store", s, "merge", "--method", "task_arithmetic", "--base", "base", "chat", "tool"]
    r = cli(*args, "-w", "0.5", "-w", "0.5", "--tokenizer-source", "union", "--out", out, "--json")
    assert r.code == 0, r.err
    res = r.json()
    vocab = dict(_vocab(out))
    assert len(vocab) == 35 and {"<|im_start|>", "<|im_end|>", "foo_bar", "w_tool"} <= set(vocab)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 35
    assert _rows(out).shape == (35, 8) and _rows(out, "model.embed_tokens.weight").shape == (35, 8)
    # foo_bar is only tool's: every input takes tool's row, so the merge gives tool's row back
    tool_tok = Tokenizer.from_file(str(tok_family["tool"] / "tokenizer.json"))
    tool_row = _rows(tok_family["tool"])[tool_tok.token_to_id("foo_bar")]
    assert torch.equal(_rows(out)[vocab["foo_bar"]], tool_row)
    assert "tokenizer_source: union" in (out / "mergekit_config.yml").read_text()
    # replay re-executes the plan (and its vocabulary) bit for bit
    r = cli("--store", s, "replay", res["commit"], "--json")
    assert r.code == 0, r.err
    # without a tokenizer source, the vocab sizes are refused before any block is read
    r = cli(*args, "-w", "0.5", "-w", "0.5", "-b", "plain")
    assert r.code == 1 and r.err.count("\n") == 1 and "tokenizer_source: union" in r.err


def test_cli_tokenizer_block_the_mergekit_crash(
    cli, tmp_path: Path, tok_store: Path, tok_family
) -> None:
    """tokenizer: {source: base, tokens: {NEW: ...}}: mergekit 0.1.5 adds NEW to the base's
    own tokenizer and then fails (KeyError); here NEW gets the row its entry names."""
    cfg = tmp_path / "m.yml"
    cfg.write_text(
        "merge_method: task_arithmetic\nbase_model: base\n"
        "models:\n  - model: chat\n    parameters: {weight: 0.5}\n"
        "tokenizer:\n  source: base\n  pad_to_multiple_of: 8\n  tokens:\n"
        "    '<tool_call>': {source: {kind: zero}}\n"
        "    '<|im_end|>': {source: chat}\n"
    )
    out = tmp_path / "out"
    r = cli("--store", tok_store, "merge", "--config", cfg, "--out", out, "--no-copy-tokenizer")
    assert r.code == 0, r.err
    vocab = dict(_vocab(out))
    assert len(vocab) == 33 and vocab["<tool_call>"] == 31 and vocab["<|im_end|>"] == 32
    rows = _rows(out)
    assert rows.shape == (40, 8)  # 33 padded to 40
    assert torch.count_nonzero(rows[31]) == 0
    chat = tok_family["chat"]
    chat_id = Tokenizer.from_file(str(chat / "tokenizer.json")).token_to_id("<|im_end|>")
    assert torch.equal(rows[32], _rows(chat)[chat_id])  # base and chat both take chat's row
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 40
    assert (out / "tokenizer_config.json").exists()  # the merged tokenizer is always written


@pytest.mark.parametrize(
    "tokenizer,message",
    [
        (
            "{tokens: {'<x>': {source: nowhere}}}",
            "tokenizer.tokens['<x>'].source: 'nowhere' is not one of the merge's models",
        ),
        ("{source: nowhere}", "tokenizer_source: 'nowhere' is not one of the merge's models"),
        (
            "{tokens: {'<x>': {source: {kind: model_token, model: chat, token: nope}}}}",
            "tokenizer.tokens['<x>']: token 'nope' is not in chat's vocabulary",
        ),
        ("{pad_to_multiple_of: -3}", "pad_to_multiple_of must be a positive integer"),
    ],
)
def test_cli_tokenizer_errors(cli, tmp_path: Path, tok_store: Path, tokenizer, message) -> None:
    cfg = tmp_path / "m.yml"
    cfg.write_text(
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: chat\n"
        f"    parameters: {{weight: 0.5}}\ntokenizer: {tokenizer}\n"
    )
    before = _state(tok_store)
    branches = cli("--store", tok_store, "branch", "--json").out
    r = cli("--store", tok_store, "merge", "--config", cfg)
    assert r.code == 1 and r.err.count("\n") == 1 and r.err.startswith("error: ")
    assert message in r.err
    r = cli("--store", tok_store, "merge", "--config", cfg, "--json")
    assert r.code == 1 and message in r.json()["error"]
    assert _state(tok_store) == before
    assert cli("--store", tok_store, "branch", "--json").out == branches


def test_cli_union_needs_the_base_tokenizer(cli, tmp_path: Path, tok_store: Path) -> None:
    bare = tmp_path / "bare"
    write_family(tmp_path / "fam")
    import shutil

    shutil.copytree(tmp_path / "fam" / "base", bare)
    (bare / "tokenizer.json").unlink()
    assert cli("--store", tok_store, "commit", bare, "-b", "bare").code == 0
    before = _state(tok_store)
    r = cli(
        "--store", tok_store, "merge", "--method", "linear", "--base", "bare", "bare", "chat",
        "-w", "1", "-w", "1", "--tokenizer-source", "union",
    )  # fmt: skip
    assert r.code == 1 and r.err == "error: tokenizer merge: bare has no tokenizer.json\n"
    assert _state(tok_store) == before


def test_vocabulary_tensors_are_embeddings_and_heads_only() -> None:
    from mergestore.merge.vocab import VocabFit

    fit = VocabFit(3, 3, {}, None, {}, b"", 0)
    vocab = ["model.embed_tokens.weight", "lm_head.weight", "transformer.wte.weight"]
    vocab += ["gpt_neox.embed_in.weight", "embed_out.weight", "word_embeddings.weight"]
    other = ["transformer.word_embeddings_layernorm.weight", "model.norm.weight"]
    other += ["lm_head.bias", "model.layers.0.mlp.up_proj.weight"]
    assert [fit.applies(n) for n in vocab + other] == [True] * len(vocab) + [False] * len(other)


@pytest.mark.parametrize(
    "tokenizer,message",
    [
        ("{tokens: {'<x>': {source: nowhere}}}", "'nowhere' is not one of the merge's models"),
        ("{source: union}", "has no tokenizer.json"),
    ],
)
def test_cli_refused_tokenizer_merge_of_folders_stores_nothing(
    cli, tmp_path: Path, tokenizer: str, message: str
) -> None:
    """Folder inputs are checked (tokenizer included) before they are stored: merge/precheck."""
    import hashlib
    import os
    import shutil

    fam = write_family(tmp_path / "fam")
    if "union" in tokenizer:
        shutil.copytree(fam["chat"], tmp_path / "bare")
        (tmp_path / "bare" / "tokenizer.json").unlink()
        fam["base"] = tmp_path / "bare"
    store = tmp_path / "store"
    assert cli("--store", store, "init").code == 0

    def snapshot() -> dict[str, str]:
        return {
            os.path.join(r, f): hashlib.sha256(Path(r, f).read_bytes()).hexdigest()
            for r, _, fs in os.walk(store)
            for f in fs
            if "lock" not in f
        }

    before = snapshot()
    cfg = tmp_path / "m.yml"
    cfg.write_text(
        f"merge_method: task_arithmetic\nbase_model: {fam['base']}\nmodels:\n"
        f"  - model: {fam['chat']}\n    parameters: {{weight: 0.5}}\ntokenizer: {tokenizer}\n"
    )
    r = cli("--store", store, "merge", "--config", cfg)
    assert r.code == 1 and r.err.count("\n") == 1 and message in r.err, r.err
    assert snapshot() == before
