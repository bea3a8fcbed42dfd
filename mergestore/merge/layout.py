"""The output checkpoint's files: shards, headers, index json, config and tokenizer files."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from mergestore.fast_dataclass import dataclass
from mergestore.formats.safetensors import DTYPE_SIZES, TensorEntry, encode_header
from mergestore.merge.engine import OutputTensor
from mergestore.store.blocks import blob_ranges
from mergestore.store.objects import BlobFile, TensorFile, TensorRecord, Tree, TreeEntry
from mergestore.store.repo import Repository, WriteSession

DEFAULT_SHARD_BYTES = 5_000_000_000  # mergekit's default output shard size
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "added_tokens.json",
        "merges.txt",
        "vocab.json",
        "vocab.txt",
        "chat_template.jinja",
        "chat_template.json",
        "spiece.model",
    }
)
CARD_FILE = "README.md"
TORCH_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def _read_blob(repo: Repository, oid: bytes) -> bytes:
    obj = repo.get_file(oid)
    assert isinstance(obj, BlobFile)
    return b"".join(repo.read_block(b) for b in obj.blocks)


def _put_blob(session: WriteSession, data: bytes, block_size: int) -> bytes:
    blocks = tuple(session.put_raw(data[a:b]) for a, b in blob_ranges(len(data), block_size))
    return session.put_object(BlobFile(size=len(data), blocks=blocks))


def _record(out: OutputTensor, begin: int) -> TensorRecord:
    n = DTYPE_SIZES[out.dtype]
    for s in out.shape:
        n *= s
    return TensorRecord(
        out.name, out.dtype, out.shape, begin, begin + n, out.rows_per_block, out.blocks
    )


@dataclass(frozen=True)
class TensorMeta:
    """What the layout of an output tensor depends on."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ShardPlan:
    """One output safetensors file: its tensors in data order, the header's metadata, and the
    layout model's header blob when the file keeps that header byte for byte."""

    path: str
    tensors: tuple[TensorMeta, ...]
    metadata: dict[str, str] | None
    header_blob: bytes | None


@dataclass(frozen=True)
class ShardLayout:
    """The output folder's safetensors files and index."""

    shards: tuple[ShardPlan, ...]
    index_paths: tuple[str, ...]  # index json files to write (the layout model's, or a new one)
    weight_map: dict[str, str]
    total: int  # bytes of tensor data


def plan_shards(
    repo: Repository,
    outputs: Sequence[TensorMeta],
    layout_commit: bytes,
    shard_bytes: int | None = None,
) -> ShardLayout:
    """Which output file holds which tensors, in which order: the layout model's files when
    the tensor names match, else fresh shards of at most `shard_bytes`, by name. Decided from
    names, dtypes and shapes alone, so merge --out lays its folder out before any tensor is
    computed, exactly as the commit's tree will be."""
    src_tree = repo.get_tree(repo.get_commit(layout_commit).tree)
    by_name = {o.name: o for o in outputs}
    src_files = {e.path: e for e in src_tree.entries}
    src_tensors: dict[str, list[TensorRecord]] = {}
    for e in src_tree.entries:
        if e.kind == "tensorfile":
            tf = repo.get_file(e.object)
            assert isinstance(tf, TensorFile)
            src_tensors[e.path] = list(tf.tensors)
    src_names = {t.name for ts in src_tensors.values() for t in ts}
    shards: list[ShardPlan] = []
    weight_map: dict[str, str] = {}
    total = 0
    if src_names == set(by_name) and shard_bytes is None:
        index_paths = tuple(p for p in src_files if p.endswith(".safetensors.index.json"))
        for path, ts in src_tensors.items():
            outs = [by_name[t.name] for t in ts]
            same = all(
                o.dtype == t.dtype and o.shape == t.shape for o, t in zip(outs, ts, strict=True)
            )
            tf_src = repo.get_file(src_files[path].object)
            assert isinstance(tf_src, TensorFile)
            meta = _header_metadata(repo, tf_src.header)
            shards.append(ShardPlan(path, tuple(outs), meta, tf_src.header if same else None))
            for o in outs:
                weight_map[o.name] = path
                total += _nbytes(o)
    else:
        groups: list[list[TensorMeta]] = [[]]
        cur = 0
        for o in sorted(outputs, key=lambda x: x.name):
            n = _nbytes(o)
            if groups[-1] and cur + n > (shard_bytes or DEFAULT_SHARD_BYTES):
                groups.append([])
                cur = 0
            groups[-1].append(o)
            cur += n
            total += n
        k = len(groups)
        for i, outs in enumerate(groups):
            path = "model.safetensors" if k == 1 else f"model-{i + 1:05d}-of-{k:05d}.safetensors"
            shards.append(ShardPlan(path, tuple(outs), {"format": "pt"}, None))
            for o in outs:
                weight_map[o.name] = path
        index_paths = ("model.safetensors.index.json",) if k > 1 else ()
    return ShardLayout(tuple(shards), index_paths, weight_map, total)


