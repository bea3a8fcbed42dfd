"""merge --out: the folder written in the merge's own pass equals a later checkout, byte for byte;
it appears whole or not at all."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.errors import CheckoutError

EXPERTS = ["dense_small", "frozen", "lowrank_attn"]


def digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    commit_family(store, tiny_family)
    return store


def _merge_and_compare(store: Store, tmp_path: Path, **kw: object) -> dict:
    out = tmp_path / "out"
    res = store.merge(branch="m", out=out, **kw)  # type: ignore[arg-type]
    assert res.out is not None and res.out["path"] == str(out.absolute())
    again = tmp_path / "checkout"
    store.checkout(res.commit.hex(), again)
    assert digest_tree(out) == digest_tree(again)
    assert len(list(out.glob("*.safetensors"))) > 1  # the tiny family is sharded
    assert not [p for p in tmp_path.iterdir() if "mergestore-tmp" in p.name]
    return res.out


@pytest.mark.parametrize(
    ("method", "params", "dtypes"),
    [
        ("task_arithmetic", {}, {}),
        ("ties", {"density": 0.5}, {}),
        ("dare_ties", {"density": 0.6}, {}),
        ("breadcrumbs", {"density": 0.8, "gamma": 0.05}, {}),
        ("linear", {}, {}),
        ("model_stock", {}, {}),
        ("task_arithmetic", {}, {"dtype": "float32", "out_dtype": "bfloat16"}),
        ("ties", {"density": 0.5}, {"dtype": "float32"}),  # fp32 output from bf16 inputs
        ("linear", {}, {"out_dtype": "float16"}),
    ],
)
def test_out_folder_equals_checkout(
    family_store: Store, tmp_path: Path, method: str, params: dict, dtypes: dict
) -> None:
    needs_w = method != "model_stock"
    info = _merge_and_compare(
        family_store,
        tmp_path,
        method=method,
        base=None if method == "linear" else "main",
        models=EXPERTS,
        weights=[0.5, 0.3, 0.2] if needs_w else None,
        params=params,
        seed=3,
        **dtypes,
    )
    assert info["same_pass"] is True  # laid out before the merge, no checkout fallback


@pytest.mark.parametrize("budget", ["10%", "50%"])
def test_budgeted_out_folder_equals_checkout(
    family_store: Store, tmp_path: Path, budget: str
) -> None:
    info = _merge_and_compare(
        family_store,
        tmp_path,
        method="task_arithmetic",
        base="main",
        models=EXPERTS,
        weights=[0.5, 0.3, 0.2],
        budget=budget,
    )
    assert info["same_pass"] is True
    assert info["bytes_read"] > 0  # blocks taken from the base are read once, for the folder


def test_a_wrong_prediction_falls_back_to_a_checkout(
    family_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergestore.merge import outfolder
    from mergestore.merge.layout import TensorMeta

    real = outfolder.predict_outputs

    def wrong(engine, tasks):  # type: ignore[no-untyped-def]
        return [TensorMeta(m.name, "F64", m.shape) for m in real(engine, tasks)]

    monkeypatch.setattr(outfolder, "predict_outputs", wrong)
    info = _merge_and_compare(
        family_store, tmp_path, method="linear", models=EXPERTS, weights=[0.5, 0.3, 0.2]
    )
    assert info["same_pass"] is False and info["fallback_reason"]


def test_a_failed_merge_leaves_no_folder(
    family_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergestore.merge import prepared

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected failure after the tensors were written")

    monkeypatch.setattr(prepared, "build_tree", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        family_store.merge(method="linear", models=EXPERTS, weights=[1, 1, 1], branch="x", out=out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert family_store.repo.read_ref("refs/heads/x") is None


def test_a_non_empty_target_is_refused_before_anything_runs(
    family_store: Store, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckoutError, match="not empty"):
        family_store.merge(method="linear", models=EXPERTS, weights=[1, 1, 1], branch="x", out=out)
    assert family_store.repo.read_ref("refs/heads/x") is None
    assert (out / "keep.txt").read_text() == "mine"
    # an existing empty directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    res = family_store.merge(
        method="linear", models=EXPERTS, weights=[1, 1, 1], branch="y", out=empty
    )
    assert res.out["same_pass"] and (empty / "config.json").is_file()


def test_cli_merge_out_json(family_store: Store, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cli-out"
    r = cli(
        "--store", family_store.path, "merge", *EXPERTS, "--method", "ties", "--base", "main",
        "-w", "0.5", "-w", "0.3", "-w", "0.2", "--param", "density=0.5", "-b", "c",
        "--out", out, "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["out"]["path"] == str(out.absolute()) and doc["out"]["same_pass"] is True
    again = tmp_path / "again"
    assert cli("--store", family_store.path, "checkout", doc["commit"], again).code == 0
    assert digest_tree(out) == digest_tree(again)
    bad = cli("--store", family_store.path, "merge", *EXPERTS, "--method", "linear",
              "-w", "1", "-w", "1", "-w", "1", "--out", out, "--json")  # fmt: skip
    assert bad.code != 0 and "not empty" in (bad.out + bad.err)
