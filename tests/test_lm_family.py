"""The real tiny fine-tune family (fixtures/lm_family.py): trained, loadable, deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures.lm_family import PRESETS, ensure_lm_family, heldout_loss, make_lm_family


@pytest.fixture(scope="module")
def fam():
    return ensure_lm_family("tiny")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _changed(fam, name: str) -> set[str]:
    base, exp = _weights(fam.base), _weights(fam.experts[name])
    assert base.keys() == exp.keys()
    return {k for k in base if not torch.equal(base[k], exp[k])}


def test_each_expert_is_finetuned_its_own_way(fam):
    n = fam.spec.n_layers
    full = _changed(fam, "full")
    assert len(full) == len(_weights(fam.base))  # every weight trained
    mlp = _changed(fam, "mlp")
    assert mlp and all(".mlp." in k for k in mlp)
    lora = _changed(fam, "lora")
    assert lora == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(n) for p in "qv"}
    base, exp = _weights(fam.base), _weights(fam.experts["lora"])
    for k in lora:  # merged LoRA: the delta has the adapter's rank
        rank = torch.linalg.matrix_rank((exp[k] - base[k]).double(), rtol=1e-6)
        assert 0 < int(rank) <= fam.spec.lora_rank
    top = _changed(fam, "top")
    assert top and all(int(k.split(".")[2]) >= n // 2 for k in top)
    assert {int(k.split(".")[2]) for k in top} == set(range(n // 2, n))


def test_experts_improve_their_domain_on_heldout_text(fam):
    losses = fam.info["heldout_loss"]
    for name, domain in fam.info["experts"].items():
        assert losses[name][domain] < losses["base"][domain], name
    # the judge is reproducible from the folder alone
    again = heldout_loss(fam.experts["mlp"], fam)
    assert again == pytest.approx(losses["mlp"], abs=1e-6)


def test_transformers_loads_model_and_byte_tokenizer(fam):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fam.base))
    text = "def f(x):\n    return x  # é"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode())
    assert tok.decode(ids) == text
    model = AutoModelForCausalLM.from_pretrained(str(fam.experts["top"]))
    assert model.config.model_type == "qwen2"
    assert model.config.num_hidden_layers == fam.spec.n_layers


def test_same_spec_gives_identical_files(fam, tmp_path):
    again = make_lm_family(tmp_path / "again", PRESETS["tiny"])

    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.safetensors"))
        }

    assert digest(again.root) == digest(fam.root)
    assert again.info["heldout_loss"] == fam.info["heldout_loss"]