def shard_header(repo: Repository, shard: ShardPlan) -> tuple[bytes, list[TensorEntry]]:
    """A shard's header bytes (the layout model's, kept, or a new canonical one) and each
    tensor's data range after it."""
    header, layout = encode_header(
        [(o.name, o.dtype, o.shape) for o in shard.tensors], shard.metadata
    )
    if shard.header_blob is not None:
        header = _read_blob(repo, shard.header_blob)
    return header, layout


def _nbytes(o: TensorMeta | OutputTensor) -> int:
    n = DTYPE_SIZES[o.dtype]
    for s in o.shape:
        n *= s
    return n


def _tensorfile(
    session: WriteSession,
    repo: Repository,
    outs: Sequence[OutputTensor],
    metadata: dict[str, str] | None,
    header_blob: bytes | None,
) -> tuple[bytes, int]:
    """A TensorFile for `outs` in order; reuses `header_blob` when given (identical layout)."""
    header, layout = encode_header([(o.name, o.dtype, o.shape) for o in outs], metadata)
    if header_blob is None:
        header_blob = _put_blob(session, header, repo.config.block_size)
        header_len = len(header)
    else:
        hb = repo.get_file(header_blob)
        header_len = hb.size
    recs = tuple(_record(o, e.begin) for o, e in zip(outs, layout, strict=True))
    size = 8 + header_len + (layout[-1].end if layout else 0)
    tf = TensorFile(size=size, header=header_blob, tensors=recs)
    return session.put_object(tf), size


def build_tree(
    repo: Repository,
    session: WriteSession,
    outputs: Sequence[OutputTensor],
    *,
    layout_commit: bytes,
    tokenizer_commit: bytes | None,
    out_dtype: str | None,
    extra_files: dict[str, bytes] | None = None,
    shard_bytes: int | None = None,
    copy_tokenizer: bool = True,
) -> bytes:
    """Mirror the layout model's files when the tensor names match; else lay out fresh shards.

    `shard_bytes` (mergekit's --out-shard-size) always lays out fresh shards of at most that
    many tensor bytes, named as mergekit names them; None mirrors the layout model when it can
    (its shard headers are then shared) and uses mergekit's 5 GB otherwise. The layout model's
    README.md is never copied (the merge writes its own card); `copy_tokenizer=False` leaves
    the tokenizer files out.
    """
    src_tree = _known_tree(repo, layout_commit)
    by_name = {o.name: o for o in outputs}
    src_files = {e.path: e for e in src_tree.entries}
    plan = plan_shards(
        repo, [TensorMeta(o.name, o.dtype, o.shape) for o in outputs], layout_commit, shard_bytes
    )
    entries: list[TreeEntry] = []
    for shard in plan.shards:
        outs = [by_name[t.name] for t in shard.tensors]
        oid, size = _tensorfile(session, repo, outs, shard.metadata, shard.header_blob)
        entries.append(TreeEntry(shard.path, "tensorfile", oid, size))
    index_paths, weight_map, total = plan.index_paths, plan.weight_map, plan.total
    tok_files = {}
    if tokenizer_commit is not None and tokenizer_commit != layout_commit:
        tok_tree = _known_tree(repo, tokenizer_commit)
        tok_files = {
            e.path: e for e in tok_tree.entries if e.path.split("/")[-1] in TOKENIZER_FILES
        }
    if not copy_tokenizer:
        tok_files = {}
    for path, e in src_files.items():
        if e.kind == "tensorfile" or path.endswith(".safetensors.index.json"):
            continue
        if path == CARD_FILE:
            continue  # an input's own model card describes the input, not this merge
        if not copy_tokenizer and path.split("/")[-1] in TOKENIZER_FILES:
            continue
        if path.split("/")[-1] in TOKENIZER_FILES and tok_files:
            continue
        if path == "config.json":
            old_data = _read_blob(repo, e.object)
            data = agreeing_config(old_data, outputs)
            if data != old_data:
                oid = _put_blob(session, data, repo.config.block_size)
                entries.append(TreeEntry(path, "blob", oid, len(data)))
                continue
        entries.append(e)
    entries.extend(tok_files.values())
    for path in index_paths:
        old = src_files.get(path)
        meta: dict = {}
        if old is not None:
            try:
                old_doc = json.loads(_read_blob(repo, old.object))
                meta = dict(old_doc.get("metadata") or {})
                if old_doc.get("weight_map") == weight_map and meta.get("total_size") == total:
                    entries.append(old)  # unchanged: keep the original bytes
                    continue
            except (ValueError, AttributeError):
                meta = {}
        meta["total_size"] = total
        doc = {"metadata": meta, "weight_map": dict(sorted(weight_map.items()))}
        data = (json.dumps(doc, indent=2) + "\n").encode()
        oid = _put_blob(session, data, repo.config.block_size)
        entries.append(TreeEntry(path, "blob", oid, len(data)))
    for path, data in (extra_files or {}).items():
        oid = _put_blob(session, data, repo.config.block_size)
        entries = [e for e in entries if e.path != path]
        entries.append(TreeEntry(path, "blob", oid, len(data)))
    entries.sort(key=lambda e: e.path)
    return session.put_object(Tree(entries=tuple(entries)))


