"""nearswap, ram (any dtype config) and model_stock (`dtype: float32` or `bfloat16`) on the
torch-free lane, from the CLI as a user types it: `merge --config X.yml --json --out DIR` gives
the commit tree of the torch path (MERGESTORE_TORCH_FREE=0), reports every tensor on the lane,
writes the folder a checkout gives, and never imports torch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from torch_free import assert_merges_skip_torch

from fixtures.store import commit_family
from mergestore import native
from mergestore.api import Store

pytestmark = pytest.mark.needs(native.kernels is not None, "C kernels not built")

DTYPES = [{}, {"dtype": "float32", "out_dtype": "bfloat16"}, {"dtype": "bfloat16"}]


def _config(method: str, dtypes: dict) -> dict:
    if method == "nearswap":
        cfg = {
            "merge_method": "nearswap",
            "base_model": "main",
            "models": [{"model": "main"}, {"model": "dense_small"}],
            "parameters": {"t": 0.0005},
        }
    elif method == "model_stock":
        cfg = {
            "merge_method": "model_stock",
            "base_model": "main",
            "models": [{"model": m} for m in ("dense_small", "frozen", "lowrank_attn")],
        }
    else:
        cfg = {
            "merge_method": "ram",
            "base_model": "main",
            "models": [{"model": m} for m in ("dense_small", "frozen", "lowrank_attn")],
            "parameters": {"epsilon": 2e-5},
        }
    return {**cfg, **dtypes}


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


CASES = [(m, d) for m in ("nearswap", "ram") for d in DTYPES] + [
    ("model_stock", {"dtype": "float32", "out_dtype": "bfloat16"}),
    ("model_stock", {"dtype": "float32"}),
    ("model_stock", {"dtype": "bfloat16"}),
]


@pytest.mark.parametrize(("method", "dtypes"), CASES)
def test_cli_merge_on_the_lane_equals_torch(
    tiny_family, tmp_path, cli, monkeypatch, method, dtypes
) -> None:
    store_dir = tmp_path / "st"
    store = Store.init(store_dir, block_size=4096)
    commit_family(store, tiny_family)
    store.close()
    cfg = tmp_path / "m.yml"
    cfg.write_text(yaml.safe_dump(_config(method, dtypes)))
    out = tmp_path / "out"
    base = ["--store", store_dir, "merge", "--config", cfg, "--json"]
    fast = cli(*base, "-b", "fast", "--out", out)
    assert fast.code == 0, fast.err
    lanes = fast.json()["lanes"]
    assert fast.json()["torch_free"] and lanes["torch"] == 0 and lanes["torch_free"] > 0
    monkeypatch.setenv("MERGESTORE_TORCH_FREE", "0")
    slow = cli(*base, "-b", "slow", "--force")
    assert slow.code == 0, slow.err
    assert slow.json()["lanes"]["torch_reasons"] == {"MERGESTORE_TORCH_FREE=0": lanes["torch_free"]}
    store = Store.open(store_dir)
    assert store.get_commit("fast").tree == store.get_commit("slow").tree
    store.checkout("fast", tmp_path / "co")
    store.close()
    assert _digests(out) == _digests(tmp_path / "co")


def test_cli_merge_never_imports_torch(tiny_family, tmp_path) -> None:
    store_dir = tmp_path / "st"
    store = Store.init(store_dir, block_size=4096)
    commit_family(store, tiny_family)
    store.close()
    cfgs = []
    for method in ("nearswap", "ram", "model_stock"):
        cfg = tmp_path / f"{method}.yml"
        cfg.write_text(yaml.safe_dump(_config(method, DTYPES[1])))
        cfgs.append(str(cfg))
    assert_merges_skip_torch(store_dir, cfgs)
