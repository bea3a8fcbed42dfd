"""``pytorch_model*.bin`` checkpoints, converted to safetensors before they are stored.

Each shard is read with ``torch.load(weights_only=True)`` (memory-mapped): the restricted
unpickler builds tensors and plain containers only, so no pickled code ever runs. Shards are
converted one at a time into a staging folder beside the other files, and
``pytorch_model.bin.index.json`` becomes ``model.safetensors.index.json``; the store then commits
that folder like any safetensors checkpoint. Checkout gives safetensors, as mergekit writes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from mergestore.errors import FormatError

BIN_INDEX = "pytorch_model.bin.index.json"
_BIN = re.compile(r"^pytorch_model(.*)\.bin$")


def bin_shards(folder: Path) -> list[Path]:
    """The pytorch_model*.bin files at the top of a folder, sorted."""
    return sorted(p for p in folder.iterdir() if _BIN.match(p.name) and p.is_file())


def needs_conversion(path: Path) -> bool:
    """A folder with pytorch_model*.bin weights and no safetensors (or one .bin file)."""
    if path.is_file():
        return bool(_BIN.match(path.name))
    if not path.is_dir():
        return False
    return bool(bin_shards(path)) and not any(path.glob("*.safetensors"))


def _safetensors_name(bin_name: str) -> str:
    m = _BIN.match(bin_name)
    assert m is not None
    return f"model{m.group(1)}.safetensors"


def _load(path: Path) -> dict:
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # UnpicklingError for forbidden globals, zip errors, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(
            f"{path}: not loadable as plain tensors with torch.load(weights_only=True): {first}"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise FormatError(f"{path}: not a state dict of named tensors")
    return sd


def _save(sd: dict, out: Path) -> int:
    """Save a state dict as safetensors; tensors sharing storage (tied weights) are copied."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    flat = {}
    for k in sorted(sd):
        t = sd[k]
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        t = t.contiguous()
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(key)
        flat[k] = t
    save_file(flat, out, metadata={"format": "pt"})
    return len(flat)


def convert_bin_checkpoint(src: Path, staging: Path) -> dict[str, str]:
    """Stage `src` (a .bin folder or file) as a safetensors checkpoint in `staging`.

    Returns the metadata a commit records about the conversion.
    """
    staging.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        shards, others = [src], []
    else:
        shards = bin_shards(src)
        others = [p for p in src.iterdir() if p not in shards and p.name != BIN_INDEX]
    n = 0
    for shard in shards:
        n += _save(_load(shard), staging / _safetensors_name(shard.name))
    for p in others:
        if p.name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt")):
            continue  # other pickles are never loaded
        os.symlink(p.resolve(), staging / p.name)
    if not src.is_file() and (src / BIN_INDEX).is_file():
        try:
            doc = json.loads((src / BIN_INDEX).read_text())
            wm = {k: _safetensors_name(v) for k, v in doc["weight_map"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"{src / BIN_INDEX}: unreadable shard index ({e})") from None
        total = sum(f.stat().st_size for f in staging.glob("*.safetensors"))
        meta = dict(doc.get("metadata") or {})
        meta["total_size"] = meta.get("total_size", total)
        out = {"metadata": meta, "weight_map": dict(sorted(wm.items()))}
        (staging / "model.safetensors.index.json").write_text(json.dumps(out, indent=2) + "\n")
    return {
        "converted_from": ",".join(s.name for s in shards),
        "conversion": "torch.load(weights_only=True) -> safetensors",
        "converted_tensors": str(n),
    }
