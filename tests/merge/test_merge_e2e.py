"""Merges as commits, end to end: numbers equal the kernel on the inputs, refusals, replay."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fixtures.store import commit_family
from mergestore.api import Store
from mergestore.errors import MergeError
from mergestore.ops import TensorContext, merge_tensor


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture
def family_store(tiny_family, store: Store) -> Store:
    commit_family(store, tiny_family)
    return store


EXPERTS = ["dense_small", "frozen", "lowrank_attn"]


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("task_arithmetic", {}),
        ("ties", {"density": 0.5}),
        ("dare_ties", {"density": 0.6}),
        ("breadcrumbs", {"density": 0.8, "gamma": 0.05}),
        ("linear", {}),
        ("model_stock", {}),
        ("sce", {"select_topk": 0.5}),
    ],
)
def test_merge_equals_kernel_on_inputs(
    tiny_family, family_store: Store, tmp_path: Path, method: str, params: dict
) -> None:
    weights = [0.5, 0.3, 0.2]
    needs_w = method not in ("model_stock", "sce")
    base_ref = None if method == "linear" else "main"
    res = family_store.merge(
        method=method,
        base=base_ref,
        models=EXPERTS,
        weights=weights if needs_w else None,
        params=params,
        seed=3,
        branch="m",
    )
    out = tmp_path / "out"
    family_store.checkout("m", out)
    got = load_dir(out)
    base = load_dir(tiny_family.base)
    experts = [load_dir(tiny_family.experts[e]) for e in EXPERTS]
    assert set(got) == set(base)
    for name in sorted(base):
        if method == "linear":
            b, ins = None, [e[name] for e in experts]
            per = [{"weight": w} for w in weights]
        else:
            b, ins = base[name], [e[name] for e in experts]
            per = [{"weight": w} for w in weights] if needs_w else [{} for _ in EXPERTS]
        shared = {k: v for k, v in params.items() if k in ("select_topk",)}
        per = [{**p, **{k: v for k, v in params.items() if k not in shared}} for p in per]
        want = merge_tensor(method, b, ins, shared, per, TensorContext(name=name, seed=3))
        assert torch.equal(got[name], want), name
    assert family_store.replay("m")["identical"]
    c = family_store.get_commit("m")
    if base_ref:
        assert c.parents[0] == family_store.resolve("main")
    assert set(c.parents) >= {family_store.resolve(e) for e in EXPERTS}
    assert res.plan == c.plan


@pytest.mark.parametrize(("method", "base_ref"), [("linear", None), ("ties", "main")])
def test_inputs_sharing_a_tensor_merge_like_copies(
    tiny_family, family_store: Store, tmp_path: Path, method: str, base_ref: str | None
) -> None:
    """Two inputs with the same blocks (dense_small, and a copy of it with one tensor
    changed) are handed to the kernel as one tensor (engine._same_input): the bits are the
    kernel's on separate copies."""
    again = tmp_path / "again"
    shutil.copytree(tiny_family.experts["dense_small"], again)
    shard = sorted(again.glob("*.safetensors"))[0]
    tensors = load_file(shard)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] * 2
    save_file(tensors, shard, metadata={"format": "pt"})
    family_store.commit(again, message="again", branch="again")
    models = ["dense_small", "frozen", "again"]
    weights = [0.5, 0.3, 0.2]
    params = {"density": 0.5} if method == "ties" else {}
    family_store.merge(
        method=method, base=base_ref, models=models, weights=weights, params=params,
        seed=3, branch="m",
    )  # fmt: skip
    out = tmp_path / "out"
    family_store.checkout("m", out)
    got = load_dir(out)
    base = load_dir(tiny_family.base)
    srcs = [tiny_family.experts["dense_small"], tiny_family.experts["frozen"], again]
    experts = [load_dir(p) for p in srcs]
    per = [{"weight": w, **params} for w in weights]
    for name in sorted(base):
        b = base[name] if base_ref else None
        ins = [e[name].clone() for e in experts]
        want = merge_tensor(method, b, ins, {}, per, TensorContext(name=name, seed=3))
        assert torch.equal(got[name].view(torch.int16), want.view(torch.int16)), name


