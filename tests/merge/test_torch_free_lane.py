"""The engine's torch-free lane: merges (linear, task_arithmetic, ties, breadcrumbs*) in every
dtype combination that never import torch, with the same commit tree as the torch lane
(MERGESTORE_TORCH_FREE=0); per tensor, so a tensor the lane cannot take goes through torch
alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fixtures.store import commit_family
from mergestore import native
from mergestore.api import Store

pytestmark = pytest.mark.needs(native.kernels is not None, "C kernels not built")

EXPERTS = ["dense_small", "frozen", "lowrank_attn"]


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    commit_family(store, tiny_family)
    return store


def test_merge_and_replay_leave_torch_unloaded(tiny_family, tmp_path) -> None:
    experts = [(k, str(v)) for k, v in tiny_family.experts.items()]
    code = f"""
import sys
from mergestore import Store
s = Store.init({str(tmp_path / "st")!r})
s.commit({str(tiny_family.base)!r}, message="base", branch="main")
for ref, path in {experts!r}:
    s.commit(path, message=ref, branch=ref, base="main")
assert "torch" not in sys.modules, "torch imported by commit"
ta = s.merge(method="task_arithmetic", base="main", models={EXPERTS!r}, weights=[0.5, 0.3, 0.2],
             params={{"lambda": 0.9}}, branch="ta")
lin = s.merge(method="linear", models=["main"] + {EXPERTS!r}, weights=[0.1, 0.4, 0.3, 0.2],
              branch="lin")
ties = s.merge(method="ties", base="main", models={EXPERTS!r}, weights=[0.5, 0.3, 0.2],
               params={{"density": 0.5}}, branch="ties")
budget = s.merge(method="task_arithmetic", base="main", models={EXPERTS!r},
                 weights=[0.5, 0.3, 0.2], budget="40%", branch="budget")
merges = (ta, lin, ties, budget)
assert all(m.run["torch_free"] for m in merges), [m.run for m in merges]
assert all(s.replay(b)["identical"] for b in ("ta", "lin", "ties", "budget"))
assert "torch" not in sys.modules, "torch was imported"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _tree(store: Store, ref: str) -> bytes:
    return store.get_commit(ref).tree


CASES = [
    ("task_arithmetic", "main", EXPERTS, [0.5, 0.3, 0.2], {}),
    ("task_arithmetic", "main", EXPERTS, [0.5, -0.3, 0.2], {"normalize": True, "lambda": 1.3}),
    ("task_arithmetic", "main", ["frozen"], [0.7], {}),  # mostly the base's own blocks
    ("linear", None, ["main", *EXPERTS], [0.1, 0.4, 0.3, 0.2], {}),
    ("linear", None, EXPERTS, [0.5, 0.3, 0.2], {"normalize": False}),
    ("ties", "main", EXPERTS, [0.5, 0.3, 0.2], {"density": 0.5}),
    ("breadcrumbs_ties", "main", EXPERTS, [0.5, 0.3, 0.2], {"density": 0.8, "gamma": 0.05}),
]
# mergekit's high-precision setting and the other dtype combinations (ops.lanes)
DTYPES = [
    {"dtype": "float32", "out_dtype": "bfloat16"},
    {"dtype": "float32"},
    {"dtype": "float16"},
    {"dtype": "bfloat16", "out_dtype": "float16"},
    {"out_dtype": "float32"},
]
CASES += [
    (m, b, models, w, {**params, **dt})
    for (m, b, models, w, params) in [
        ("task_arithmetic", "main", EXPERTS, [0.5, -0.3, 0.2], {"lambda": 0.9}),
        ("linear", None, ["main", *EXPERTS], [0.1, 0.4, 0.3, 0.2], {}),
        ("ties", "main", EXPERTS, [0.5, 0.3, 0.2], {"density": 0.5}),
        ("breadcrumbs", "main", EXPERTS, [0.5, 0.3, 0.2], {"density": 0.8, "gamma": 0.05}),
    ]
    for dt in DTYPES
]
CASES += [  # random drops (ops.lane_random): bf16 compute, and fp32 (no fp16 lane)
    (m, "main", EXPERTS, [0.5, 0.3, 0.2], {**params, **dt})
    for m, params in [
        ("dare_ties", {"density": 0.5}),
        ("della", {"density": 0.6, "epsilon": 0.2}),
        ("dare_linear", {"density": 0.7}),
        ("della_linear", {"density": 0.5}),
    ]
    for dt in [{}, *(d for d in DTYPES if d.get("dtype") != "float16")]
]


@pytest.mark.parametrize(("method", "base", "models", "weights", "params"), CASES)
def test_same_tree_as_the_torch_lane(
    family_store: Store, monkeypatch, method, base, models, weights, params
) -> None:
    params = dict(params)
    dtypes = {k: params.pop(k) for k in ("dtype", "out_dtype") if k in params}
    kw = dict(method=method, base=base, models=models, weights=weights, params=params, **dtypes)
    fast = family_store.merge(**kw, branch="fast")
    monkeypatch.setenv("MERGESTORE_TORCH_FREE", "0")
    slow = family_store.merge(**kw, branch="slow", force=True)
    assert fast.run["torch_free"] and not slow.run["torch_free"]
    assert _tree(family_store, "fast") == _tree(family_store, "slow")
    assert family_store.replay("fast")["identical"]


