"""Issue 15 item 5: a refused merge with folder inputs leaves the store byte for byte as it was
(merge/precheck.py); a merge that runs says which folders it stored and what that added."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergestore.api import Store

UP = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture
def base_store(tiny_family, tmp_path: Path) -> Path:
    """A store holding only the base, on main: the experts are folders not stored yet."""
    path = tmp_path / "store"
    with Store.init(path, block_size=4096) as s:
        s.commit(tiny_family.base, message="base", branch="main")
    return path


def snapshot(store: Path) -> dict[str, str]:
    """Every file of the store (lock files aside) and its content hash."""
    out = {}
    for root, _, files in os.walk(store):
        for f in files:
            p = Path(root, f)
            if "lock" in f:
                continue
            out[str(p.relative_to(store))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def altered(src: Path, dst: Path, *, drop: str | None = None, reshape: str | None = None) -> Path:
    """A copy of checkpoint `src` with tensor `drop` removed or `reshape` one row shorter."""
    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    name = drop or reshape
    shard = dst / index["weight_map"][name]
    tensors = load_file(shard)
    if drop:
        del tensors[drop]
        del index["weight_map"][drop]
        (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, shard, metadata={"format": "pt"})
    return dst


def merge_args(store: Path, *models: str | Path, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["--store", str(store), "merge", "--method", "ties", "--base", "main"]
    for m in models:
        args += [str(m), "-w", "1"]
    return [*args, "-b", "out", *extra]


@pytest.mark.parametrize("kind", ["bad-param", "shape", "missing-tensor", "bad-budget", "branch"])
def test_refused_merge_leaves_store_unchanged(
    cli, base_store: Path, tiny_family, tmp_path: Path, kind: str
) -> None:
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    extra: tuple[str, ...] = ("--param", "density=0.5")
    if kind == "bad-param":
        extra = ("--param", "density=7")
        want = "density"
    elif kind == "shape":
        e2 = altered(e2, tmp_path / "reshaped", reshape=UP)
        want = "shape differs"
    elif kind == "missing-tensor":
        e2 = altered(e2, tmp_path / "dropped", drop=UP)
        want = "missing"
    elif kind == "bad-budget":
        extra = ("--budget", "lots")
        want = "budget"
    else:
        extra = ("--param", "density=0.5")
        want = "points at"
    before = snapshot(base_store)
    args = merge_args(base_store, e1, e2, extra=extra)
    if kind == "branch":
        args[args.index("out")] = "main"
    for as_json in (False, True):
        r = cli(*args, *(["--json"] if as_json else []))
        assert r.code == 1, r.err
        if as_json:
            assert want in json.loads(r.out)["error"]
        else:
            assert r.err.startswith("error: ") and want in r.err
            assert len(r.err.strip().splitlines()) == 1
        assert snapshot(base_store) == before  # refs, index, objects, packs and their sizes


def test_merge_reports_what_it_stored(cli, base_store: Path, tiny_family, tmp_path: Path) -> None:
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    twin = tmp_path / "twin"  # the same store, where the folders are committed by hand
    shutil.copytree(base_store, twin)
    r = cli(*merge_args(base_store, e1, e2, extra=("--param", "density=0.5", "--json")))
    assert r.code == 0, r.err
    run = r.json()
    paths = [i["path"] for i in run["imported"]]
    assert paths == [str(e1), str(e2)]
    for i in run["imported"]:
        assert i["new_blocks"] > 0 and i["bytes_stored"] > 0
        assert cli("--store", base_store, "show", i["commit"]).code == 0
    assert run["imported_bytes_stored"] == sum(i["bytes_stored"] for i in run["imported"])
    # what committing the two folders adds to du's stored bytes, as the merge says
    du0 = cli("--store", twin, "du", "--json").json()["stored_bytes"]
    for path, name in ((e1, "e1"), (e2, "e2")):
        assert cli("--store", twin, "commit", path, "-b", name).code == 0
    du1 = cli("--store", twin, "du", "--json").json()["stored_bytes"]
    assert du1 - du0 == run["imported_bytes_stored"]

    # the same merge again: the folders are already stored, nothing is added
    again = cli(*merge_args(base_store, e1, e2, extra=("--param", "density=0.5", "-m", "x")))
    assert again.code == 0, again.err
    assert f"input    {e1}: already stored as " in again.err

    # text: one line per folder, with its new blocks and the bytes it added
    r = cli(*merge_args(base_store, e1, tiny_family.experts["lowrank_attn"], extra=("-b", "o2")))
    assert r.code == 0, r.err
    lines = [ln for ln in r.err.splitlines() if ln.startswith("input ")]
    assert len(lines) == 2
    assert "already stored as" in lines[0]
    assert f"{tiny_family.experts['lowrank_attn']}: stored as " in lines[1]
    assert "new blocks" in lines[1] and "added" in lines[1]


def test_peeked_folder_is_merged_as_before(cli, base_store: Path, tiny_family) -> None:
    """The header check changes nothing for a merge that passes it: the same tree as merging
    the same experts committed first."""
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    r = cli(*merge_args(base_store, e1, e2, extra=("--param", "density=0.5", "--json")))
    assert r.code == 0, r.err
    with Store.open(base_store) as s:
        s.commit(e1, message="e1", branch="e1", base="main")
        s.commit(e2, message="e2", branch="e2", base="main")
    r2 = cli(*merge_args(base_store, "e1", "e2", extra=("--param", "density=0.5", "--json")))
    assert r2.code == 0, r2.err
    a, b = r.json()["commit"], r2.json()["commit"]
    same = cli("--store", base_store, "diff", a, b)  # the model cards name them differently
    assert "0 changed, 0 added, 0 removed, 0 retyped, 21 unchanged" in same.out


def test_altered_copy_really_differs(tiny_family, tmp_path: Path) -> None:
    """The helper above makes the inputs the refusals are about."""
    src = tiny_family.experts["frozen"]
    d = altered(src, tmp_path / "d", reshape=UP)
    idx = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    t = load_file(d / idx[UP])[UP]
    assert t.shape[0] == load_file(src / idx[UP])[UP].shape[0] - 1 and t.dtype == torch.bfloat16


@pytest.mark.parametrize("folder", [1, 2])
def test_interrupted_while_storing_folders_leaves_store_unchanged(
    cli, base_store: Path, tiny_family, monkeypatch, folder: int
) -> None:
    """Ctrl-C while the first or the second folder is stored, a few blocks in: the folders are
    stored in one session, published once all are in, so nothing of either stays, not even a
    new pack file."""
    from mergestore.merge import inputs
    from mergestore.store.repo import WriteSession

    real_add, real_commit = WriteSession.add_encoded, inputs.commit_checkpoint
    seen = {"folders": 0, "blocks": 0}

    def add_encoded(self, *a, **k):
        if seen["folders"] == folder:
            seen["blocks"] += 1
            if seen["blocks"] == 3:
                raise KeyboardInterrupt
        return real_add(self, *a, **k)

    def commit_checkpoint(*a, **k):
        seen["folders"] += 1
        return real_commit(*a, **k)

    monkeypatch.setattr(WriteSession, "add_encoded", add_encoded)
    monkeypatch.setattr(inputs, "commit_checkpoint", commit_checkpoint)
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    before = snapshot(base_store)
    r = cli(*merge_args(base_store, e1, e2, extra=("--param", "density=0.5")))
    assert r.code == 130 and seen == {"folders": folder, "blocks": 3}
    assert snapshot(base_store) == before
    monkeypatch.undo()
    r = cli(*merge_args(base_store, e1, e2, extra=("--param", "density=0.5", "--json")))
    assert r.code == 0, r.err  # and the merge runs afterwards, storing both
    assert [i["new_blocks"] > 0 for i in r.json()["imported"]] == [True, True]


def test_lazy_merge_input_with_a_folder(cli, base_store: Path, tiny_family) -> None:
    """A lazy merge is not computed by the header check (it needs its tensors: the check waits
    until after the folders are stored); the merge runs as before."""
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    with Store.open(base_store) as s:
        s.commit(e1, message="e1", branch="e1", base="main")
    lazy = ["--store", base_store, "merge", "--lazy", "--method", "linear", "main", "e1"]
    assert cli(*lazy, "-w", "1", "-w", "1", "-b", "lz").code == 0
    r = cli(*merge_args(base_store, "lz", e2, extra=("--param", "density=0.5", "--json")))
    assert r.code == 0, r.err
    assert [i["path"] for i in r.json()["imported"]] == [str(e2)]


def test_api_merge_refused_before_storing(base_store: Path, tiny_family) -> None:
    """Store.merge checks the same way: its -b target too."""
    from mergestore.errors import MergestoreError

    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    before = snapshot(base_store)
    with Store.open(base_store) as s:
        with pytest.raises(MergestoreError, match="points at"):
            s.merge(method="ties", base="main", models=[str(e1), str(e2)], weights=[1, 1],
                    params={"density": 0.5}, branch="main")  # fmt: skip
        with pytest.raises(MergestoreError, match="density"):
            s.merge(method="ties", base="main", models=[str(e1), str(e2)], weights=[1, 1],
                    params={"density": 7}, branch="x")  # fmt: skip
    assert snapshot(base_store) == before


def test_cached_hub_id_is_checked_before_storing(
    cli, base_store: Path, tiny_family, tmp_path: Path, monkeypatch
) -> None:
    """A hub id found in the Hugging Face cache is checked from its headers too."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--Org--Frozen"
    shutil.copytree(tiny_family.experts["frozen"], repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e1 = tiny_family.experts["dense_small"]
    before = snapshot(base_store)
    r = cli(*merge_args(base_store, e1, "Org/Frozen", extra=("--param", "density=7")))
    assert r.code == 1 and "density" in r.err
    assert snapshot(base_store) == before
    r = cli(*merge_args(base_store, e1, "Org/Frozen", extra=("--param", "density=0.5")))
    assert r.code == 0, r.err
