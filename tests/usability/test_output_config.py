"""Issue 15 item 2: the merged checkpoint's config.json agrees with its tensors.

transformers' AutoConfig (a dev dependency) loads each output config; its layer count, vocab
size and dtype are checked against the safetensors headers written beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")  # in the dev extra, so CI has it

ST_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def tensors_of(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as g:
            for k in g.keys():  # noqa: SIM118 - safe_open has no __iter__
                sl = g.get_slice(k)
                out[k] = (sl.get_dtype(), tuple(sl.get_shape()))
    return out


def check_agrees(folder: Path) -> object:
    cfg = transformers.AutoConfig.from_pretrained(folder)
    ts = tensors_of(folder)
    layers = {int(k.split(".")[2]) for k in ts if k.startswith("model.layers.")}
    assert cfg.num_hidden_layers == max(layers) + 1 == len(layers)
    assert cfg.vocab_size == ts["model.embed_tokens.weight"][1][0]
    dtypes = {ST_DTYPES[d] for d, _ in ts.values()}
    assert len(dtypes) == 1
    got = getattr(cfg, "dtype", None) or cfg.torch_dtype
    assert str(got).removeprefix("torch.") == dtypes.pop()
    return cfg


def merge_and_checkout(ms, tmp_path: Path, args: list, name: str) -> Path:
    r = ms("merge", *args, "-b", name)
    assert r.code == 0, r.err
    out = tmp_path / name
    assert ms("checkout", name, out).code == 0
    return out


def test_passthrough_slices_layer_count(ms, tmp_path: Path) -> None:
    y = tmp_path / "pt.yml"
    y.write_text(
        "merge_method: passthrough\nslices:\n"
        "  - sources: [{model: main, layer_range: [0, 2]}]\n"
        "  - sources: [{model: dense_small, layer_range: [0, 1]}]\n"
    )
    out = merge_and_checkout(ms, tmp_path, ["--config", y], "pt")
    assert check_agrees(out).num_hidden_layers == 3


@pytest.mark.parametrize(
    ("flags", "want"),
    [(["--dtype", "float32"], "float32"), (["--out-dtype", "float16"], "float16")],
)
def test_dtype_follows_the_tensors(ms, tmp_path: Path, flags: list, want: str) -> None:
    args = ["--method", "task_arithmetic", "--base", "main", "dense_small", "frozen"]
    out = merge_and_checkout(ms, tmp_path, [*args, "-w", "1", "-w", "1", *flags], "d")
    cfg = check_agrees(out)
    assert str(getattr(cfg, "dtype", None) or cfg.torch_dtype).endswith(want)


def test_bigger_vocab_from_a_slice(ms, tiny_family, tmp_path: Path) -> None:
    """Layers and embeddings of a model with 44 more tokens, the base's config: vocab 300."""
    big = tmp_path / "big"
    shutil.copytree(tiny_family.base, big)
    index = json.loads((big / "model.safetensors.index.json").read_text())
    for f in sorted(set(index["weight_map"].values())):
        t = load_file(big / f)
        if any(k.endswith(("embed_tokens.weight", "lm_head.weight")) for k in t):
            for k in t:
                if k.endswith(("embed_tokens.weight", "lm_head.weight")):
                    t[k] = torch.cat([t[k], torch.zeros(44, t[k].shape[1], dtype=t[k].dtype)])
            save_file(t, big / f, metadata={"format": "pt"})
    index["metadata"]["total_size"] += 2 * 44 * 64 * 2
    (big / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = json.loads((big / "config.json").read_text())
    (big / "config.json").write_text(json.dumps({**cfg, "vocab_size": 300}))
    assert ms("commit", big, "-m", "big", "-b", "big").code == 0
    y = tmp_path / "pv.yml"
    y.write_text(
        "merge_method: passthrough\nbase_model: main\nslices:\n"
        "  - sources: [{model: big, layer_range: [0, 2]}]\n"
    )
    out = merge_and_checkout(ms, tmp_path, ["--config", y], "pv")
    assert check_agrees(out).vocab_size == 300


def test_unchanged_config_keeps_its_bytes(ms, tiny_family, tmp_path: Path) -> None:
    args = ["--method", "task_arithmetic", "--base", "main", "dense_small", "-w", "1"]
    out = merge_and_checkout(ms, tmp_path, args, "same")
    check_agrees(out)
    assert (out / "config.json").read_bytes() == (tiny_family.base / "config.json").read_bytes()
