"""TIES under a budget keeps the full merge's trim in the blocks it reads (merge/trim.py)."""

from __future__ import annotations

import pytest
import torch

from fixtures.family import FamilySpec
from fixtures.store import family_store
from mergestore.api import Store
from mergestore.merge import trim

EXPERTS = ["dense_small", "lowrank_attn", "uneven0"]
TIES = {"method": "ties", "base": "main", "models": EXPERTS, "weights": [0.5, 0.3, 0.8]}
PARAMS = {"density": 0.3, "lambda": 0.7}


def _models(delta: torch.Tensor, rows: int) -> list[trim.BlockModel]:
    out = []
    for blk in delta.double().split(rows):
        nz = blk[blk != 0]
        out.append(
            trim.BlockModel.of(
                float(nz.abs().sum()), float(nz.norm()), nz.numel(), float(nz.abs().max())
            )
        )
    return out


@pytest.mark.parametrize("law", ["gaussian", "laplace", "lowrank"])
def test_survivors_in_read_blocks_are_estimated_from_block_statistics(law: str) -> None:
    """The estimated count of the full trim's survivors in a subset of blocks is within 3% of
    the true count, for blocks of very different scales; the plain k (what an unaware budget
    keeps) is off by far more."""
    g = torch.Generator().manual_seed(7)
    rows, n_blocks, cols = 8, 32, 64
    scales = torch.logspace(-4, -2, n_blocks, dtype=torch.float64)[torch.randperm(n_blocks)]
    if law == "gaussian":
        d = torch.randn(n_blocks * rows, cols, generator=g, dtype=torch.float64)
    elif law == "laplace":
        u = torch.rand(n_blocks * rows, cols, generator=g, dtype=torch.float64) - 0.5
        d = -u.sign() * torch.log1p(-2 * u.abs())
    else:
        a = torch.randn(n_blocks * rows, 4, generator=g, dtype=torch.float64)
        d = a @ torch.randn(4, cols, generator=g, dtype=torch.float64)
    d = (d * scales.repeat_interleave(rows)[:, None]).float()
    k = trim.top_k(d.numel(), 0.3)
    t_true = d.abs().flatten().topk(k).values[-1]
    read = list(range(0, n_blocks, 2))  # half the blocks, spread over the scales
    truth = sum(int((d[b * rows : (b + 1) * rows].abs() >= t_true).sum()) for b in read)
    models = _models(d, rows)
    tt = trim.TensorTrim(dict(enumerate(models)), [k], [trim.threshold(models, k)])
    got = tt.read_counts(set(read))
    assert abs(got - truth) <= 0.03 * truth, (got, truth)
    assert abs(k - truth) > 0.3 * truth  # the plain k is far from it


