"""LoRA inputs: a PEFT adapter folder as a commit, `base+adapter` applied in merges.

Checked two ways: against PEFT's own merge_and_unload on a real transformers Llama (fp32, bit
for bit), and against W + scale * B @ A computed by hand from the adapter file (bf16 too).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


def _adapter(
    path: Path,
    base: dict[str, torch.Tensor],
    *,
    r: int = 2,
    alpha: float = 4.0,
    rslora: bool = False,
    modules=("q_proj", "v_proj"),
    seed: int = 7,
) -> Path:
    g = torch.Generator().manual_seed(seed)
    t = {}
    for name, w in base.items():
        mod = name.removesuffix(".weight")
        if not any(mod.endswith(m) for m in modules) or w.dim() != 2:
            continue
        t[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(r, w.shape[1], generator=g)
        t[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(w.shape[0], r, generator=g)
    path.mkdir(parents=True)
    save_file(t, path / "adapter_model.safetensors", metadata={"format": "pt"})
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "use_rslora": rslora,
        "target_modules": list(modules),
        "base_model_name_or_path": "main",
        "fan_in_fan_out": False,
    }
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


def _by_hand(base, adapter_dir: Path, scale: float) -> dict[str, torch.Tensor]:
    ad = load_file(adapter_dir / "adapter_model.safetensors")
    out = dict(base)
    for k, a in ad.items():
        if ".lora_A." not in k:
            continue
        mod = k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = ad[k.replace("lora_A", "lora_B")]
        w = base[mod + ".weight"]
        out[mod + ".weight"] = (w.float() + (b.float() @ a.float()) * scale).to(w.dtype)
    return out


def _checkout(cli, store, ref, out: Path) -> dict[str, torch.Tensor]:
    r = cli("--store", store, "checkout", ref, out)
    assert r.code == 0, r.err
    got = {}
    for f in sorted(out.glob("*.safetensors")):
        got.update(load_file(f))
    return got


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_applied_equals_hand_computation(habit_store, cli, tmp_path, models, rslora) -> None:
    s = habit_store
    base = load_file(models("base") / "model.safetensors")
    ad = _adapter(tmp_path / "adapter", base, r=4, alpha=8, rslora=rslora)
    r = cli("--store", s, "commit", ad, "--base", "main", "-b", "lora1")
    assert r.code == 0, r.err
    r = cli("--store", s, "merge", "--method", "passthrough", "main+lora1", "-b", "applied")
    assert r.code == 0, r.err
    got = _checkout(cli, s, "applied", tmp_path / "out")
    scale = 8 / math.sqrt(4) if rslora else 8 / 4
    want = _by_hand(base, ad, scale)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    changed = [k for k in want if not torch.equal(want[k], base[k])]
    assert len(changed) == 4  # q and v of two layers


def test_lora_in_linear_merge_cli_and_yaml(habit_store, cli, tmp_path, models) -> None:
    s = habit_store
    base = load_file(models("base") / "model.safetensors")
    math_t = load_file(models("math", seed=1) / "model.safetensors")
    ad = _adapter(tmp_path / "adapter", base)
    assert cli("--store", s, "commit", ad, "--base", "main", "-b", "lora1").code == 0
    r = cli(
        "--store",
        s,
        "merge",
        "--method",
        "linear",
        "main+lora1",
        "math",
        "-w",
        "0.5",
        "-w",
        "0.5",
        "-b",
        "lin",
    )
    assert r.code == 0, r.err
    got = _checkout(cli, s, "lin", tmp_path / "o1")
    applied = _by_hand(base, ad, 2.0)
    for k in base:
        want = ((applied[k] * 0.5) + (math_t[k] * 0.5)) / 1.0
        assert torch.allclose(got[k], want, atol=1e-6), k
    assert cli("--store", s, "replay", "lin").code == 0
    cfg = tmp_path / "m.yml"
    cfg.write_text(
        "merge_method: linear\nmodels:\n"
        "  - model: {model: main, lora: lora1}\n    parameters: {weight: 0.5}\n"
        "  - model: math\n    parameters: {weight: 0.5}\n"
    )
    r = cli("--store", s, "merge", "--config", cfg, "-b", "lin2")
    assert r.code == 0, r.err
    totals = cli("--store", s, "diff", "lin", "lin2", "--json").json()["totals"]
    assert totals["unchanged"] == totals["tensors"] == 17  # same tensors (the YAML text differs)


def test_lora_refusals(habit_store, cli, tmp_path, models) -> None:
    s = habit_store
    base = load_file(models("base") / "model.safetensors")
    ad = _adapter(tmp_path / "adapter", base, modules=("q_proj",))
    t = load_file(ad / "adapter_model.safetensors")
    k = next(iter(t))
    t[k.replace("layers.0", "layers.9")] = t[k].clone()
    save_file(t, ad / "adapter_model.safetensors")
    assert cli("--store", s, "commit", ad, "-b", "bad").code == 0
    r = cli("--store", s, "merge", "--method", "passthrough", "main+bad")
    assert r.code != 0 and r.err.count("\n") == 1
    assert "lacks" in r.err or "missing" in r.err
    r = cli("--store", s, "merge", "--method", "passthrough", "main+math")
    assert r.code != 0 and "adapter_config.json" in r.err


def test_lora_equals_peft_merge_and_unload(tmp_path, cli) -> None:
    import peft  # a dev dependency (pyproject): the check runs wherever the tests run
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "base", safe_serialization=True)
    for rslora in (False, True):
        lcfg = peft.LoraConfig(
            r=4,
            lora_alpha=8,
            use_rslora=rslora,
            init_lora_weights=False,
            target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        )
        pm = peft.get_peft_model(
            transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base"), lcfg
        )
        adir = tmp_path / f"adapter{int(rslora)}"
        pm.save_pretrained(adir)
        merged = {k: v.detach().clone() for k, v in pm.merge_and_unload().state_dict().items()}
        s = tmp_path / f"store{int(rslora)}"
        assert cli("--store", s, "init").code == 0
        assert cli("--store", s, "commit", tmp_path / "base", "-b", "main").code == 0
        assert cli("--store", s, "commit", adir, "--base", "main", "-b", "ad").code == 0
        r = cli("--store", s, "merge", "--method", "passthrough", "main+ad", "-b", "m")
        assert r.code == 0, r.err
        got = _checkout(cli, s, "m", tmp_path / f"out{int(rslora)}")
        assert set(got) == set(merged)
        for k, v in merged.items():
            assert torch.equal(got[k], v), k
