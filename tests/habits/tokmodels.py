"""Tiny Llama checkpoints whose tokenizers differ by a few tokens (built with `tokenizers`).

- base: 28 words and <unk> <s> </s> (31 tokens);
- chat: base + the chat tokens <|im_start|> <|im_end|> (33);
- tool: base's words + the plain word w_tool, then <|im_start|> <|im_end|> and the plain
  added token foo_bar (35): the chat tokens have other ids here than in chat.

mergekit meets the models of a union in set order (different from run to run); these
tokenizers are chosen so that the union is the same in either order: chat's added tokens are
a prefix of tool's, and only tool has plain words base lacks.

Each model's embed_tokens / lm_head have one row per token, and config.json says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

HIDDEN, LAYERS, INTER = 8, 2, 16
WORDS = [f"w{i}" for i in range(28)]
SPECS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # name: (extra model words, added special tokens, added plain tokens)
    "base": ((), (), ()),
    "chat": ((), ("<|im_start|>", "<|im_end|>"), ()),
    "tool": (("w_tool",), ("<|im_start|>", "<|im_end|>"), ("foo_bar",)),
}


def tokenizer(words: tuple[str, ...], special: tuple[str, ...], plain: tuple[str, ...]):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in (*WORDS, *words):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    for t in special:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
    for t in plain:
        tok.add_tokens([AddedToken(t, special=False)])
    return tok


def llama(vocab: int, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    t = {"model.embed_tokens.weight": r(vocab, HIDDEN), "lm_head.weight": r(vocab, HIDDEN)}
    t["model.norm.weight"] = torch.ones(HIDDEN, dtype=dtype)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{m}.weight"] = r(HIDDEN, HIDDEN)
        t[p + "mlp.up_proj.weight"] = r(INTER, HIDDEN)
        t[p + "mlp.gate_proj.weight"] = r(INTER, HIDDEN)
        t[p + "mlp.down_proj.weight"] = r(HIDDEN, INTER)
        t[p + "input_layernorm.weight"] = torch.ones(HIDDEN, dtype=dtype)
        t[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=dtype)
    return t


def write_tok_model(path: Path, name: str, seed: int, dtype: torch.dtype = torch.float32) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(*SPECS[name])
    n = tok.get_vocab_size(with_added_tokens=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 64,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(llama(n, seed, dtype), str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": LAYERS,
        "vocab_size": n,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def write_family(root: Path, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    return {n: write_tok_model(root / n, n, i, dtype) for i, n in enumerate(SPECS)}
