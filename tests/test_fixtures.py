"""Tests of the checkpoint-family generator (fixtures/). All on the tiny preset: fast."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fixtures.family import PRESETS, FamilySpec, load_family, main, make_checkpoint, make_family

TINY = PRESETS["tiny"]
ALL_KINDS = ("dense_small", "dense_large", "frozen", "lowrank_attn", "sparse", "uneven0", "uneven1")
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def expected_names(spec: FamilySpec) -> set[str]:
    """Tensor names of a Llama model, written out independently of fixtures.tensors."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not spec.tie_embeddings:
        names.add("lm_head.weight")
    for i in range(spec.n_layers):
        for m in ("q", "k", "v", "o"):
            names.add(f"model.layers.{i}.self_attn.{m}_proj.weight")
        for m in ("gate", "up", "down"):
            names.add(f"model.layers.{i}.mlp.{m}_proj.weight")
        names.add(f"model.layers.{i}.input_layernorm.weight")
        names.add(f"model.layers.{i}.post_attention_layernorm.weight")
    return names


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        part = load_file(str(f))
        assert not set(part) & set(out), "a tensor appears in two shards"
        out.update(part)
    return out


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
    )


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bf16_family(tmp_path_factory):
    spec = dataclasses.replace(TINY, experts=ALL_KINDS)
    return make_family(tmp_path_factory.mktemp("bf16"), spec)


@pytest.fixture(scope="module")
def fp32_family(tmp_path_factory):
    spec = dataclasses.replace(TINY, experts=ALL_KINDS, dtype="float32", shard_bytes=128 * 1024)
    return make_family(tmp_path_factory.mktemp("fp32"), spec)


@pytest.fixture(scope="module")
def fp32_models(fp32_family):
    models = {"base": load_dir(fp32_family.base)}
    models.update({name: load_dir(p) for name, p in fp32_family.experts.items()})
    return models


def test_tiny_preset_is_small_and_sharded(tmp_path):
    fam = make_family(tmp_path, TINY)
    assert list(fam.experts) == list(TINY.experts)
    for d in (fam.base, *fam.experts.values()):
        shards = sorted(d.glob("model-*.safetensors"))
        assert len(shards) > 1
        assert [s.name for s in shards] == [
            f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)
        ]
        total = sum(p.stat().st_size for p in d.iterdir())
        assert total < 1_000_000
        for s in shards:
            assert s.stat().st_size <= TINY.shard_bytes + 8192  # + header


def test_files_load_and_index_maps_every_tensor(bf16_family):
    spec = bf16_family.spec
    for d in (bf16_family.base, *bf16_family.experts.values()):
        for name in SIDE_FILES:
            json.loads((d / name).read_text())
        index = json.loads((d / "model.safetensors.index.json").read_text())
        weight_map = index["weight_map"]
        assert set(weight_map) == expected_names(spec)
        total = 0
        for fname in set(weight_map.values()):
            with safe_open(str(d / fname), framework="pt") as f:
                assert f.metadata() == {"format": "pt"}
                keys = set(f.keys())
                assert keys == {n for n, v in weight_map.items() if v == fname}
                for k in keys:
                    t = f.get_tensor(k)
                    assert t.dtype == torch.bfloat16
                    total += t.numel() * t.element_size()
        assert index["metadata"]["total_size"] == total


