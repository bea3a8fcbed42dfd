"""Preflight: every input tensor checked against the plan before any block is read.

Each refusal is one line that names the tensor, both models and both shapes (or dtypes), and
ends with the likely fix, e.g.::

    vocab size differs: model.embed_tokens.weight is [32000, 4096] in main but [32002, 4096]
    in math; set tokenizer_source: union (or base, or one model's name)

Tensors missing from an input are refused earlier, by the planner, naming the model that lacks
the tensor (see tensorplan.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mergestore.errors import MergeError
from mergestore.formats.safetensors import DTYPE_SIZES

if TYPE_CHECKING:
    from mergestore.merge.inputs import ResolvedModel
    from mergestore.merge.tensorplan import OutputTensorPlan

FLOAT_DTYPES = frozenset({"BF16", "F16", "F32", "F64", "F8_E5M2", "F8_E4M3"})
VOCAB_MARKERS = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out")
VOCAB_FIX = "set tokenizer_source: union (or base, or one model's name), or --tokenizer-source"
SHAPE_FIX = (
    "the models differ in size here; merge only layers of matching shape with slices "
    "(slices: - sources: [{model: ..., layer_range: [a, b]}])"
)
TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def is_vocab_tensor(name: str) -> bool:
    return any(m in name for m in VOCAB_MARKERS)


def _dims(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def preflight(
    plans: Sequence[OutputTensorPlan],
    models: Sequence[ResolvedModel],
    *,
    compute_dtype: str | None,
    tokenizer_source: str | None,
) -> None:
    """Refuse missing tensors, shape/dtype mismatches and differing non-float tensors."""
    for p in plans:
        sources = [*([p.base] if p.base else []), *p.inputs]
        if p.copy_from is not None:
            sources = [p.copy_from]
        recs = []
        for s in sources:
            m = models[s.model_index]
            rec = m.tensors.get(s.tensor_name)
            if rec is None:
                have = [o.ref.text for o in models if s.tensor_name in o.tensors]
                where = f" (present in {', '.join(have)})" if have else ""
                raise MergeError(f"tensor {s.tensor_name} is missing from {m.ref.text}{where}")
            recs.append((m, s.tensor_name, rec))
        first_m, first_name, first = recs[0]
        for m, name, rec in recs[1:]:
            if rec.shape != first.shape:
                vocab = is_vocab_tensor(p.name) and tuple(rec.shape[1:]) == tuple(first.shape[1:])
                if vocab and tokenizer_source is not None:
                    continue
                what = "vocab size differs" if vocab else "shape differs"
                fix = VOCAB_FIX if vocab else SHAPE_FIX
                raise MergeError(
                    f"{what}: {name} is {_dims(first.shape)} in {first_m.ref.text} but "
                    f"{_dims(rec.shape)} in {m.ref.text}; {fix}"
                )
            if rec.dtype != first.dtype:
                if rec.dtype not in FLOAT_DTYPES or first.dtype not in FLOAT_DTYPES:
                    raise MergeError(
                        f"dtype differs: {name} is {first.dtype} in {first_m.ref.text} but "
                        f"{rec.dtype} in {m.ref.text}; only float tensors can be cast, so "
                        "these inputs cannot be merged"
                    )
                if compute_dtype is None:
                    raise MergeError(
                        f"dtype differs: {name} is {first.dtype} in {first_m.ref.text} but "
                        f"{rec.dtype} in {m.ref.text}; set dtype: (e.g. dtype: "
                        f"{TORCH_NAMES.get(first.dtype, 'float32')}) or --dtype"
                    )
            stored = bool(first_m.commit and m.commit)  # precheck.py: a folder not stored yet
            if first.dtype not in FLOAT_DTYPES and stored and rec.blocks != first.blocks:
                raise MergeError(
                    f"non-float tensor differs: {name} ({first.dtype}) is not the same in "
                    f"{first_m.ref.text} and {m.ref.text}; only float tensors can be merged"
                )
        if first.dtype not in DTYPE_SIZES:
            raise MergeError(f"tensor {p.name} has unsupported dtype {first.dtype}")
