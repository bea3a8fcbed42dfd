"""diff and analyze: statuses, exact statistics against plain torch fp64, bytes read, reuse."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fixtures.family import PRESETS, Family, make_family
from mergestore.api import Store
from mergestore.diff import block_norm, block_stats, layer_of, module_of

EXPERTS = ("dense_small", "frozen", "lowrank_attn", "uneven0")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
CONTRACT = {
    "name",
    "status",
    "dtype",
    "shape",
    "blocks_total",
    "blocks_changed",
    "delta_l2",
    "rel_delta",
    "cosine",
    "max_abs",
    "frac_changed",
}


@pytest.fixture(scope="module", params=sorted(DTYPES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Family:
    spec = dataclasses.replace(PRESETS["tiny"], dtype=request.param, experts=EXPERTS)
    return make_family(tmp_path_factory.mktemp(f"fam-{request.param}"), spec)


def _committed(root: Path, fam: Family, *, stats: bool = False) -> Store:
    s = Store.init(root, block_size=4096)
    s.commit(fam.base, message="base", branch="main")
    for name, path in fam.experts.items():
        s.commit(path, message=name, branch=name, base="main", stats=stats)
    return s


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _reference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a64, b64 = a.to(torch.float64).flatten(), b.to(torch.float64).flatten()
    d = b64 - a64
    return {
        "delta_l2": float(d.norm()),
        "rel_delta": float(d.norm() / a64.norm()),
        "cosine": float(torch.dot(a64, b64) / (a64.norm() * b64.norm())),
        "max_abs": float(d.abs().max()),
        "frac_changed": float((a != b).sum()) / a.numel(),
    }


def test_stats_match_torch_fp64(family: Family, tmp_path: Path) -> None:
    store = _committed(tmp_path / "s", family)
    base = _tensors(family.base)
    for name in EXPERTS:
        exp = _tensors(family.experts[name])
        res = store.diff("main", name)
        by_name = {t.name: t for t in res.tensors}
        assert set(by_name) == set(base)
        for tname, a in base.items():
            b = exp[tname]
            t = by_name[tname]
            same_bytes = torch.equal(a.view(torch.uint8), b.view(torch.uint8))
            assert t.status == ("unchanged" if same_bytes else "changed"), tname
            if same_bytes:
                assert t.blocks_changed == 0 and t.delta_l2 == 0.0
                continue
            assert 0 < t.blocks_changed <= t.blocks_total
            ref = _reference(a, b)
            for key, want in ref.items():
                assert getattr(t, key) == pytest.approx(want, rel=1e-9, abs=1e-300), (tname, key)
    store.close()


def test_frozen_unchanged_read_nothing(tiny_family: Family, tmp_path: Path) -> None:
    store = _committed(tmp_path / "s", tiny_family)
    # the frozen expert leaves embeddings, norms, head and the first half of the layers alone
    res = store.diff("main", "frozen", tensors=["model.layers.0.*", "*embed*", "lm_head*"])
    assert res.tensors and all(t.status == "unchanged" for t in res.tensors)
    assert res.bytes_read == 0 and res.blocks_read == 0
    full = store.diff("main", "frozen")
    assert {t.status for t in full.tensors} == {"changed", "unchanged"}
    changed = [t for t in full.tensors if t.status == "changed"]
    assert all(layer_of(t.name) == 1 for t in changed)
    # only changed blocks were read: each of them and its base block, at most once
    changed_blocks = sum(t.blocks_changed for t in changed)
    assert 0 < full.blocks_read <= 2 * changed_blocks
    store.close()


def test_second_diff_reads_nothing(tiny_family: Family, tmp_path: Path) -> None:
    store = _committed(tmp_path / "s", tiny_family)
    first = store.diff("main", "dense_small")
    assert first.bytes_read > 0 and first.stats_computed > 0 and first.stats_kept > 0
    second = store.diff("main", "dense_small")
    assert second.bytes_read == 0 and second.stats_computed == 0 and second.norms_computed == 0
    assert second.stats_reused == first.stats_computed
    assert [t.to_json() for t in second.tensors] == [t.to_json() for t in first.tensors]
    store.close()


def test_commit_with_base_keeps_stats(tiny_family: Family, tmp_path: Path) -> None:
    store = _committed(tmp_path / "s", tiny_family, stats=True)
    res = store.diff("main", "lowrank_attn")
    assert res.stats_computed == 0 and res.stats_reused > 0
    store.close()


def test_self_diff_is_empty(tiny_family: Family, tmp_path: Path) -> None:
    store = _committed(tmp_path / "s", tiny_family)
    res = store.diff("main", "main")
    tot = res.totals()
    assert tot["changed"] == 0 and tot["blocks_changed"] == 0 and res.bytes_read == 0
    assert tot["unchanged"] == len(res.tensors) > 0
    store.close()


def _pack_state(store: Store) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (store.path / "packs").iterdir()}


def test_folder_diff_equals_commit_diff(tiny_family: Family, tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s", block_size=4096)
    store.commit(tiny_family.base, message="base", branch="main")
    packs = _pack_state(store)
    for name, path in tiny_family.experts.items():
        folder = store.diff("main", str(path))
        again = store.diff("main", str(path))
        # nothing was kept: the second folder diff computes the same statistics again
        assert again.stats_kept == 0 and again.stats_computed == folder.stats_computed
        assert folder.b is None and folder.folder_bytes_read > 0
        assert _pack_state(store) == packs
        store.commit(path, message=name, branch=name, base="main", stats=False)
        committed = store.diff("main", name, keep=False)
        assert [t.to_json() for t in folder.tensors] == [t.to_json() for t in committed.tensors]
        packs = _pack_state(store)
    store.close()


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    return path


def test_retyped_added_removed(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g)
    a = _write(
        tmp_path / "a",
        {
            "x": x.to(torch.bfloat16),
            "y": torch.randn(64, 32, generator=g).to(torch.bfloat16),
            "gone": torch.ones(3),
            "same": torch.arange(10, dtype=torch.int64),
        },
    )
    b = _write(
        tmp_path / "b",
        {
            "x": x.clone(),  # F32 now
            "y": torch.randn(32, 64, generator=g).to(torch.bfloat16),  # new shape
            "new": torch.zeros(5),
            "same": torch.arange(10, dtype=torch.int64),
        },
    )
    store = Store.init(tmp_path / "s", block_size=4096)
    store.commit(a, message="a", branch="main")
    for target in (str(b), "b"):
        if target == "b":
            store.commit(b, message="b", branch="b")
        res = store.diff("main", target)
        st = {t.name: t for t in res.tensors}
        assert st["x"].status == "retyped" and st["x"].a_dtype == "BF16" and st["x"].dtype == "F32"
        assert st["y"].status == "retyped" and st["y"].a_shape == (64, 32)
        assert st["gone"].status == "removed" and st["new"].status == "added"
        assert st["same"].status == "unchanged"
    store.close()


def test_block_stats_exact_small_case() -> None:
    # hand-checked: A = [1, -2, 0, 4], B = [1, 2, -0.0, 1]  ->  d = [0, 4, 0, -3]
    a = torch.tensor([1.0, -2.0, 0.0, 4.0])
    b = torch.tensor([1.0, 2.0, -0.0, 1.0])
    st = block_stats(b.numpy().tobytes(), a.numpy().tobytes(), "F32")
    assert (st.l2, st.l1, st.max_abs, st.nnz, st.numel) == (5.0, 7.0, 4.0, 2, 4)
    assert st.dot == 1 - 4 + 0 + 4 and st.l2_a == math.sqrt(21) and st.l2_b == math.sqrt(6)
    n = block_norm(a.numpy().tobytes(), "F32")
    assert n.l2 == 0 and n.l2_a == n.l2_b == math.sqrt(21) and n.numel == 4


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_block_stats_across_chunks(dtype: str) -> None:
    tdt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[dtype]
    g = torch.Generator().manual_seed(1)
    a = torch.randn(150_001, generator=g).to(tdt)  # spans three fp64 chunks
    b = (a.float() + 1e-2 * torch.randn(150_001, generator=g)).to(tdt)
    st = block_stats(b.view(torch.uint8).numpy().tobytes(), a.view(torch.uint8).numpy(), dtype)
    ref = _reference(a, b)
    assert st.l2 == pytest.approx(ref["delta_l2"], rel=1e-12)
    assert st.max_abs == ref["max_abs"]
    assert st.nnz == int((a != b).sum())
    a64, b64 = a.double(), b.double()
    assert st.l1 == pytest.approx(float((b64 - a64).abs().sum()), rel=1e-12)
    assert st.dot == pytest.approx(float(a64 @ b64), rel=1e-12)


def test_modules_and_layers() -> None:
    assert module_of("model.layers.3.self_attn.q_proj.weight") == "q"
    assert module_of("model.layers.3.mlp.down_proj.weight") == "down"
    assert module_of("model.layers.3.input_layernorm.weight") == "norms"
    assert module_of("model.embed_tokens.weight") == "embeddings"
    assert module_of("lm_head.weight") == "head"
    assert layer_of("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_of("lm_head.weight") is None


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_store(tiny_family: Family, tmp_path: Path) -> Path:
    s = _committed(tmp_path / "s", tiny_family)
    s.close()
    return tmp_path / "s"


def test_cli_json_contract(cli, cli_store: Path) -> None:
    r = cli("--store", cli_store, "diff", "main", "lowrank_attn", "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert {"a", "b", "bytes_read", "tensors", "totals"} <= set(d)
    assert len(d["a"]) == 64 and len(d["b"]) == 64 and d["bytes_read"] > 0
    for t in d["tensors"]:
        assert set(t) >= CONTRACT
    changed = [t for t in d["tensors"] if t["status"] == "changed"]
    assert changed
    assert {module_of(t["name"]) for t in changed} == {"q", "k", "v", "o"}
    assert d["totals"]["changed"] == len(changed)
    again = cli("--store", cli_store, "diff", "main", "lowrank_attn", "--json").json()
    assert again["bytes_read"] == 0 and again["stats_reused"] == d["stats_computed"]


def test_cli_stat_sorted_and_layers(cli, cli_store: Path) -> None:
    r = cli("--store", cli_store, "diff", "main", "dense_small", "--stat")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    rows = [ln for ln in lines if " | " in ln]
    rels = [float(ln.split(" | ")[1].split()[0]) for ln in rows]
    assert rels and rels == sorted(rels, reverse=True)
    assert any(ln.split()[:1] == ["layer"] for ln in lines)
    assert any(ln.split()[:1] == ["1"] for ln in lines)  # layer 1's summary row


def test_cli_tensor_glob_and_plot(cli, cli_store: Path, tmp_path: Path) -> None:
    png = tmp_path / "d.png"
    r = cli(
        "--store", cli_store, "diff", "main", "frozen", "--tensor", "*mlp*", "--plot", png, "--json"
    )
    assert r.code == 0, r.err
    assert {t["name"].split(".")[-2] for t in r.json()["tensors"]} == {
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_analyze_then_diff_reads_nothing(cli, cli_store: Path) -> None:
    r = cli("--store", cli_store, "analyze", "dense_small", "--json")
    assert r.code == 0, r.err
    a = r.json()
    assert a["stats_computed"] == a["pairs"] > 0 and a["bytes_read"] > 0
    again = cli("--store", cli_store, "analyze", "dense_small", "--base", "main", "--json").json()
    assert again["stats_computed"] == 0 and again["stats_reused"] == a["pairs"]
    d = cli("--store", cli_store, "diff", "main", "dense_small", "--json").json()
    assert d["bytes_read"] == 0


def test_cli_errors(cli, cli_store: Path, tmp_path: Path) -> None:
    r = cli("--store", cli_store, "diff", "main", "nosuchref")
    assert r.code != 0 and r.err.startswith("error: ") and "nosuchref" in r.err
    assert len(r.err.strip().splitlines()) == 1
    r = cli("--store", cli_store, "diff", "nosuchref", "main")
    assert r.code != 0 and r.err.startswith("error: unknown ref")
    (tmp_path / "notckpt").mkdir()
    (tmp_path / "notckpt" / "readme.txt").write_text("hi")
    r = cli("--store", cli_store, "diff", "main", tmp_path / "notckpt")
    assert r.code != 0 and "not a checkpoint" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("--store", cli_store, "analyze", "main")
    assert r.code != 0 and "--base" in r.err


def test_cli_human_output(cli, cli_store: Path) -> None:
    r = cli("--store", cli_store, "diff", "main", "frozen")
    assert r.code == 0, r.err
    assert r.out.startswith("diff ")
    assert "changed   model.layers.1." in r.out and "blocks changed" in r.out


def test_planner_and_analyze_share_statistics(cli, cli_store: Path) -> None:
    plan = ["plan", "--method", "task_arithmetic", "--base", "main", "dense_small", "frozen"]
    plan += ["-w", "0.5", "-w", "0.5", "--budget", "50%", "--json"]
    cold = cli("--store", cli_store, *plan)
    assert cold.code == 0, cold.err
    assert cold.json()["analyze_bytes_read"] > 0
    # the planner kept what it computed: a diff of the same pairs computes nothing
    d = cli("--store", cli_store, "diff", "main", "dense_small", "--json").json()
    assert d["stats_computed"] == 0 and d["stats_reused"] > 0
    # and what analyze keeps, the planner reuses
    assert cli("--store", cli_store, "analyze", "lowrank_attn", "--json").code == 0
    plan[6] = "lowrank_attn"
    warm = cli("--store", cli_store, *plan)
    assert warm.code == 0, warm.err
    assert warm.json()["analyze_bytes_read"] == 0
