"""The model card and the output layout, from the CLI as a user types it."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file

TOK = {"tokenizer_config.json": '{"model_max_length": 8}\n', "tokenizer.json": "{}\n"}


@pytest.fixture
def s(make_store):
    """The habits family; each model with a card of its own, the base with tokenizer files."""
    return make_store(
        main={"readme": "# the base's own card\n", "files": TOK},
        math={"readme": "# math's card\n"},
        code={"readme": "# code's card\n"},
    )


def test_card_in_checkout(s, tmp_path) -> None:
    r = s.run("merge --method ties --base main math code -w 1 -w 0.5 --param density=0.5", "-b",
              "merged", "--json")  # fmt: skip
    assert r.code == 0, r.err
    plan = r.json()["plan"]
    out = tmp_path / "out"
    assert s("checkout", "merged", out).code == 0
    card = (out / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta == {
        "base_model": ["math", "code", "main"],
        "library_name": "transformers",
        "tags": ["mergekit", "merge"],
    }
    assert (
        "using the [TIES](https://arxiv.org/abs/2306.01708) merge method using main as a base"
        in body
    )
    assert "* math\n* code\n" in body
    yml = (out / "mergekit_config.yml").read_text()
    assert f"```yaml\n{yml.rstrip()}\n```" in body  # the exact YAML
    ids = {c: s("show", c, "--json").json()["id"] for c in ("main", "math", "code")}
    for name, cid in ids.items():
        assert f"| {name} | `{cid}` | {name} |" in body
    assert f"plan: `{plan}`" in body
    assert f"`mergestore replay {plan[:16]}`" in body
    assert s("replay", "merged").code == 0
    r = s("replay", plan[:16], "--json")  # the command the card gives
    merged_id = s("show", "merged", "--json").json()["id"]
    assert r.code == 0 and r.json()["identical"] and r.json()["commit"] == merged_id
    assert s("replay", "feedfacefeed").code != 0
    assert "the base's own card" not in card and "math's card" not in card


def test_no_write_model_card_never_copies_an_inputs_readme(s, tmp_path) -> None:
    r = s.run("merge --method linear --base main main math -w 1 -w 1 --no-write-model-card",
              "-b", "nocard")  # fmt: skip
    assert r.code == 0, r.err
    files = [f["path"] for f in s("ls", "nocard", "--json").json()["files"]]
    assert "README.md" not in files
    assert "tokenizer.json" in files and "tokenizer_config.json" in files


def test_out_shard_size_and_copy_tokenizer(s, tmp_path) -> None:
    r = s.linear("--out-shard-size", "3K", "--no-copy-tokenizer", "-b", "sh")
    assert r.code == 0, r.err
    out = tmp_path / "out"
    assert s("checkout", "sh", out).code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "README.md",
        "config.json",
        "mergekit_config.yml",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 6240
    seen = {}
    for f in sorted(out.glob("model-*.safetensors")):
        t = load_file(f)
        assert sum(v.numel() * v.element_size() for v in t.values()) <= 3000
        seen.update({k: f.name for k in t})
    assert index["weight_map"] == dict(sorted(seen.items()))
    # the default (no size): the base's own single file; 5B as mergekit otherwise
    r = s.linear("-b", "one")
    files = [f["path"] for f in s("ls", "one", "--json").json()["files"]]
    assert "model.safetensors" in files and "tokenizer.json" in files
    r = s.linear("--out-shard-size", "lots")
    assert r.code != 0 and "not a size" in r.err


def test_merge_out_folder_has_card_and_shards_as_checkout(s, tmp_path) -> None:
    out = tmp_path / "direct"
    r = s.linear("--out-shard-size", "3K", "--out", out, "-b", "viaout")
    assert r.code == 0, r.err
    co = tmp_path / "co"
    assert s("checkout", "viaout", co).code == 0
    names = sorted(p.name for p in co.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    assert "README.md" in names and "model-00003-of-00003.safetensors" in names
    for n in names:
        assert (out / n).read_bytes() == (co / n).read_bytes(), n
