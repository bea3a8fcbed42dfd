"""Tiny Llama-shaped checkpoints for the mergekit-habits tests (made in each test's tmp dir)."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

HIDDEN = 8
LAYERS = 2


def llama_tensors(vocab: int, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    t = {"model.embed_tokens.weight": r(vocab, HIDDEN), "lm_head.weight": r(vocab, HIDDEN)}
    t["model.norm.weight"] = torch.ones(HIDDEN, dtype=dtype)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{m}.weight"] = r(HIDDEN, HIDDEN)
        t[p + "mlp.up_proj.weight"] = r(2 * HIDDEN, HIDDEN)
        t[p + "mlp.down_proj.weight"] = r(HIDDEN, 2 * HIDDEN)
        t[p + "input_layernorm.weight"] = torch.ones(HIDDEN, dtype=dtype)
    return t


def write_model(
    path: Path,
    *,
    vocab: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tensors: dict[str, torch.Tensor] | None = None,
    readme: str | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    t = tensors if tensors is not None else llama_tensors(vocab, seed, dtype)
    save_file(t, path / "model.safetensors", metadata={"format": "pt"})
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "vocab_size": vocab,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if readme is not None:
        (path / "README.md").write_text(readme)
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Callable[..., Path]:
    """models("name", vocab=..., seed=...) writes a tiny checkpoint under tmp_path/name."""

    def make(name: str, **kw) -> Path:
        return write_model(tmp_path / name, **kw)

    return make


@dataclass(frozen=True)
class StoreCli:
    """`mergestore --store PATH ARGS...` against one test store (in-process, the `cli` fixture)."""

    path: Path
    cli: Callable[..., Any]

    def __call__(self, *args: str | os.PathLike[str]) -> Any:
        return self.cli("--store", self.path, *args)

    def run(self, line: str, *extra: str | os.PathLike[str]) -> Any:
        """The command as a user types it (`run("merge --method ties ...")`), then `extra`."""
        return self(*shlex.split(line), *extra)

    def linear(self, *extra: str | os.PathLike[str]) -> Any:
        """`merge --method linear main math -w 1 -w 1 EXTRA...`, the tests' usual merge."""
        return self("merge", "--method", "linear", "main", "math", "-w", "1", "-w", "1", *extra)


@pytest.fixture
def make_store(tmp_path: Path, cli, models) -> Callable[..., StoreCli]:
    """make_store(main={...}, math={...}, code={...}, based=True): a new store with `main`
    (models("base", seed=0, **main)), then `math` and `code` (seeds 1 and 2, each with its
    keyword arguments to `models`), committed with --base main when `based`."""

    def make(
        *,
        main: dict[str, Any] | None = None,
        math: dict[str, Any] | None = None,
        code: dict[str, Any] | None = None,
        based: bool = True,
    ) -> StoreCli:
        s = StoreCli(tmp_path / "store", cli)
        assert s("init").code == 0
        assert s("commit", models("base", **(main or {})), "-b", "main").code == 0
        for i, (name, kw) in enumerate((("math", math), ("code", code)), 1):
            r = s("commit", models(name, seed=i, **(kw or {})), "-b", name,
                  *(("--base", "main") if based else ()))  # fmt: skip
            assert r.code == 0, r.err
        return s

    return make


@pytest.fixture
def habit_store(make_store) -> Path:
    """A store with main (seed 0) and math, code (seeds 1, 2; based on main) committed."""
    return make_store().path


@pytest.fixture
def hs(habit_store: Path, cli) -> StoreCli:
    """`mergestore --store HABIT_STORE ARGS...`."""
    return StoreCli(habit_store, cli)
