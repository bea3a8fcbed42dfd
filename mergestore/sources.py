"""Where a checkpoint comes from: a folder, a Hugging Face hub id, or pytorch_model*.bin files.

`prepared_source` turns what a user typed into a local safetensors checkpoint folder and the
metadata a commit records about its origin (hub id and revision sha, .bin conversion).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import field
from pathlib import Path

from mergestore.fast_dataclass import dataclass
from mergestore.formats.hub import looks_like_hub_id, resolve_hub
from mergestore.formats.lora import ADAPTER_CONFIG, parse_adapter_config
from mergestore.formats.torchbin import convert_bin_checkpoint, needs_conversion


@dataclass(frozen=True)
class Source:
    """A checkpoint to commit: a local path and where it came from."""

    path: Path  # a local safetensors checkpoint (folder or file)
    meta: dict[str, str] = field(default_factory=dict)


def is_hub_source(text: str) -> bool:
    return looks_like_hub_id(text)


@contextmanager
def prepared_source(text: str | os.PathLike[str]) -> Iterator[Source]:
    """The local checkpoint for `text`; converted .bin weights live until the block exits."""
    raw = os.fspath(text)
    path = Path(os.path.expanduser(raw))
    meta: dict[str, str] = {}
    if not os.path.lexists(path) and looks_like_hub_id(raw):
        hub = resolve_hub(raw)
        path = hub.path
        meta.update(hub.meta())
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():  # a PEFT LoRA adapter
        cfg = parse_adapter_config((path / ADAPTER_CONFIG).read_bytes(), str(path / ADAPTER_CONFIG))
        meta.update(
            {"peft_type": "LORA", "lora_r": str(cfg.r), "lora_alpha": f"{cfg.lora_alpha:g}"}
        )
        if cfg.use_rslora:
            meta["lora_rslora"] = "true"
    if needs_conversion(path):
        with tempfile.TemporaryDirectory(prefix="mergestore-bin-") as tmp:
            staged = Path(tmp) / "checkpoint"
            meta.update(convert_bin_checkpoint(path, staged))
            yield Source(staged, meta)
        return
    yield Source(path, meta)
