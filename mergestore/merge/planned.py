"""A commit's tensors (name, dtype, shape, bytes, block count) without computing anything.

A stored commit lists them from its tree. A lazy merge never computed has no tree yet, but
its plan fixes every output tensor's name, dtype and shape (the rules merge --out lays its
folder out by: outfolder.predict_outputs) and their order in the output files
(layout.plan_shards); the block count follows from the shape and the plan's block size.
`ls --tensors` reads them here, so listing a lazy merge leaves it lazy.
"""

from __future__ import annotations

import math

from mergestore.checkout import tensor_records
from mergestore.fast_dataclass import dataclass
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.store import merges
from mergestore.store.blocks import tensor_blocking
from mergestore.store.repo import Repository


@dataclass(frozen=True)
class TensorShape:
    """One tensor of a commit, from its tree or, for a lazy merge, from its plan."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    blocks: int  # the tensor's blocks by position, as ls, show and diff count them


def tensor_shapes(repo: Repository, cid: bytes) -> list[TensorShape]:
    """Commit `cid`'s tensors in file order: from its tree, or a lazy merge's from its plan."""
    tree = merges.known_tree(repo, cid)
    if tree is not None:
        return [
            TensorShape(t.name, t.dtype, tuple(t.shape), t.nbytes, len(t.blocks))
            for t in tensor_records(repo, tree)
        ]
    return planned_shapes(repo, cid)


def planned_shapes(repo: Repository, cid: bytes) -> list[TensorShape]:
    """A lazy merge's output tensors as its plan will lay them out, computing none."""
    from mergestore.merge.layout import plan_shards
    from mergestore.merge.materialize import prepared_from_commit
    from mergestore.merge.outfolder import predict_outputs
    from mergestore.merge.prepared import make_engine, output_files

    prep = prepared_from_commit(repo, repo.get_commit(cid))
    engine = make_engine(repo, prep)
    layout_index = prep.base_index if prep.base_index is not None else 0
    layout = plan_shards(
        repo,
        predict_outputs(engine, prep.tasks),
        prep.models[layout_index].commit,
        output_files(prep)["shard_bytes"],
    )
    out = []
    for shard in layout.shards:
        for m in shard.tensors:
            size = DTYPE_SIZES[m.dtype]
            blocks = tensor_blocking(m.shape, size, engine.block_size).num_blocks
            out.append(TensorShape(m.name, m.dtype, m.shape, math.prod(m.shape) * size, blocks))
    return out