def test_no_base_merge_reads_an_input_made_of_the_base_as_the_references(
    tiny_family, family_store: Store, tmp_path: Path, monkeypatch
) -> None:
    """linear has no base model, but the experts' blocks are delta-coded against the base's. In
    a tensor where an input is the base's (frozen's frozen layers, lowrank_attn outside
    attention), that input is decoded as one tensor and its blocks are the others'
    references: none of them is read alone (Engine._read_many), and the bits are the
    kernel's."""
    from mergestore.merge import engine
    from mergestore.merge.inputs import _tensors

    alone: list[bytes] = []
    read_many = engine.Engine._read_many

    def spy(self, meters, workers):
        alone.extend(meters)
        return read_many(self, meters, workers)

    monkeypatch.setattr(engine.Engine, "_read_many", spy)
    weights = [0.5, 0.3, 0.2]
    family_store.merge(method="linear", models=EXPERTS, weights=weights, branch="m")
    repo = family_store.repo
    base_recs = _tensors(repo, repo.resolve("main"))
    expert_recs = [_tensors(repo, repo.resolve(e)) for e in EXPERTS]
    held_by_an_input = {
        b
        for name, rec in base_recs.items()
        if any(e[name].blocks == rec.blocks for e in expert_recs)
        for b in rec.blocks
    }
    assert held_by_an_input  # the family has such tensors
    assert alone  # ... and tensors where every expert differs (references read alone)
    assert not held_by_an_input & set(alone)
    out = tmp_path / "out"
    family_store.checkout("m", out)
    got = load_dir(out)
    experts = [load_dir(tiny_family.experts[e]) for e in EXPERTS]
    per = [{"weight": w} for w in weights]
    for name in sorted(got):
        want = merge_tensor("linear", None, [e[name] for e in experts], {}, per,
                            TensorContext(name=name, seed=0))  # fmt: skip
        assert torch.equal(got[name].view(torch.int16), want.view(torch.int16)), name


def test_output_is_a_loadable_hf_folder(tiny_family, family_store: Store, tmp_path: Path) -> None:
    family_store.merge(
        method="ties",
        base="main",
        models=EXPERTS,
        weights=[1, 1, 1],
        params={"density": 0.5},
        branch="m",
        out_dtype="float32",
    )
    out = tmp_path / "o"
    family_store.checkout("m", out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= names
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == "float32"
    tensors = load_dir(out)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)


def test_merge_equal_to_base_costs_nothing(family_store: Store) -> None:
    # merging the base with itself gives the base: every output block is deduplicated
    before = sum(1 for _ in family_store.repo.iter_blocks())
    family_store.merge(
        method="task_arithmetic",
        base="main",
        models=["main"],
        weights=[1.0],
        branch="same",
        write_card=False,  # the card (README.md) would be one more new block
    )
    after = sum(1 for _ in family_store.repo.iter_blocks())
    assert after <= before + 1  # only the recorded mergekit_config.yml is new
    base = {t.name: t.blocks for t in family_store.tensors("main")}
    assert {t.name: t.blocks for t in family_store.tensors("same")} == base


def test_yaml_config_with_local_path(tiny_family, family_store: Store, tmp_path: Path) -> None:
    cfg = tmp_path / "m.yml"
    cfg.write_text(f"""
merge_method: ties
base_model: main
models:
  - model: {tiny_family.experts["dense_small"]}
    parameters: {{weight: 0.6, density: [1.0, 0.5]}}
  - model: frozen
    parameters: {{weight: 0.4, density: 0.5}}
parameters: {{normalize: true}}
dtype: float32
out_dtype: bfloat16
""")
    prep = family_store.prepare_merge(str(cfg))
    res = family_store.execute_merge(prep, branch="y")
    body = family_store.repo.get_plan(res.plan).body
    trees = {family_store.get_commit(bytes.fromhex(m["commit"])).tree for m in body["models"]}
    assert family_store.get_commit("dense_small").tree in trees  # the path was committed, deduped
    assert family_store.replay("y")["identical"]


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"method": "nope", "base": "main", "models": EXPERTS}, "unknown merge method"),
        ({"method": "ties", "base": "main", "models": EXPERTS, "weights": [1, 2]}, "weight"),
        ({"method": "slerp", "base": "main", "models": EXPERTS, "params": {"t": 0.5}}, "exactly"),
        ({"method": "ties", "models": EXPERTS, "weights": [1, 1, 1]}, "base"),
        (
            {
                "method": "ties",
                "base": "main",
                "models": EXPERTS,
                "weights": [1, 1, 1],
                "params": {"bogus": 1},
            },
            "bogus",
        ),
        ({"method": "ties", "base": "main", "models": ["nosuchref"], "weights": [1]}, "unknown"),
    ],
)
def test_refusals_write_nothing(family_store: Store, kwargs: dict, msg: str) -> None:
    before = (sum(1 for _ in family_store.repo.iter_blocks()), family_store.branches())
    with pytest.raises(MergeError, match=msg):
        family_store.merge(branch="bad", **kwargs)
    assert (sum(1 for _ in family_store.repo.iter_blocks()), family_store.branches()) == before


