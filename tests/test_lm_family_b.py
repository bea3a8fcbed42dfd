"""The second, differently built family (fixtures/lm_family.py recipe "b", a Llama model)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures.lm_family import GENERATOR_VERSION, PRESETS, ensure_lm_family


@pytest.fixture(scope="module")
def fam():
    return ensure_lm_family("tiny-b")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _changed(fam, name: str) -> set[str]:
    base, exp = _weights(fam.base), _weights(fam.experts[name])
    assert base.keys() == exp.keys()
    return {k for k in base if not torch.equal(base[k], exp[k])}


def _layer(k: str) -> int | None:
    parts = k.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def test_each_expert_is_built_its_own_way(fam):
    n = fam.spec.n_layers
    assert list(fam.experts) == ["attn", "hot", "lora_mlp", "bottom"]
    attn = _changed(fam, "attn")
    assert attn and all(".self_attn." in k for k in attn)
    assert _changed(fam, "hot") == set(_weights(fam.base))  # every weight trained
    lora = _changed(fam, "lora_mlp")
    assert lora == {
        f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(n) for p in ("gate", "up", "down")
    }
    base, exp = _weights(fam.base), _weights(fam.experts["lora_mlp"])
    for k in lora:  # merged LoRA: the delta has the adapter's rank
        rank = torch.linalg.matrix_rank((exp[k] - base[k]).double(), rtol=1e-6)
        assert 0 < int(rank) <= fam.spec.lora_rank
    bottom = _changed(fam, "bottom")
    assert "model.embed_tokens.weight" in bottom
    assert {_layer(k) for k in bottom} - {None} == set(range(n // 2))


def test_it_is_a_llama_that_improves_its_domains(fam):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(fam.experts["attn"]))
    assert model.config.model_type == "llama"
    assert not any("bias" in k for k in _weights(fam.base))
    losses = fam.info["heldout_loss"]
    for name, domain in fam.info["experts"].items():
        if name != "hot":  # three times the learning rate: it may overshoot on a tiny run
            assert losses[name][domain] < losses["base"][domain], name


def test_the_first_familys_cache_keys_are_unchanged():
    """Specs of the first recipe hash as they did before arch and recipe existed."""
    for name in ("small", "tiny"):
        spec = dataclasses.asdict(PRESETS[name])
        del spec["arch"], spec["recipe"]
        blob = json.dumps({**spec, "generator": GENERATOR_VERSION}, sort_keys=True).encode()
        assert PRESETS[name].key() == hashlib.blake2b(blob, digest_size=6).hexdigest()
    assert PRESETS["tiny-b"].key() != PRESETS["tiny"].key()