def test_shapes_and_config(bf16_family):
    spec = bf16_family.spec
    cfg = json.loads((bf16_family.base / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] == spec.hidden and cfg["num_hidden_layers"] == spec.n_layers
    assert cfg["torch_dtype"] == "bfloat16" and cfg["vocab_size"] == spec.vocab
    head_dim = spec.hidden // spec.n_heads
    t = load_dir(bf16_family.base)
    assert t["model.embed_tokens.weight"].shape == (spec.vocab, spec.hidden)
    assert t["lm_head.weight"].shape == (spec.vocab, spec.hidden)
    assert t["model.layers.1.self_attn.k_proj.weight"].shape == (
        spec.n_kv_heads * head_dim,
        spec.hidden,
    )
    assert t["model.layers.0.self_attn.q_proj.weight"].shape == (spec.hidden, spec.hidden)
    assert t["model.layers.0.mlp.down_proj.weight"].shape == (spec.hidden, spec.intermediate)
    assert t["model.layers.0.mlp.gate_proj.weight"].shape == (spec.intermediate, spec.hidden)
    # Plausible statistics: weights ~ N(0, 0.02), norms ~ 1.
    w = t["model.layers.0.mlp.up_proj.weight"].float()
    assert 0.015 < w.std().item() < 0.025 and abs(w.mean().item()) < 0.002
    n = t["model.norm.weight"].float()
    assert 0.95 < n.mean().item() < 1.05 and n.std().item() > 0


def test_frozen_expert_keeps_untouched_tensors_bit_identical(bf16_family):
    base = load_dir(bf16_family.base)
    frozen = load_dir(bf16_family.experts["frozen"])
    last_half = range(bf16_family.spec.n_layers // 2, bf16_family.spec.n_layers)
    changed = 0
    for name, b in base.items():
        trained = any(name.startswith(f"model.layers.{i}.") for i in last_half) and (
            ".self_attn." in name or ".mlp." in name
        )
        if trained:
            changed += not bits_equal(b, frozen[name])
        else:
            assert bits_equal(b, frozen[name]), name
    assert changed == 7 * len(last_half)


def test_lowrank_expert_delta_has_rank_at_most_4(fp32_models):
    base, lora = fp32_models["base"], fp32_models["lowrank_attn"]
    n_attn = 0
    for name, b in base.items():
        if ".self_attn." not in name:
            assert bits_equal(b, lora[name]), name
            continue
        n_attn += 1
        delta = lora[name].double() - b.double()
        s = torch.linalg.svdvals(delta)
        assert s[0] > 1e-4  # a real update
        assert (s[4:] / s[0]).max() < 1e-4, name  # fp32 rounding only beyond rank 4
    assert n_attn == 4 * 2


def test_dense_experts_relative_delta(fp32_models):
    base = fp32_models["base"]
    for kind, lo, hi in (("dense_small", 5e-4, 2e-3), ("dense_large", 1e-2, 4e-2)):
        expert = fp32_models[kind]
        for name, b in base.items():
            rel_scale = 1.0 if name.endswith("norm.weight") else 0.02
            d = (expert[name].double() - b.double()).std().item() / rel_scale
            assert lo < d < hi, (kind, name, d)


def test_sparse_expert_changes_about_ten_percent(fp32_models):
    base, sparse = fp32_models["base"], fp32_models["sparse"]
    changed = sum(int((sparse[n] != b).sum()) for n, b in base.items())
    total = sum(b.numel() for b in base.values())
    assert 0.08 < changed / total < 0.12


def test_uneven_experts_vary_in_scale_and_differ_from_each_other(fp32_models):
    base = fp32_models["base"]
    scales = []
    for kind in ("uneven0", "uneven1"):
        for name, b in base.items():
            rel_scale = 1.0 if name.endswith("norm.weight") else 0.02
            scales.append((fp32_models[kind][name].double() - b.double()).std().item() / rel_scale)
    touched = [s for s in scales if s > 0]
    assert len(touched) < len(scales)  # some tensors left alone
    assert max(touched) / min(touched) > 20  # spread over more than an order of magnitude
    # Same kind, different names: different deltas.
    u0, u1 = fp32_models["uneven0"], fp32_models["uneven1"]
    assert any(not torch.equal(u0[n], u1[n]) for n in base)


def test_bf16_experts_equal_fp32_experts_rounded(bf16_family, fp32_models):
    # Deltas are made in fp32 and cast once: the bf16 family is the fp32 one rounded.
    for name in ("base", "dense_small", "lowrank_attn"):
        d = bf16_family.base if name == "base" else bf16_family.experts[name]
        bf16 = load_dir(d)
        for tname, t in fp32_models[name].items():
            if name == "base":
                assert bits_equal(t.to(torch.bfloat16), bf16[tname]), tname
            else:
                # bf16 expert = bf16(bf16(base) + delta), fp32 expert = base + delta: they differ by
                # at most two roundings, half a bf16 ulp (<= 2^-8 relative) of base and of result.
                base32 = fp32_models["base"][tname]
                diff = (bf16[tname].float() - t).abs()
                bound = (base32.abs() + t.abs()) * 2**-8 * 1.001
                assert bool((diff <= bound).all()), (name, tname)


def test_same_spec_gives_byte_identical_files(tmp_path):
    spec = dataclasses.replace(TINY, experts=ALL_KINDS)
    a, b = make_family(tmp_path / "a", spec), make_family(tmp_path / "b", spec)
    ha, hb = tree_hashes(a.root), tree_hashes(b.root)
    assert len(ha) == 1 + 8 * 10 and ha == hb
    c = make_family(tmp_path / "c", dataclasses.replace(spec, seed=1))
    hc = tree_hashes(c.root)
    assert ha["base/config.json"] == hc["base/config.json"]
    assert (
        ha["base/model-00001-of-00004.safetensors"] != hc["base/model-00001-of-00004.safetensors"]
    )


def test_tensors_do_not_depend_on_generation_order(tmp_path):
    two = load_dir(make_family(tmp_path / "two", TINY).experts["dense_small"])
    three = load_dir(
        make_family(tmp_path / "three", dataclasses.replace(TINY, n_layers=3)).experts[
            "dense_small"
        ]
    )
    for name in (
        "model.embed_tokens.weight",
        "model.layers.1.mlp.up_proj.weight",
        "lm_head.weight",
    ):
        assert bits_equal(two[name], three[name])


def test_tied_embeddings_has_no_lm_head(tmp_path):
    fam = make_family(tmp_path, dataclasses.replace(TINY, tie_embeddings=True, experts=("frozen",)))
    names = set(json.loads((fam.base / "model.safetensors.index.json").read_text())["weight_map"])
    assert names == expected_names(fam.spec) and "lm_head.weight" not in names
    assert json.loads((fam.base / "config.json").read_text())["tie_word_embeddings"] is True


def test_make_checkpoint_single_shard_and_metadata(tmp_path):
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    out = make_checkpoint(
        tmp_path / "m",
        {"a": a, "b": a[1]},
        shard_bytes=1 << 20,
        config={"vocab_size": 8},
        metadata={"note": "x"},
    )
    assert (out / "model.safetensors").exists()
    assert not (out / "model.safetensors.index.json").exists()
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}
        assert torch.equal(f.get_tensor("b"), torch.tensor([4.0, 5.0, 6.0, 7.0]))
    for name in SIDE_FILES:
        assert (out / name).exists()
    assert len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]) == 8
    with pytest.raises(FileExistsError):
        make_checkpoint(out, {"a": a}, shard_bytes=1 << 20, config={})


