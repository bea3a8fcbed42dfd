"""A saliency given as a commit travels with the merge that names it: push, fetch, clone, gc."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergestore.api import Store

MERGE = ["--method", "task_arithmetic", "--base", "main", "dense_small", "-w", "0.5"]


def _saliency_commit(store: Store, tmp: Path) -> str:
    """A gradient saliency of the base's tensors, committed on branch `sal`."""
    g = torch.Generator().manual_seed(5)
    shapes = {t.name: t.shape for t in store.tensors("main")}
    grads = {n: torch.randn(shape, generator=g) for n, shape in shapes.items()}
    path = tmp / "grads.safetensors"
    save_file(grads, str(path), metadata={"saliency": "gradient"})
    return store.commit(path, branch="sal", message="saliency").commit.hex()


@pytest.fixture
def origin(tmp_path: Path, tiny_family, remote_url: str):
    s = Store.init(tmp_path / "a", block_size=4096)
    s.commit(tiny_family.base, message="base", branch="main")
    s.commit(tiny_family.experts["dense_small"], branch="dense_small", base="main")
    s.add_remote("origin", remote_url)
    yield s
    s.close()


def _selection(cli, store: Path, sal: str) -> dict:
    r = cli("--store", store, "plan", *MERGE, "--budget", "40%", "--saliency", sal, "--json")
    assert r.code == 0, r.err
    return r.json()["body"]["selection"]


def test_push_clone_fetch_carry_the_saliency_commit(
    origin: Store, cli, tmp_path: Path, remote_url: str
) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    sal = _saliency_commit(origin, tmp_path)
    assert cli("--store", a, "push", "origin", "main", "dense_small").code == 0
    # c has the inputs but not the saliency, before the merge exists
    assert cli("clone", remote_url, c).code == 0
    m = cli("--store", a, "merge", *MERGE, "--budget", "40%", "--saliency", "sal", "-b", "m")
    assert m.code == 0, m.err
    want = _selection(cli, a, "sal")
    # the saliency's branch is not pushed: the merge's plan names its commit, which goes along
    r = cli("--store", a, "push", "origin", "m", "--json")
    assert r.code == 0, r.err
    assert cli("clone", remote_url, b).code == 0
    assert cli("--store", c, "fetch", "origin", "--json").code == 0
    for other in (b, c):
        s = Store.open(other)
        try:
            assert s.get_commit(bytes.fromhex(sal)).id.hex() == sal
        finally:
            s.close()
        r = cli("--store", other, "replay", "origin/m", "--json")
        assert r.code == 0, r.err
        assert r.json()["identical"]
        # the other side re-plans the same selection from the same saliency commit
        assert cli("--store", other, "branch", "dense_small", "origin/dense_small").code == 0
        assert _selection(cli, other, sal) == want


def test_gc_keeps_a_saliency_commit_a_merge_names(origin: Store, cli, tmp_path: Path) -> None:
    a = tmp_path / "a"
    sal = _saliency_commit(origin, tmp_path)
    m = cli("--store", a, "merge", *MERGE, "--budget", "40%", "--saliency", "sal", "-b", "m")
    assert m.code == 0, m.err
    want = _selection(cli, a, "sal")
    assert cli("--store", a, "branch", "-d", "sal").code == 0
    assert cli("--store", a, "gc", "--grace", "0").code == 0
    assert _selection(cli, a, sal) == want  # its blocks are still there
    assert cli("--store", a, "fsck", "--full").code == 0
