"""``base+adapter`` model references (mergekit's ``model+lora``): a LoRA applied to its base.

The adapter is a commit of a PEFT folder (``mergestore commit ./adapter --base main``). When a
merge names ``main+adapter``, every tensor the adapter targets is read, changed to
W + scale * (B @ A) (formats/lora.py) and written, one tensor at a time; every other tensor keeps
the base's blocks. The result is a detached commit whose parents are the base and the adapter,
with a fixed time and author, so applying the same adapter to the same base always gives the
same commit id (and stores only the changed tensors' blocks once). The merge plan records that
commit, so `replay` reads exactly the bits the merge read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mergestore.errors import MergeError
from mergestore.formats.lora import (
    ADAPTER_CONFIG,
    adapter_targets,
    apply_lora,
    delta_shape,
    parse_adapter_config,
)
from mergestore.formats.safetensors import DTYPE_SIZES, torch_dtype
from mergestore.merge.engine import OutputTensor, StoreSink
from mergestore.merge.layout import build_tree
from mergestore.store.blocks import tensor_blocking
from mergestore.store.objects import BlobFile, Commit, TensorFile, TensorRecord

if TYPE_CHECKING:
    import torch

    from mergestore.store.repo import Repository

AUTHOR = "mergestore <lora>"


def split_lora_ref(text: str) -> tuple[str, str] | None:
    """("main", "adapter") for "main+adapter"; None without a "+"."""
    if "+" not in text:
        return None
    base, _, lora = text.partition("+")
    if not base or not lora or "+" in lora:
        raise MergeError(f"model {text!r}: expected BASE+ADAPTER")
    return base, lora


def _tensors(repo: Repository, cid: bytes) -> dict[str, TensorRecord]:
    out: dict[str, TensorRecord] = {}
    for e in repo.get_tree(repo.get_commit(cid).tree).entries:
        if e.kind == "tensorfile":
            tf = repo.get_file(e.object)
            assert isinstance(tf, TensorFile)
            for t in tf.tensors:
                out[t.name] = t
    return out


def _blob(repo: Repository, cid: bytes, path: str) -> bytes | None:
    for e in repo.get_tree(repo.get_commit(cid).tree).entries:
        if e.path == path and e.kind == "blob":
            obj = repo.get_file(e.object)
            assert isinstance(obj, BlobFile)
            return b"".join(repo.read_block(b) for b in obj.blocks)
    return None


def _read(repo: Repository, rec: TensorRecord) -> torch.Tensor:
    import torch

    buf = bytearray(b"".join(repo.read_block(b) for b in rec.blocks))
    if not buf:
        return torch.empty(rec.shape, dtype=torch_dtype(rec.dtype))
    return torch.frombuffer(buf, dtype=torch_dtype(rec.dtype)).reshape(rec.shape)


def check_adapter(
    label: str, raw_cfg: bytes, a_recs: Mapping[str, Any], b_recs: Mapping[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The adapter's config and targets, once every target is checked against the base's
    tensors (records with `.shape`: stored, or read from safetensors headers by
    merge/precheck.py before anything is stored)."""
    cfg = parse_adapter_config(raw_cfg, f"{label}: {ADAPTER_CONFIG}")
    targets = adapter_targets(a_recs)
    if not targets:
        raise MergeError(f"{label}: the adapter has no LoRA tensors")
    # preflight: every target exists in the base with the shape the adapter makes
    for name, t in targets.items():
        w = b_recs.get(name)
        if w is None:
            raise MergeError(f"{label}: the adapter changes {name}, which the base lacks")
        if t.replace is not None and tuple(a_recs[t.replace].shape) != tuple(w.shape):
            raise MergeError(
                f"{label}: {name} is {list(w.shape)} in the base but "
                f"{list(a_recs[t.replace].shape)} in the adapter"
            )
        shape = tuple(w.shape)
        if t.a is not None and t.b is not None:
            shape = delta_shape(
                t, tuple(a_recs[t.a].shape), tuple(a_recs[t.b].shape), cfg.fan_in_fan_out
            )
        if tuple(w.shape) != shape:
            raise MergeError(
                f"{label}: {name} is {list(w.shape)} in the base but the adapter makes "
                f"{list(shape)}"
            )
    return cfg, targets


def apply_adapter(repo: Repository, base: bytes, adapter: bytes, label: str) -> bytes:
    """The commit of `adapter` applied to `base` (made once; the same ids give the same commit)."""
    raw_cfg = _blob(repo, adapter, ADAPTER_CONFIG)
    if raw_cfg is None:
        raise MergeError(f"{label}: the adapter commit has no {ADAPTER_CONFIG} (not a PEFT LoRA)")
    a_recs = _tensors(repo, adapter)
    b_recs = _tensors(repo, base)
    cfg, targets = check_adapter(label, raw_cfg, a_recs, b_recs)
    outputs: list[OutputTensor] = []
    ambient = repo.reading_session  # inside a merge: its session, published with it
    with repo.writer() if ambient is None else contextlib.nullcontext(ambient) as session:
        assert session is not None
        sink = StoreSink(repo, session)
        for name, rec in b_recs.items():
            t = targets.get(name)
            if t is None:
                outputs.append(
                    OutputTensor(name, rec.dtype, tuple(rec.shape), rec.rows_per_block, rec.blocks)
                )
                continue
            w = _read(repo, rec)
            new = w
            if t.replace is not None:
                w = new = _read(repo, a_recs[t.replace]).to(w.dtype)
            if t.a is not None and t.b is not None:
                a, b = _read(repo, a_recs[t.a]), _read(repo, a_recs[t.b])
                new = apply_lora(
                    w, a, b, cfg.scale(t.module, a.shape[0]), t.embedding or cfg.fan_in_fan_out
                )
            data = memoryview(new.contiguous().view(-1).view(torch_u8()).numpy())
            blocking = tensor_blocking(
                tuple(rec.shape), DTYPE_SIZES[rec.dtype], repo.config.block_size
            )
            raws = [data[b0:b1] for b0, b1 in blocking.ranges()]
            ids = sink.put_blocks(raws, rec.dtype, [None] * len(raws))
            outputs.append(
                OutputTensor(name, rec.dtype, tuple(rec.shape), blocking.rows_per_block, tuple(ids))
            )
        tree = build_tree(
            repo, session, outputs, layout_commit=base, tokenizer_commit=None, out_dtype=None
        )
        commit = Commit(
            tree=tree,
            parents=(base, adapter),
            message=f"lora: {label}",
            author=AUTHOR,
            time=0.0,
            base=base,
            meta={
                "lora_base": base.hex(),
                "lora_adapter": adapter.hex(),
                "lora_rule": "W + scale*(B@A) in fp32, rounded once to W's dtype",
                "lora_scale": "lora_alpha/sqrt(r)" if cfg.use_rslora else "lora_alpha/r",
            },
        )
        cid = session.put_object(commit)
        if ambient is None:
            session.publish([])
    return cid


def torch_u8() -> torch.dtype:
    import torch

    return torch.uint8