@pytest.mark.parametrize(
    ("kwargs", "lane"),
    [
        ({"dtype": "bfloat16", "out_dtype": "bfloat16"}, True),
        ({"out_dtype": "float32"}, True),
        ({"dtype": "float32"}, True),
        ({"dtype": "float32", "out_dtype": "bfloat16"}, True),
        ({"dtype": "float32", "params": {"normalize": True}}, True),
        ({"method": "ties", "params": {"density": 0.5}}, True),
        ({"method": "ties", "params": {"density": 1.0}}, False),  # no streamed cut
        ({"method": "dare_ties", "params": {"density": 0.5}}, True),  # ops.lane_random
        ({"method": "dare_ties", "dtype": "float16", "params": {"density": 0.5}}, False),
        ({"budget": "50%"}, True),  # the merge delta for the bound: fp64 kernel
    ],
)
def test_lane_only_where_it_gives_the_same_bits(family_store: Store, kwargs, lane) -> None:
    kw = {"method": "task_arithmetic", "base": "main", "models": EXPERTS}
    kw["weights"] = [0.5, 0.3, 0.2]
    kw.update(kwargs)
    res = family_store.merge(**kw, branch="m")
    assert res.run["torch_free"] is lane


def test_cli_reports_the_lane(family_store: Store, cli) -> None:
    st = ("--store", str(family_store.path))
    r = cli(*st, "merge", "--method", "task_arithmetic", "--base", "main", *EXPERTS,
            "-w", "0.5", "-w", "0.3", "-w", "0.2", "-b", "m", "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["torch_free"] is True


def _mixed_store(store: Store, tmp_path) -> dict:
    """A base and an expert with fp32 norms next to bf16 weights (and an int buffer)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    base = {
        "w": torch.randn(64, 32, generator=g).to(torch.bfloat16),
        "norm": torch.randn(32, generator=g),  # fp32
        "half": torch.randn(8, 16, generator=g).to(torch.float16),
    }
    expert = {
        k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype)
        for k, v in base.items()
    }
    save_file(base, tmp_path / "base.safetensors")
    save_file(expert, tmp_path / "expert.safetensors")
    store.commit(tmp_path / "base.safetensors", message="base", branch="main")
    store.commit(tmp_path / "expert.safetensors", message="x", branch="x", base="main")
    return base


@pytest.mark.parametrize(
    "dtypes",
    [
        {},
        {"dtype": "float32", "out_dtype": "bfloat16"},
        {"dtype": "bfloat16"},
        {"dtype": "float16"},
    ],
)
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "linear"])
def test_mixed_dtypes_in_a_checkpoint_stay_on_the_lane(
    store: Store, tmp_path, monkeypatch, dtypes, method
) -> None:
    base = _mixed_store(store, tmp_path)
    kw: dict = dict(method=method, base="main", models=["x"], weights=[0.5], **dtypes)
    if method == "ties":
        kw["params"] = {"density": 0.5}
    if method == "linear":
        kw.update(base=None, models=["main", "x"], weights=[0.5, 0.5])
    fast = store.merge(**kw, branch="fast")
    monkeypatch.setenv("MERGESTORE_TORCH_FREE", "0")
    slow = store.merge(**kw, branch="slow", force=True)
    assert fast.run["torch_free"] and fast.run["lanes"]["torch"] == 0
    assert slow.run["lanes"]["torch_reasons"] == {"MERGESTORE_TORCH_FREE=0": 3}
    assert _tree(store, "fast") == _tree(store, "slow")
    import torch

    named = dtypes.get("out_dtype", dtypes.get("dtype"))
    for name in base:
        want = getattr(torch, named) if named else base[name].dtype
        assert store.read_tensor("fast", name).dtype == want, name


def test_a_method_without_a_lane_says_why(store: Store, tmp_path) -> None:
    _mixed_store(store, tmp_path)
    res = store.merge(
        method="dare_ties", base="main", models=["x"], weights=[0.5], params={"density": 0.5},
        branch="m", dtype="float16",
    )  # fmt: skip
    lanes = res.run["lanes"]
    assert not res.run["torch_free"] and lanes["torch_free"] == 0 and lanes["torch"] == 3
    assert list(lanes["torch_reasons"]) == ["dare_ties: random drops in F16 compute run on torch"]


@pytest.mark.needs(bool(getattr(native.kernels, "HAVE_F16", 0)), "no fp16 kernels in this build")
def test_fp16_family(tmp_path, monkeypatch) -> None:
    import dataclasses

    from fixtures.family import PRESETS, make_family

    fam = make_family(tmp_path / "fam", dataclasses.replace(PRESETS["tiny"], dtype="float16"))
    store = Store.init(tmp_path / "st")
    commit_family(store, fam)
    cases = [
        ("task_arithmetic", "main", EXPERTS, {"lambda": 0.8}, True),
        ("linear", None, ["main", *EXPERTS], {}, True),
        ("ties", "main", EXPERTS, {"density": 0.5}, True),
        ("dare_ties", "main", EXPERTS, {"density": 0.5}, False),  # random drops: torch
    ]
    for method, base, models, params, lane in cases:
        weights = [0.4, 0.3, 0.2, 0.1][: len(models)]
        kw = dict(method=method, base=base, models=models, weights=weights, params=params)
        fast = store.merge(**kw, branch=f"{method}-a")
        monkeypatch.setenv("MERGESTORE_TORCH_FREE", "0")
        slow = store.merge(**kw, branch=f"{method}-b", force=True)
        monkeypatch.delenv("MERGESTORE_TORCH_FREE")
        assert fast.run["torch_free"] is lane and not slow.run["torch_free"], method
        assert _tree(store, f"{method}-a") == _tree(store, f"{method}-b"), method
        assert store.read_tensor(f"{method}-a", "lm_head.weight").dtype.itemsize == 2


def test_budget_merge_same_tree_bound_and_delta(family_store: Store, monkeypatch) -> None:
    """A budgeted merge tracks ||merged - base|| for its bound: on the lane with the fp64
    statistics kernel, in torch with a dot product. Same tree and bound; the delta agrees to
    rounding."""
    kw = dict(method="task_arithmetic", base="main", models=EXPERTS, weights=[0.5, 0.3, 0.2])
    fast = family_store.merge(**kw, budget="40%", branch="fast")
    monkeypatch.setenv("MERGESTORE_TORCH_FREE", "0")
    slow = family_store.merge(**kw, budget="40%", branch="slow", force=True)
    assert fast.run["torch_free"] and not slow.run["torch_free"]
    assert _tree(family_store, "fast") == _tree(family_store, "slow")
    assert fast.run["error_bound"] == slow.run["error_bound"]
    assert fast.run["expert_bytes_read"] == slow.run["expert_bytes_read"]
    a, b = fast.run["merged_delta_l2"], slow.run["merged_delta_l2"]
    assert a > 0 and abs(a - b) <= 1e-12 * b


def test_mixed_dtypes_out_folder_equals_checkout(store: Store, tmp_path) -> None:
    """merge --out on the lane, fp32 norms beside bf16 weights, dtype float32 -> bfloat16."""
    _mixed_store(store, tmp_path)
    out = tmp_path / "out"
    res = store.merge(
        method="ties", base="main", models=["x"], weights=[0.5], params={"density": 0.5},
        dtype="float32", out_dtype="bfloat16", branch="m", out=out,
    )  # fmt: skip
    assert res.run["torch_free"]
    store.checkout("m", tmp_path / "co")
    for f in sorted(p.name for p in (tmp_path / "co").iterdir()):
        assert (out / f).read_bytes() == (tmp_path / "co" / f).read_bytes(), f


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "ties", "params": {"density": 0.5}},
        {"method": "ties", "params": {"density": 1.0}},  # every tensor on torch, and why
        {"method": "task_arithmetic", "dtype": "float32", "out_dtype": "bfloat16"},
    ],
)
def test_lane_verdicts_once_per_key_same_as_per_tensor(
    family_store: Store, monkeypatch, kwargs
) -> None:
    """choose_lanes asks ops.lanes once per distinct (dtype, parameters, size), and its
    verdicts are those of each tensor asked alone."""
    from mergestore.merge import engine as engine_mod

    asked: list[str] = []
    reason = engine_mod.lanes.reason
    monkeypatch.setattr(
        engine_mod.lanes, "reason", lambda m, *a, **k: asked.append(m) or reason(m, *a, **k)
    )
    seen = []
    choose = engine_mod.Engine.choose_lanes

    def spy(self, tasks):
        choose(self, tasks)
        seen.append((self, list(tasks), dict(self.on_lane), dict(self.torch_reasons)))

    monkeypatch.setattr(engine_mod.Engine, "choose_lanes", spy)
    kw = {"method": "task_arithmetic", "base": "main", "models": EXPERTS, **kwargs}
    family_store.merge(**kw, weights=[0.5, 0.3, 0.2], branch="m")
    n_tasks = sum(len(tasks) for _, tasks, _, _ in seen)
    assert 0 < len(asked) < n_tasks
    for engine, tasks, on_lane, reasons in seen:
        alone = [engine.lane_verdict(t) for t in tasks]
        assert on_lane == {id(t): v[0] for t, v in zip(tasks, alone, strict=True) if v[0]}
        want: dict[str, int] = {}
        for v in alone:
            if v[0] is None:
                want[v[1]] = want.get(v[1], 0) + 1
        assert reasons == want