def test_make_checkpoint_oversized_tensor_gets_own_shard(tmp_path):
    t = {"x": torch.zeros(10), "big": torch.zeros(100), "y": torch.zeros(10)}
    out = make_checkpoint(tmp_path / "m", t, shard_bytes=100, config={})
    wm = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(wm.values())) == 3 and wm["x"] != wm["big"] != wm["y"]


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError):
        FamilySpec(experts=("nonsense",))
    with pytest.raises(ValueError):
        FamilySpec(dtype="int8")
    with pytest.raises(ValueError):
        FamilySpec(hidden=65)
    with pytest.raises(ValueError):
        FamilySpec(experts=("frozen", "frozen"))


def test_cli_json_and_load_family(tmp_path, capsys):
    rc = main(
        [
            str(tmp_path / "f"),
            "--preset",
            "tiny",
            "--experts",
            "uneven0,sparse",
            "--seed",
            "3",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["experts"]) == ["uneven0", "sparse"]
    assert out["spec"]["seed"] == 3
    fam = load_family(tmp_path / "f")
    assert fam.spec == dataclasses.replace(TINY, experts=("uneven0", "sparse"), seed=3)
    assert str(fam.experts["sparse"]) == out["experts"]["sparse"]
    assert make_family(tmp_path / "f", fam.spec, reuse=True) == fam
    assert main([str(tmp_path / "f"), "--preset", "tiny"]) == 2  # refuses to overwrite
