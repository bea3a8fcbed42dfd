"""slerp, nuslerp, multislerp and karcher from the CLI as a user types them (`merge --config
X.yml --json --out DIR`): every tensor on the torch-free lane, the commit tree of the torch path
(MERGESTORE_TORCH_FREE=0), and torch never imported (their scalar acos/sin/cos and karcher's
dot products come from ops.lane_math)."""

from __future__ import annotations

import pytest
import yaml
from torch_free import assert_merges_skip_torch

from fixtures.store import commit_family
from mergestore import native
from mergestore.api import Store
from mergestore.ops import lane_karcher16, onednn_dot

pytestmark = pytest.mark.needs(native.kernels is not None, "C kernels not built")

DTYPES = [{"dtype": "float32", "out_dtype": "bfloat16"}, {"dtype": "bfloat16"}]
EXPERTS = ("dense_small", "frozen", "lowrank_attn")


def _config(method: str, dtypes: dict) -> dict:
    if method == "slerp":
        cfg = {
            "merge_method": "slerp",
            "base_model": "main",
            "models": [{"model": "main"}, {"model": "dense_small"}],
            "parameters": {"t": 0.35},
        }
    elif method == "nuslerp":
        cfg = {
            "merge_method": "nuslerp",
            "base_model": "main",
            "models": [
                {"model": "dense_small", "parameters": {"weight": 0.7}},
                {"model": "lowrank_attn", "parameters": {"weight": 0.3}},
            ],
        }
    elif method == "karcher":
        cfg = {
            "merge_method": "karcher",
            "models": [{"model": m} for m in ("main", *EXPERTS)],
            "parameters": {"max_iter": 6, "tol": 1e-6},
        }
    else:
        cfg = {
            "merge_method": "multislerp",
            "base_model": "main",
            "models": [
                {"model": m, "parameters": {"weight": w}}
                for m, w in zip(EXPERTS, (0.5, 0.3, 0.2), strict=True)
            ],
        }
    return {**cfg, **dtypes}


def _store(tiny_family, tmp_path):
    store_dir = tmp_path / "st"
    store = Store.init(store_dir, block_size=4096)
    commit_family(store, tiny_family)
    store.close()
    return store_dir


def _same_as_torch_path(cli, base, store_dir, monkeypatch) -> None:
    """The same merge with the lane off (MERGESTORE_TORCH_FREE=0) commits the same tree."""
    monkeypatch.setenv("MERGESTORE_TORCH_FREE", "0")
    slow = cli(*base, "-b", "slow", "--force")
    assert slow.code == 0, slow.err
    store = Store.open(store_dir)
    assert store.get_commit("fast").tree == store.get_commit("slow").tree
    store.close()


CASES = [(m, d) for m in ("slerp", "nuslerp", "multislerp") for d in DTYPES] + [
    ("karcher", DTYPES[0]),
    ("karcher", {"dtype": "float32"}),
]


@pytest.mark.parametrize(("method", "dtypes"), CASES)
def test_cli_merge_on_the_lane_equals_torch(
    tiny_family, tmp_path, cli, monkeypatch, method, dtypes
):
    store_dir = _store(tiny_family, tmp_path)
    cfg = tmp_path / "m.yml"
    cfg.write_text(yaml.safe_dump(_config(method, dtypes)))
    base = ["--store", store_dir, "merge", "--config", cfg, "--json"]
    fast = cli(*base, "-b", "fast", "--out", tmp_path / "out")
    assert fast.code == 0, fast.err
    lanes = fast.json()["lanes"]
    assert fast.json()["torch_free"] and lanes["torch"] == 0 and lanes["torch_free"] > 0, lanes
    if method == "karcher":  # how its dot products were taken, never silent
        assert "sdot" in lanes["notes"]["karcher_dots"]
    else:
        assert "notes" not in lanes
    _same_as_torch_path(cli, base, store_dir, monkeypatch)


def test_cli_karcher_bf16(tiny_family, tmp_path, cli, monkeypatch):
    """karcher with `dtype: bfloat16`: on the lane where it knows torch's bf16 dot (ATen's AVX2
    order, oneDNN's on AMX or AVX-512 BF16), else on torch with the reason; the torch path's
    commit tree either way."""
    store_dir = _store(tiny_family, tmp_path)
    cfg = tmp_path / "m.yml"
    cfg.write_text(yaml.safe_dump(_config("karcher", {"dtype": "bfloat16"})))
    base = ["--store", store_dir, "merge", "--config", cfg, "--json"]
    fast = cli(*base, "-b", "fast", "--out", tmp_path / "out")
    assert fast.code == 0, fast.err
    lanes = fast.json()["lanes"]
    if lane_karcher16.knows_torch_dot():
        assert lanes["torch"] == 0 and lanes["torch_free"] > 0 and "notes" not in lanes, lanes
    else:
        assert all("dot" in r for r in lanes["torch_reasons"]), lanes
    _same_as_torch_path(cli, base, store_dir, monkeypatch)


def test_cli_merges_never_import_torch(tiny_family, tmp_path) -> None:
    store_dir = _store(tiny_family, tmp_path)
    cfgs = []
    # karcher bf16 where its lane needs no torch (with AVX-512 BF16 and no AMX it imports torch
    # once to check oneDNN's dot: ops/onednn_dot.py)
    without_torch = lane_karcher16.knows_torch_dot() and onednn_dot.kind() != "avx512_bf16"
    cases = CASES + [("karcher", {"dtype": "bfloat16"})] * without_torch
    for i, (method, dtypes) in enumerate(cases):
        cfg = tmp_path / f"{method}{i}.yml"
        cfg.write_text(yaml.safe_dump(_config(method, dtypes)))
        cfgs.append(str(cfg))
    assert_merges_skip_torch(store_dir, cfgs)