def test_shape_mismatch_refused(family_store: Store, tmp_path: Path, tiny_family) -> None:
    import shutil

    from safetensors.torch import save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_family.experts["frozen"], other)
    for f in other.glob("*.safetensors"):
        t = load_file(f)
        if "model.norm.weight" in t:
            t["model.norm.weight"] = torch.ones(7, dtype=t["model.norm.weight"].dtype)
            save_file(t, f, metadata={"format": "pt"})
    family_store.commit(other, message="bad", branch="bad", base="main")
    with pytest.raises(MergeError, match="shape differs"):
        family_store.merge(method="task_arithmetic", base="main", models=["bad"], weights=[1])


def test_random_methods_deterministic_across_threads(family_store: Store) -> None:
    ids = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        res = family_store.merge(
            method="dare_ties",
            base="main",
            models=EXPERTS,
            weights=[1, 1, 1],
            params={"density": 0.5},
            seed=11,
            branch=f"d{threads}",
        )
        ids.append(family_store.get_commit(res.commit).tree)
    torch.set_num_threads(2)
    assert ids[0] == ids[1]


def _with_plan(store: Store, commit: bytes, body: dict, branch: str) -> None:
    """Publish a copy of merge `commit` whose plan object is `body`, on `branch`."""
    from mergestore.store.objects import Commit, Plan
    from mergestore.store.repo import RefUpdate

    c = store.get_commit(commit)
    with store.repo.writer() as w:
        pid = w.put_object(Plan(body=body))
        copy = Commit(
            tree=c.tree,
            parents=c.parents,
            message=f"{branch}: altered plan",
            author="x",
            time=c.time,
            base=c.base,
            plan=pid,
            run=c.run,
        )
        w.publish([RefUpdate(f"refs/heads/{branch}", w.put_object(copy), "test")])


def test_replay_detects_altered_plan(family_store: Store) -> None:
    res = family_store.merge(
        method="task_arithmetic", base="main", models=EXPERTS, weights=[0.5, 0.3, 0.2], branch="m"
    )
    body = dict(family_store.repo.get_plan(family_store.get_commit(res.commit).plan).body)
    cfg = dict(body["config"])
    cfg["models"] = [dict(m) for m in cfg["models"]]
    cfg["models"][0]["parameters"] = {"weight": 0.9}
    body["config"] = cfg
    _with_plan(family_store, res.commit, body, "forged")
    rep = family_store.replay("forged")
    assert rep["identical"] is False and rep["first_difference"]


def test_replay_names_the_engine_of_an_older_plan(family_store: Store, cli) -> None:
    """A plan made by another engine version that does not replay says so, as well as
    failing."""
    res = family_store.merge(
        method="dare_linear",
        base="main",
        models=EXPERTS,
        weights=[0.5, 0.3, 0.2],
        params={"density": 0.5},
        branch="dare",
    )
    body = dict(family_store.repo.get_plan(family_store.get_commit(res.commit).plan).body)
    assert "(engine 2)" in body["engine"]
    body["engine"] = body["engine"].replace("(engine 2)", "(engine 1)")
    body["seed"] = int(body.get("seed", 0)) + 1  # other drops, as an older engine would draw
    _with_plan(family_store, res.commit, body, "engine1")
    r = cli("--store", family_store.path, "replay", "engine1")
    assert r.code == 1
    assert "DIFFERENT" in r.err and "the plan was made by" in r.err and "engine 1" in r.err
    r = cli("--store", family_store.path, "replay", "dare")
    assert r.code == 0 and "the plan was made by" not in r.err
