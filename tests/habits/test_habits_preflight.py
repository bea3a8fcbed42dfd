"""Preflight refusals (one line, both models and shapes, the fix) and the post-merge summary."""

from __future__ import annotations

import torch

from mergestore.merge.summary import summarize
from mergestore.store.objects import TensorRecord


def test_vocab_mismatch_is_one_line_with_the_fix(hs, models) -> None:
    assert hs("commit", models("chat", vocab=34, seed=5), "-b", "chat").code == 0
    before = hs("log", "--all", "--json").json()
    r = hs.run("merge --method linear main chat -w 1 -w 1")
    assert r.code != 0
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0] == (
        "error: vocab size differs: lm_head.weight is [32, 8] in main but [34, 8] in chat; "
        "set tokenizer_source: union (or base, or one model's name), or --tokenizer-source"
    )
    assert hs("log", "--all", "--json").json() == before  # nothing published
    r = hs("merge", "--method", "linear", "main", "chat", "-w", "1", "-w", "1", "--json")
    assert r.code != 0 and "vocab size differs" in r.err


def test_shape_and_dtype_mismatch_lines(hs, models) -> None:
    t = {k: v.clone() for k, v in _tensors(models).items()}
    t["model.layers.1.mlp.up_proj.weight"] = torch.zeros(12, 8)
    assert hs("commit", models("odd", tensors=t), "-b", "odd").code == 0
    r = hs("merge", "--method", "task_arithmetic", "--base", "main", "odd", "-w", "1")
    assert r.code != 0
    assert (
        "shape differs: model.layers.1.mlp.up_proj.weight is [16, 8] in main but [12, 8] in odd;"
        in r.err
    )
    assert "slices" in r.err.splitlines()[-1]
    bf = models("bf", seed=3, dtype=torch.bfloat16)
    assert hs("commit", bf, "-b", "bf").code == 0
    r = hs.run("merge --method linear main bf -w 1 -w 1")
    assert r.code != 0
    assert "dtype differs: lm_head.weight is F32 in main but BF16 in bf; set dtype:" in r.err


def test_missing_tensor_names_the_model(hs, models) -> None:
    t = {k: v for k, v in _tensors(models).items() if k != "model.norm.weight"}
    assert hs("commit", models("short", tensors=t), "-b", "short").code == 0
    r = hs.run("merge --method ties --base main short -w 1 --param density=0.5")
    assert r.code != 0
    assert "'model.norm.weight' is missing from model 'short'" in r.err


def test_summary_fields_in_text_and_json(hs) -> None:
    r = hs.run("merge --method linear main math -w 1 -w 1 --out-dtype bfloat16 -b m")
    assert r.code == 0, r.err
    assert "linear: 17 tensors, 1,560 parameters, BF16 x17" in r.err
    assert "output   3.05 KiB (base 6.09 KiB, 0.50x)" in r.err
    assert "blocks read" in r.err and "new blocks written" in r.err and "peak memory" in r.err
    assert "warning" not in r.err
    j = hs("merge", "--method", "linear", "main", "code", "-w", "1", "-w", "1", "--json").json()
    assert j["parameters"] == j["base_parameters"] == 1560
    assert j["output_dtypes"] == {"F32": 17}
    assert j["output_bytes"] == j["base_bytes"] == 6240
    assert j["blocks_read"] > 0 and j["blocks_written"] > 0
    assert j["peak_rss_bytes"] > 1 << 20 and j["wall_seconds"] > 0
    assert j["warnings"] == []


def test_summary_warns_on_parameter_count(hs, tmp_path) -> None:
    cfg = tmp_path / "stack.yml"
    cfg.write_text(
        "merge_method: passthrough\nslices:\n"
        "  - sources: [{model: main, layer_range: [0, 2]}]\n"
        "  - sources: [{model: math, layer_range: [1, 2]}]\n"
    )
    r = hs("merge", "--config", cfg, "-b", "stack")
    assert r.code == 0, r.err
    assert "warning: the output has 2,080 parameters but the base has 1,560 (+520)" in r.err
    j = hs("merge", "--config", cfg, "--json").json()
    assert j["warnings"] == ["the output has 2,080 parameters but the base has 1,560 (+520)"]


def test_summary_warns_on_dtype() -> None:
    rec = TensorRecord("w", "BF16", (4, 4), 0, 32, 4, ())

    class Out:
        name, dtype, shape = "w", "F32", (4, 4)

    s = summarize([Out()], {"w": rec}, asked_dtype=None, blocks_written=1)
    assert s["warnings"] == [
        "output dtype is float32 but the base is bfloat16; set out_dtype: to choose it"
    ]
    s = summarize([Out()], {"w": rec}, asked_dtype="bfloat16", blocks_written=1)
    assert s["warnings"] == ["output dtype is float32 but asked for bfloat16"]
    assert summarize([Out()], {"w": rec}, asked_dtype="float32", blocks_written=1)["warnings"] == []


def _tensors(models):
    from safetensors.torch import load_file

    return load_file(models("tmp_src") / "model.safetensors")