def _header_metadata(repo: Repository, header_blob: bytes) -> dict[str, str] | None:
    try:
        doc = json.loads(_read_blob(repo, header_blob))
    except ValueError:
        return None
    meta = doc.get("__metadata__")
    return dict(meta) if isinstance(meta, dict) else None


LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
DTYPE_KEYS = ("torch_dtype", "dtype")


def tensor_facts(outputs: Sequence[OutputTensor]) -> dict[str, Any]:
    """What the output tensors say about the model: layer count, vocab size, float dtype."""
    facts: dict[str, Any] = {}
    layers = {int(m.group(1)) for o in outputs if (m := LAYER_RE.search(o.name))}
    if layers:
        facts["layers"] = max(layers) + 1
    embeds = [o for o in outputs if o.name.endswith(EMBED_SUFFIXES) and o.shape]
    heads = [o for o in outputs if o.name.endswith("lm_head.weight") and o.shape]
    if embeds or heads:
        facts["vocab"] = (embeds or heads)[0].shape[0]
    by_dtype: dict[str, int] = {}
    for o in outputs:
        if o.dtype in TORCH_DTYPE_NAMES:
            by_dtype[o.dtype] = by_dtype.get(o.dtype, 0) + _record(o, 0).nbytes
    if by_dtype:
        facts["dtype"] = TORCH_DTYPE_NAMES[max(by_dtype, key=lambda d: by_dtype[d])]
    return facts


def agreeing_config(data: bytes, outputs: Sequence[OutputTensor]) -> bytes:
    """config.json made to agree with the tensors written beside it (as mergekit updates it).

    mergekit sets ``torch_dtype`` to out_dtype (else dtype), the layer count to the sum of the
    slices' lengths, and ``vocab_size`` to the merged tokenizer's. Here each value is read off
    the output tensors themselves: the most common float dtype by bytes, the highest layer
    index + 1, and the embedding's rows. Unchanged input keeps its bytes.
    """
    try:
        cfg = json.loads(data)
    except ValueError:
        return data
    if not isinstance(cfg, dict):
        return data
    facts = tensor_facts(outputs)
    changed = False

    def put(keys: Sequence[str], value: Any) -> None:
        nonlocal changed
        for key in keys:
            if key in cfg and cfg[key] != value:
                cfg[key] = value
                changed = True

    if "layers" in facts:
        put([k for k in LAYER_KEYS if k in cfg][:1], facts["layers"])
    if "vocab" in facts:
        put(["vocab_size"], facts["vocab"])
    if "dtype" in facts:
        put(DTYPE_KEYS, facts["dtype"])
    if not changed:
        return data
    return (json.dumps(cfg, indent=2) + "\n").encode()


def _known_tree(repo: Repository, cid: bytes) -> Tree:
    """An input's tree (a lazy merge input was computed when the merge resolved its inputs)."""
    from mergestore.store.merges import readable_tree

    return readable_tree(repo, cid, ())
