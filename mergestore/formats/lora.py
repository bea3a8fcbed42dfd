"""PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors, as PEFT saves them.

An adapter tensor ``base_model.model.<module>.lora_A.weight`` (shape [r, in]) and its
``lora_B.weight`` ([out, r]) change the base tensor ``<module>.weight`` by

    W' = W + scale * (B @ A)        (transposed when fan_in_fan_out)

with scale = lora_alpha / r, or lora_alpha / sqrt(r) when use_rslora (alpha and r per module
from alpha_pattern / rank_pattern, as PEFT matches them). Embedding adapters
(``lora_embedding_A`` [r, vocab], ``lora_embedding_B`` [dim, r]) add (B @ A)^T. A module the
adapter saves whole (modules_to_save) replaces the base tensor. The product is computed in fp32
(B @ A, then times scale, as PEFT's get_delta_weight does) and added to W in fp32, then rounded
once to W's dtype: in fp32 that is PEFT's merge_and_unload exactly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any

from mergestore.errors import FormatError
from mergestore.fast_dataclass import dataclass

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_LINEAR = re.compile(r"^(?P<m>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_EMBED = re.compile(r"^(?P<m>.+)\.lora_embedding_(?P<ab>[AB])(?:\.[^.]+)?$")
_UNSUPPORTED = ("lora_magnitude_vector", "lora_E", "hada_", "lokr_", "ia3_", "oft_")


@dataclass(frozen=True)
class LoraConfig:
    """A LoRA adapter's settings (adapter_config.json)."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    base_model: str | None = None

    def _pattern(self, patterns: Mapping[str, Any], module: str) -> Any:
        # PEFT: the first key that equals the module name or matches its end after a dot
        for key, value in patterns.items():
            if module == key or re.match(rf"(.*\.)?({key})$", module):
                return value
        return None

    def scale(self, module: str, rank: int) -> float:
        r = self._pattern(self.rank_pattern, module) or rank
        alpha = self._pattern(self.alpha_pattern, module)
        alpha = self.lora_alpha if alpha is None else alpha
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def parse_adapter_config(data: bytes, shown: str = ADAPTER_CONFIG) -> LoraConfig:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise FormatError(f"{shown}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{shown}: not a JSON object")
    kind = doc.get("peft_type", "LORA")
    if kind != "LORA":
        raise FormatError(f"{shown}: peft_type {kind!r} is not supported (only LORA)")
    if doc.get("use_dora"):
        raise FormatError(f"{shown}: DoRA adapters (use_dora) are not supported")
    try:
        r = int(doc["r"])
        alpha = float(doc.get("lora_alpha", r))
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"{shown}: needs an integer 'r' and a number 'lora_alpha'") from None
    if r <= 0:
        raise FormatError(f"{shown}: r must be positive, got {r}")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=bool(doc.get("use_rslora", False)),
        fan_in_fan_out=bool(doc.get("fan_in_fan_out", False)),
        rank_pattern=dict(doc.get("rank_pattern") or {}),
        alpha_pattern=dict(doc.get("alpha_pattern") or {}),
        base_model=doc.get("base_model_name_or_path"),
    )


@dataclass(frozen=True)
class LoraTarget:
    """One base tensor the adapter changes: by a low-rank pair, or replaced whole."""

    module: str  # e.g. model.layers.0.self_attn.q_proj
    base_tensor: str  # e.g. model.layers.0.self_attn.q_proj.weight
    a: str | None = None  # adapter tensor names
    b: str | None = None
    embedding: bool = False
    replace: str | None = None  # modules_to_save: the adapter tensor that replaces it


def _strip(name: str) -> str:
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


def adapter_targets(names: Iterable[str]) -> dict[str, LoraTarget]:
    """The base tensors an adapter's tensors change, by base tensor name."""
    pairs: dict[tuple[str, bool], dict[str, str]] = {}
    whole: dict[str, str] = {}
    for name in names:
        if any(u in name for u in _UNSUPPORTED):
            raise FormatError(f"adapter tensor {name}: this kind of adapter is not supported")
        short = _strip(name)
        m = _LINEAR.match(short)
        emb = False
        if m is None:
            m = _EMBED.match(short)
            emb = m is not None
        if m is not None:
            pairs.setdefault((m.group("m"), emb), {})[m.group("ab")] = name
            continue
        if "lora_" in short:
            raise FormatError(f"adapter tensor {name}: not a LoRA A/B weight")
        # modules_to_save, and embedding layers PEFT saves with save_embedding_layers
        whole[short.replace(".modules_to_save.default", "").replace(".base_layer", "")] = name
    out: dict[str, LoraTarget] = {}
    for (module, emb), ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            missing = "B" if "A" in ab else "A"
            raise FormatError(f"adapter module {module}: lora_{missing} is missing")
        out[module + ".weight"] = LoraTarget(module, module + ".weight", ab["A"], ab["B"], emb)
    for base_name, name in sorted(whole.items()):
        if base_name in out:  # the saved base weight first, then its low-rank update
            t = out[base_name]
            out[base_name] = LoraTarget(t.module, base_name, t.a, t.b, t.embedding, name)
        else:
            out[base_name] = LoraTarget(base_name.rsplit(".", 1)[0], base_name, replace=name)
    return out


def delta_shape(
    target: LoraTarget, a_shape: tuple[int, ...], b_shape: tuple[int, ...], fan_in_fan_out: bool
) -> tuple[int, int]:
    """The shape B @ A gives the base tensor (checked before any data is read)."""
    if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
        raise FormatError(
            f"adapter module {target.module}: lora_A {list(a_shape)} and lora_B "
            f"{list(b_shape)} are not a rank-r pair"
        )
    out, inp = b_shape[0], a_shape[1]
    if target.embedding or fan_in_fan_out:
        return inp, out
    return out, inp


def apply_lora(
    w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, transpose: bool
) -> torch.Tensor:
    """W + scale * (B @ A) (transposed), in fp32, rounded once to W's dtype."""
    import torch

    delta = (b.to(torch.float32) @ a.to(torch.float32)) * scale
    if transpose:
        delta = delta.T
    if w.dtype == torch.float32:
        return w + delta
    return (w.to(torch.float32) + delta).to(w.dtype)
