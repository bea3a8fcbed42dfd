"""Elementwise merges stream large tensors in pieces of blocks: the same output, bit for bit."""

from __future__ import annotations

import pytest

import mergestore.merge.pieces as pieces_mod
from fixtures.family import FamilySpec
from fixtures.store import family_store
from mergestore.api import Store
from mergestore.merge.engine import Engine


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("pieces")
    spec = FamilySpec(
        n_layers=2,
        hidden=64,
        intermediate=128,
        vocab=1024,  # embeddings of 32 blocks of 4 KiB
        dtype="bfloat16",
        experts=("dense_small", "frozen", "uneven0"),
        seed=3,
    )
    s, _fam = family_store(root, spec)
    yield s
    s.close()


@pytest.mark.parametrize(
    "method,base,params,dtype",
    [
        ("task_arithmetic", "main", {}, None),
        ("task_arithmetic", "main", {}, "float32"),
        ("linear", None, {}, None),
        ("ties", "main", {"density": 0.5}, None),  # not elementwise: never cut
    ],
)
def test_pieces_give_the_whole_tensors_blocks(
    store: Store, monkeypatch: pytest.MonkeyPatch, method, base, params, dtype
) -> None:
    counts: list[int] = []
    real_run = Engine.run

    def counting(self, tasks, *a, **k):
        counts.append(len(tasks))
        return real_run(self, tasks, *a, **k)

    monkeypatch.setattr(Engine, "run", counting)
    kw = dict(
        method=method,
        base=base,
        models=["dense_small", "frozen", "uneven0"],
        weights=[0.5, 0.3, 0.4],
        params=params,
        dtype=dtype,
        out_dtype="bfloat16",
    )
    tag = f"{method}-{dtype}"
    pieces = store.merge(**kw, branch=f"pieces-{tag}")  # not on main: the base stays put
    monkeypatch.setattr(pieces_mod, "PIECE_BLOCKS", 10**9)
    whole = store.merge(**kw, branch=f"whole-{tag}", force=True)  # the memo would answer
    n_tensors = len(store.tensors("main"))
    if method == "ties":
        assert counts == [n_tensors, n_tensors]
    else:
        assert counts[0] > counts[1] == n_tensors  # really merged in pieces
    a, b = store.get_commit(pieces.commit), store.get_commit(whole.commit)
    assert a.tree == b.tree
    assert store.replay(pieces.commit.hex())["identical"]
