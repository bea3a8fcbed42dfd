"""A saliency ranks the blocks a budget keeps (merge/saliency.py): scores, contracts, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fixtures.checkpoint import make_checkpoint
from mergestore.api import Store
from mergestore.errors import BudgetError

ROWS, COLS = 8, 1024  # fp32 rows of 4096 bytes: one row per block at block size 4096
WEIGHTS = [0.5, 2.0]
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def _unit_rows(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(ROWS, COLS, generator=g)
    return u / u.norm(dim=1, keepdim=True)


def _model(root: Path, name: str, w: torch.Tensor) -> Path:
    return make_checkpoint(root / name, {"w": w}, shard_bytes=1 << 20, config=CONFIG)


# expert deltas shrink down the rows (norm-greedy reads the first rows first) ...
ROW_SCALE = torch.tensor([8.0, 7, 6, 5, 4, 3, 2, 1]) * 0.01
# ... while the gradient is large only on the last four rows
GRAD_SCALE = torch.tensor([0.01, 0.01, 0.01, 0.01, 1, 1, 1, 1])


@pytest.fixture(scope="module")
def hand(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("saliency")
    base = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(1))
    deltas = [ROW_SCALE[:, None] * _unit_rows(2), 0.5 * ROW_SCALE[:, None] * _unit_rows(3)]
    store = Store.init(root / "store", block_size=4096)
    store.commit(_model(root, "base", base), branch="main")
    for i, d in enumerate(deltas):
        store.commit(_model(root, f"e{i}", base + d), branch=f"e{i}", base="main")
    grad = GRAD_SCALE[:, None] * _unit_rows(4)
    fisher = (torch.arange(ROWS, dtype=torch.float32) + 1.0)[:, None].expand(ROWS, COLS) * 1e-3
    yield store, root, base, deltas, {"w": grad.contiguous()}, {"w": fisher.contiguous()}
    store.close()


def _plan(store: Store, budget: str = "30%", **kw):
    return store.prepare_merge(_cfg(), budget=budget, commit_paths=False, **kw)


def _cfg():
    from mergestore.merge.config import config_from_cli

    return config_from_cli("task_arithmetic", "main", ["e0", "e1"], WEIGHTS, {}, "float32", None, 0)


def _scores(prep) -> dict[tuple[int, int], float]:
    sal = prep.plan_body["budget"]["saliency"]
    return {(int(m), b): v for m, rows in sal["scores"]["w"].items() for b, v in rows}


def _read(prep) -> set[tuple[int, int]]:
    return {(m, b) for m, blocks in prep.selection.read["w"].items() for b in blocks}


def _actual_delta(store: Store, k: int) -> torch.Tensor:
    """The delta as stored (fp32 subtraction of what was committed)."""
    return store.read_tensor(f"e{k}", "w").double() - store.read_tensor("main", "w").double()


def test_gradient_score_is_w_times_block_norms(hand) -> None:
    store, _root, _base, _d, grad, _f = hand
    prep = _plan(store, saliency=grad, saliency_kind="gradient")
    got = _scores(prep)
    assert len(got) == 2 * ROWS
    g = grad["w"].double()
    for k in range(2):
        d = _actual_delta(store, k)
        for b in range(ROWS):
            want = WEIGHTS[k] * float(g[b].norm()) * float(d[b].norm())
            assert got[(k, b)] == pytest.approx(want, rel=1e-6)


def test_fisher_score_is_weighted_squared_delta(hand) -> None:
    store, _root, _base, _d, _g, fisher = hand
    prep = _plan(store, saliency=fisher, saliency_kind="fisher")
    got = _scores(prep)
    f = fisher["w"].double()
    for k in range(2):
        d = _actual_delta(store, k)
        for b in range(ROWS):
            want = float((f[b] * (WEIGHTS[k] * d[b]) ** 2).sum())  # F is constant on a row: exact
            assert got[(k, b)] == pytest.approx(want, rel=1e-6)
    sal = prep.plan_body["budget"]["saliency"]
    omitted = sum(v for key, v in got.items() if key not in _read(prep))
    assert sal["score_omitted"] == pytest.approx(omitted, rel=1e-6)
    assert sal["predicted_loss_change_omitted"] == pytest.approx(omitted / 2, rel=1e-6)


def test_gradient_saliency_reads_the_blocks_that_matter(hand) -> None:
    store, _root, _base, _d, grad, _f = hand
    # about 9 of the 16 blocks (of similar stored sizes) fit in 55%
    norm_greedy = _read(_plan(store, "55%"))
    salient = _read(_plan(store, "55%", saliency=grad, saliency_kind="gradient"))
    big = {(k, b) for k in range(2) for b in range(4, ROWS)}  # where the gradient is large
    assert big <= salient
    assert not big <= norm_greedy  # norm-greedy takes the first rows, the larger deltas
    assert {(0, 0), (1, 0)} <= norm_greedy and not {(0, 0), (1, 0)} <= salient


def test_planning_reads_no_expert_block(hand) -> None:
    store, _root, _base, _d, grad, _f = hand
    _plan(store)  # the statistics are kept (commit --base computed them)
    prep = _plan(store, saliency=grad, saliency_kind="gradient")
    assert prep.selection.analyze_bytes_read == 0
    assert prep.selection.planning_bytes_read == grad["w"].numel() * 4


def test_file_and_dict_give_the_same_saliency_id(hand, tmp_path: Path) -> None:
    store, _root, _base, _d, grad, fisher = hand
    path = tmp_path / "g.safetensors"
    save_file(grad, str(path), metadata={"saliency": "gradient"})
    a = _plan(store, saliency=grad, saliency_kind="gradient")
    b = _plan(store, saliency=str(path))
    assert a.plan_body["budget"]["saliency"]["id"] == b.plan_body["budget"]["saliency"]["id"]
    assert b.plan_body["budget"]["saliency"]["source"] == "file"
    assert a.plan.id != b.plan.id  # the source is part of the plan
    c = _plan(store, saliency={"w": grad["w"] * 2}, saliency_kind="gradient")
    assert c.plan_body["budget"]["saliency"]["id"] != a.plan_body["budget"]["saliency"]["id"]
    assert c.plan.id != a.plan.id
    with pytest.raises(BudgetError, match="holds a gradient saliency, not fisher"):
        _plan(store, saliency=str(path), saliency_kind="fisher")


@pytest.mark.parametrize(
    ("tensors", "kind", "message"),
    [
        ({"x": torch.zeros(ROWS, COLS)}, "gradient", "has no tensor 'w'"),
        ({"w": torch.zeros(ROWS, 2)}, "gradient", "has shape"),
        ({"w": torch.full((ROWS, COLS), float("nan"))}, "gradient", "NaN"),
        ({"w": -torch.ones(ROWS, COLS)}, "fisher", "never negative"),
        ({"w": torch.zeros(ROWS, COLS)}, None, "needs its kind"),
        ({"w": torch.zeros(ROWS, COLS)}, "hessian", "unknown saliency kind"),
    ],
)
def test_bad_saliency_is_refused(hand, tensors, kind, message) -> None:
    store = hand[0]
    with pytest.raises(BudgetError, match=message):
        _plan(store, saliency=tensors, saliency_kind=kind)


@pytest.mark.parametrize("kind", ["gradient", "fisher"])
def test_a_saliency_file_is_read_once(hand, tmp_path: Path, monkeypatch, kind: str) -> None:
    """Planning with a file reads each of its tensors once (the id pass keeps row summaries);
    the scores are those of the same tensors given in Python."""
    import safetensors

    store, _root, _b, _d, grad, fisher = hand
    tensors = {**(grad if kind == "gradient" else fisher), "unused": torch.ones(3, 5)}
    path = tmp_path / "s.safetensors"
    save_file(tensors, str(path), metadata={"saliency": kind})
    reads: list[str] = []
    real = safetensors.safe_open

    class Counting:
        def __init__(self, *a, **kw):
            self._f = real(*a, **kw)

        def get_tensor(self, name):
            reads.append(name)
            return self._f.get_tensor(name)

        def __getattr__(self, attr):
            return getattr(self._f, attr)

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    from_file = _plan(store, saliency=str(path))
    assert sorted(reads) == ["unused", "w"]  # every tensor once (the id covers them all)
    from_dict = _plan(store, saliency=tensors, saliency_kind=kind)
    assert _scores(from_file) == _scores(from_dict)
    assert from_file.selection.planning_bytes_read == path.stat().st_size


# ---- contracts: 100% identity, replay, explain, blame, a commit as the saliency (CLI) ------


def _files(tmp: Path, grad: dict, fisher: dict) -> tuple[Path, Path]:
    g, f = tmp / "grads.safetensors", tmp / "fisher.safetensors"
    save_file(grad, str(g), metadata={"saliency": "gradient"})
    save_file(fisher, str(f), metadata={"saliency": "fisher"})
    return g, f


def _ta(store_path: Path, *extra: str) -> list[str]:
    return [
        "--store",
        str(store_path),
        "--method",
        "task_arithmetic",
        "--base",
        "main",
        "e0",
        "e1",
        "-w",
        "0.5",
        "-w",
        "2.0",
        "--dtype",
        "float32",
        *extra,
    ]


def test_full_budget_with_saliency_is_bit_identical(hand, cli, tmp_path: Path) -> None:
    store, root, _b, _d, grad, fisher = hand
    g, f = _files(tmp_path, grad, fisher)
    sp = root / "store"
    assert cli("merge", *_ta(sp, "-b", "plain")).code == 0
    for name, path in (("g100", g), ("f100", f)):
        r = cli("merge", *_ta(sp, "-b", name, "--budget", "100%", "--saliency", path))
        assert r.code == 0, r.err
    trees = [
        [e for e in store.tree(ref).entries if e.path != "README.md"]
        for ref in ("plain", "g100", "f100")
    ]
    assert trees[0] == trees[1] == trees[2]


def test_merge_replay_explain_blame_from_the_cli(hand, cli, tmp_path: Path) -> None:
    store, root, _b, _d, grad, fisher = hand
    g, _f = _files(tmp_path, grad, fisher)
    sp = root / "store"
    r = cli("merge", *_ta(sp, "-b", "g30", "--budget", "30%", "--saliency", g, "--json"))
    assert r.code == 0, r.err
    run = r.json()
    assert run["planning_bytes_read"] == g.stat().st_size
    assert run["expert_bytes_read"] <= run["budget_bytes"]
    rep = cli("--store", sp, "replay", "g30", "--json")
    assert rep.code == 0 and rep.json()["identical"]
    ex = cli("--store", sp, "explain", "g30", "--json").json()
    assert ex["saliency"]["kind"] == "gradient"
    assert (
        ex["saliency"]["id"]
        == store.prepare_merge(_cfg(), budget="30%", commit_paths=False, saliency=str(g)).plan_body[
            "budget"
        ]["saliency"]["id"]
    )
    text = cli("--store", sp, "explain", "g30")
    assert "saliency gradient" in text.out and "planning read" in text.out
    bl = cli("--store", sp, "blame", "g30", "w", "--json").json()
    rows = bl["inputs"][0]["scores"]
    assert [x["block"] for x in rows] == list(range(ROWS))
    assert {x["block"] for x in rows if x["read"]} == set(bl["inputs"][0]["read"])
    assert all(x["loss_change"] == x["score"] for x in rows)  # gradient: the bound itself
    text = cli("--store", sp, "blame", "g30", "w")
    assert "omitted score" in text.out and "|dL| <=" in text.out


def test_saliency_from_a_commit(hand, cli, tmp_path: Path) -> None:
    store, root, _b, _d, grad, fisher = hand
    _g, f = _files(tmp_path, grad, fisher)
    sp = root / "store"
    cid = store.commit(f, branch="fisher-sal").commit.hex()
    r = cli("plan", *_ta(sp, "--budget", "30%", "--saliency", "fisher-sal", "--json"))
    assert r.code == 0, r.err
    out = r.json()
    assert out["saliency"]["kind"] == "fisher"
    assert out["saliency"]["id"] == cid and out["saliency"]["source"] == "commit"
    assert out["planning_bytes_read"] > 0
    from_file = cli("plan", *_ta(sp, "--budget", "30%", "--saliency", f, "--json")).json()
    assert from_file["body"]["selection"] == out["body"]["selection"]
    text = cli("plan", *_ta(sp, "--budget", "30%", "--saliency", "fisher-sal"))
    assert "saliency fisher" in text.out and "(Fisher)" in text.out


def _store_digest(sp: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((sp / "index").rglob("*")):
        if p.is_file() and p.name != "lock.mdb":
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--saliency", "nowhere.safetensors"], 2, "--saliency ranks blocks for a budget"),
        (["--budget", "30%", "--saliency", "nowhere"], 1, "neither a safetensors file nor"),
        (["--budget", "30%", "--saliency", "NOMETA"], 1, "metadata does not say"),
    ],
)
def test_cli_errors_are_one_line_and_change_nothing(
    hand, cli, tmp_path: Path, extra, code, message
) -> None:
    store, root, _b, _d, grad, _f = hand
    nometa = tmp_path / "nometa.safetensors"
    save_file(grad, str(nometa))
    extra = [str(nometa) if x == "NOMETA" else x for x in extra]
    sp = root / "store"
    before = (store.branches(), _store_digest(sp))
    for cmd in ("merge", "plan"):
        r = cli(cmd, *_ta(sp, *extra))
        assert r.code == code, r.err
        assert r.err.startswith("error: ") and r.err.count("\n") == 1 and message in r.err
        rj = cli(cmd, *_ta(sp, *extra, "--json"))
        assert rj.code == code and rj.json()["code"] == code
    assert (store.branches(), _store_digest(sp)) == before
