"""Elementwise merges stream large tensors in pieces of blocks: the same output, bit for bit."""

from __future__ import annotations

import pytest

import mergestore.merge.pieces as pieces_mod
from fixtures.family import FamilySpec
from fixtures.store import family_store
from mergestore.api import Store
from mergestore.merge.engine import Engine


def _family_store(root, dtype: str) -> Store:
    spec = FamilySpec(
        n_layers=2,
        hidden=64,
        intermediate=128,
        vocab=1024,  # embeddings of 32 blocks of 4 KiB in bf16, 64 in fp32
        dtype=dtype,
        experts=("dense_small", "frozen", "uneven0"),
        seed=3,
    )
    s, _fam = family_store(root, spec)
    return s


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    s = _family_store(tmp_path_factory.mktemp("pieces"), "bfloat16")
    yield s
    s.close()


@pytest.fixture(scope="module")
def store32(tmp_path_factory: pytest.TempPathFactory) -> Store:
    s = _family_store(tmp_path_factory.mktemp("pieces32"), "float32")
    yield s
    s.close()


def _merge_both_ways(
    s: Store, monkeypatch, tmp_path, method, base, params, dtype, out_dtype
) -> tuple[int, int]:
    """Merge in pieces (writing the folder too) and whole; the same tree, the folder equal to
    the commit's checkout, replay identical. Returns the engine's task counts, both ways."""
    kw = dict(
        method=method,
        base=base,
        models=["dense_small", "frozen", "uneven0"],
        weights=[0.5, 0.3, 0.4],
        params=params,
        dtype=dtype,
        out_dtype=out_dtype,
    )
    tag = f"{method}-{dtype}-{out_dtype}"
    counts: list[int] = []
    real_run = Engine.run

    def counting(self, tasks, *a, **k):
        counts.append(len(tasks))
        return real_run(self, tasks, *a, **k)

    monkeypatch.setattr(Engine, "run", counting)
    # not on main: the base stays put
    pieces = s.merge(**kw, branch=f"pieces-{tag}", out=tmp_path / "out")
    with monkeypatch.context() as m:
        m.setattr(pieces_mod, "PIECE_BLOCKS", 10**9)
        whole = s.merge(**kw, branch=f"whole-{tag}", force=True)  # the memo would answer
    assert s.get_commit(pieces.commit).tree == s.get_commit(whole.commit).tree
    s.checkout(pieces.commit.hex(), tmp_path / "checkout")
    for f in sorted((tmp_path / "checkout").iterdir()):
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes(), f.name
    assert s.replay(pieces.commit.hex())["identical"]
    return counts[0], counts[1]


@pytest.mark.parametrize(
    "method,base,params,dtype,out_dtype",
    [
        ("task_arithmetic", "main", {}, None, "bfloat16"),
        ("task_arithmetic", "main", {}, "float32", "bfloat16"),
        # a wider output: an output block holds half the rows of an input block
        ("task_arithmetic", "main", {}, "float32", "float32"),
        ("linear", None, {}, None, "bfloat16"),
        ("linear", None, {}, "float32", "float32"),
        ("ties", "main", {"density": 0.5}, None, "bfloat16"),  # not elementwise: never cut
    ],
)
def test_pieces_give_the_whole_tensors_blocks(
    store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path, method, base, params, dtype, out_dtype
) -> None:
    cut, whole = _merge_both_ways(
        store, monkeypatch, tmp_path, method, base, params, dtype, out_dtype
    )
    n_tensors = len(store.tensors("main"))
    if method == "ties":
        assert cut == whole == n_tensors
    else:
        assert cut > whole == n_tensors  # really merged in pieces


@pytest.mark.parametrize(
    "method,base,dtype,out_dtype",
    [
        # fp32 inputs, a bf16 output: an output block holds twice the rows of an input block,
        # so pieces start where both blockings start a block
        ("task_arithmetic", "main", "float32", "bfloat16"),
        ("task_arithmetic", "main", "bfloat16", None),
        ("linear", None, "float32", "bfloat16"),
        ("linear", None, None, None),
    ],
)
def test_pieces_of_fp32_inputs_for_any_output(
    store32: Store, monkeypatch: pytest.MonkeyPatch, tmp_path, method, base, dtype, out_dtype
) -> None:
    cut, whole = _merge_both_ways(
        store32, monkeypatch, tmp_path, method, base, {}, dtype, out_dtype
    )
    assert cut > whole == len(store32.tensors("main"))


def test_piece_boundaries_respect_both_blockings() -> None:
    """Where the output's rows per block differ from the inputs', every piece starts on a row
    that starts a block of both (the lcm of the two), close to PIECE_BLOCKS input blocks."""
    import math

    from mergestore.formats.safetensors import DTYPE_SIZES
    from mergestore.merge.engine import TensorTask
    from mergestore.store.blocks import tensor_blocking
    from mergestore.store.objects import TensorRecord

    def rec(shape, dtype, block):
        b = tensor_blocking(shape, DTYPE_SIZES[dtype], block)
        n = math.ceil(shape[0] / b.rows_per_block)
        nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
        return TensorRecord(
            name="t",
            dtype=dtype,
            shape=shape,
            begin=0,
            end=nbytes,
            rows_per_block=b.rows_per_block,
            blocks=tuple(bytes([i % 256]) * 32 for i in range(n)),
        )

    class Plan:
        copy_from = None

    for shape, dtype, out in (
        ((4000, 64), "F32", "BF16"),  # 16 rows a block in, 32 out
        ((4000, 64), "BF16", "F32"),  # 32 in, 16 out
        ((4000, 96), "F32", "BF16"),  # 10 in, 21 out: 210-row steps
    ):
        r = rec(shape, dtype, 4096)
        task = TensorTask(Plan(), None, [r, r], [0, 1], None, [None, None])
        runs = pieces_mod.elementwise_pieces(task, out, 4096)
        assert runs is not None and len(runs) > 1
        out_rows = tensor_blocking(shape, DTYPE_SIZES[out], 4096).rows_per_block
        assert runs[0][0] == 0 and runs[-1][1] == len(r.blocks)
        for (_, b1, _), (b0, _, _) in zip(runs, runs[1:], strict=False):
            assert b1 == b0
            assert (b0 * r.rows_per_block) % out_rows == 0