def test_density_for_gives_the_kernels_k() -> None:
    for numel in (1, 7, 4096, 10**6 + 3, 151936 * 1536):
        for k in {1, numel // 3, numel - 1, numel} - {0}:
            assert trim.top_k(numel, trim.density_for(k, numel)) == k


@pytest.mark.parametrize(("top", "mid"), [(0, 5), (3, 0), (7, 100), (0, 0)])
def test_breadcrumbs_counts_give_the_kernels_cuts(top: int, mid: int) -> None:
    """gamma and density made from [top, mid] make the kernel drop the `top` largest and keep
    the next `mid` of a tensor whose other elements are zero (the omitted blocks)."""
    from mergestore.ops import sparsify

    numel = 1000
    g = torch.Generator().manual_seed(1)
    delta = torch.zeros(numel)
    delta[: top + mid + 20] = torch.randn(top + mid + 20, generator=g)  # some left below
    gamma, density = trim.share_for(top, numel), trim.share_for(mid, numel)
    kept = sparsify.magnitude_outliers(delta, density, gamma, rescale=False)
    order = delta.abs().argsort(descending=True)
    want = torch.zeros(numel, dtype=torch.bool)
    want[order[top : top + mid]] = True
    assert torch.equal(kept != 0, want)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    spec = FamilySpec(
        n_layers=2,
        hidden=64,
        intermediate=128,
        vocab=256,
        dtype="float32",
        experts=tuple(EXPERTS),
        seed=11,
    )
    s, _fam = family_store(tmp_path_factory.mktemp("trim"), spec)
    yield s
    s.close()


def _selection(store: Store, ref: str) -> tuple[dict, dict]:
    from mergestore.merge.budget import _unranges

    _cid, _c, plan, _run = store.merge_info(ref)
    sel = {
        t: {int(m): set(_unranges(r)) for m, r in ms.items()} for t, ms in plan["selection"].items()
    }
    return sel, plan["budget"]


@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("expert", ["dense_small", "uneven0"])
def test_read_blocks_match_the_full_merge(store: Store, expert: str, method: str) -> None:
    """In the blocks a budget reads, a budgeted merge of one expert by a method that cuts by
    rank over the whole tensor equals the full merge (up to the estimate: >= 97% of their
    elements); with the plain counts far fewer do, since more of the read blocks survive."""
    one = {**TIES, "method": method, "models": [expert], "weights": [0.8]}
    params = {**PARAMS, **({"gamma": 0.05} if "breadcrumbs" in method else {})}
    name = f"{expert}-{method}"
    store.merge(branch=f"{name}-full", params=params, **one)
    store.merge(branch=f"{name}-half", params=params, budget="50%", **one)
    sel, budget = _selection(store, f"{name}-half")
    assert budget["trim"]  # the plan records the counts per (tensor, expert) with an omission
    equal = total = 0
    for rec in store.tensors(f"{name}-half"):
        if rec.name not in budget["trim"]:
            continue
        full = store.read_tensor(f"{name}-full", rec.name)
        half = store.read_tensor(f"{name}-half", rec.name)
        rows = rec.rows_per_block
        for b in sorted(sel[rec.name][0]):
            a, c = full[b * rows : (b + 1) * rows], half[b * rows : (b + 1) * rows]
            equal += int((a == c).sum())
            total += a.numel()
    assert total > 0
    assert equal / total >= 0.97, equal / total


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_full_budget_is_the_plain_merge_and_replays(store: Store, method: str) -> None:
    kw = {**TIES, "method": method}
    store.merge(branch=f"{method}-full2", params=PARAMS, **kw)
    store.merge(branch=f"{method}-100", params=PARAMS, budget="100%", **kw)
    assert "trim" not in _selection(store, f"{method}-100")[1]
    a, b = (
        [e for e in store.tree(r).entries if e.path != "README.md"]
        for r in (f"{method}-full2", f"{method}-100")
    )
    assert a == b
    store.merge(branch=f"{method}-30", params=PARAMS, budget="30%", **kw)
    assert _selection(store, f"{method}-30")[1]["trim"]
    assert store.replay(f"{method}-30")["identical"]


def test_cli_budgeted_ties_plan_merge_replay(store: Store, cli) -> None:
    args = ["--store", store.path, "--method", "ties", "--base", "main", *EXPERTS]
    args += ["-w", "0.5", "-w", "0.3", "-w", "0.8"]
    args += ["--param", "density=0.3", "--param", "lambda=0.7"]
    p = cli("plan", *args, "--budget", "40%", "--json")
    assert p.code == 0, p.err
    m = cli("merge", *args, "--budget", "40%", "-b", "cli-ties", "--json")
    assert m.code == 0, m.err
    assert m.json()["plan"] == p.json()["plan"]
    r = cli("--store", store.path, "replay", "cli-ties", "--json")
    assert r.code == 0, r.err
    assert r.json()["identical"]
    assert m.json()["expert_bytes_read"] <= m.json()["budget_bytes"]


def test_consensus_methods_spread_the_budget_over_positions() -> None:
    """ties averages the agreeing experts at an element, so a second expert's block where one
    is already taken counts half (then a third, a third): the order spreads over positions;
    an additive method keeps the plain score order."""
    from mergestore.merge.budget import Candidate, _order

    def cand(block: int, model: int, contrib: float) -> Candidate:
        return Candidate("t", block, model, 1, contrib, 4, 1.0, 1.0)

    cands = [cand(0, 0, 10.0), cand(0, 1, 9.0), cand(0, 2, 8.0), cand(1, 0, 6.0), cand(2, 1, 4.0)]
    key = [(c.block, c.model) for c in _order(cands, "score")]
    assert key == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 1)]
    spread = [(c.block, c.model) for c in _order(cands, "score", spread=True)]
    # 10; then 9/2 = 4.5 < 6: block 1; 4.5 > 4: (0, 1); then 8/3 < 4: block 2; then (0, 2)
    assert spread == [(0, 0), (1, 0), (0, 1), (2, 1), (0, 2)]
    scores = {(c.tensor, c.block, c.model): 1.0 / c.contrib for c in cands}
    inverse = [(c.block, c.model) for c in _order(cands, "score", scores, spread=True)]
    assert inverse[0] == (2, 1)  # a saliency's scores are spread the same way


def test_ties_plan_covers_more_positions_than_the_plain_order(store: Store, monkeypatch) -> None:
    from mergestore.merge import budget

    def positions(ref: str) -> int:
        sel, _b = _selection(store, ref)
        return sum(len(set.union(*ms.values())) for ms in sel.values() if ms)

    store.merge(branch="spread", params=PARAMS, budget="25%", **TIES)
    plain = budget._order
    monkeypatch.setattr(budget, "_order", lambda c, s, sc=None, spread=False: plain(c, s, sc))
    store.merge(branch="nospread", params=PARAMS, budget="25%", **TIES)
    assert positions("spread") > positions("nospread")
