"""Issue 15 item 17: refs as data in `log --json`, one branch field, no seed where no random
numbers are drawn, and value statistics for a retyped tensor of the same shape."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def test_log_json_gives_refs_as_data(ms) -> None:
    assert ms("tag", "v1", "main").code == 0
    r = ms("log", "--all", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["head"] == "main"
    by_id = {c["id"]: c["refs"] for c in doc["commits"]}
    main_id = ms("show", "main", "--json").json()["id"]
    assert by_id[main_id] == [
        {"kind": "branch", "name": "main", "head": True},
        {"kind": "tag", "name": "v1", "head": False},
    ]
    frozen_id = ms("show", "frozen", "--json").json()["id"]
    assert by_id[frozen_id] == [{"kind": "branch", "name": "frozen", "head": False}]
    # the text forms keep git's decorations
    assert "(HEAD -> main, tag: v1)" in ms("log", "--oneline").out


def test_the_branch_field_is_the_short_name_everywhere(ms, tiny_family) -> None:
    def branch_of(*args: str) -> str:
        r = ms(*args, "--json")
        assert r.code == 0, r.err
        return r.json()["branch"]

    assert branch_of("commit", tiny_family.experts["frozen"], "-b", "x/y") == "x/y"
    assert branch_of("branch", "x/z", "main") == "x/z"
    merged = branch_of("merge", "--method", "linear", "main", "frozen", "--param", "weight=1")
    assert merged == "merge/linear-1"
    assert branch_of("merge", "--method", "linear", "main", "frozen", "-w", "1", "-w", "2",
                     "-b", "x/m") == "x/m"  # fmt: skip
    assert branch_of("switch", "x/y") == "x/y"
    listed = ms("branch", "--json").json()
    assert listed["head"] == "x/y"
    assert {"x/y", "x/z", "x/m", "merge/linear-1"} <= set(listed["branches"])
    assert ms("status", "--json").json()["branch"] == "x/y"


def test_no_seed_for_methods_that_draw_no_random_numbers(ms) -> None:
    args = ("--base", "main", "dense_small", "frozen", "-w", "1", "-w", "1")
    assert ms("merge", "--method", "ties", *args, "--param", "density=0.5", "-b", "t").code == 0
    dare = ("--param", "density=0.5", "--seed", "3", "-b", "d")
    assert ms("merge", "--method", "dare_ties", *args, *dare).code == 0
    t, d = ms("show", "t"), ms("show", "d")
    assert t.code == 0 and d.code == 0
    assert "seed" not in t.out
    assert "(seed 3" in d.out
    assert ms("show", "t", "--json").json()["recipe"]["seed"] is None
    assert ms("show", "d", "--json").json()["recipe"]["seed"] == 3


def _retyped_copy(ms, tmp_path: Path) -> tuple[dict, dict]:
    """main checked out, every tensor to fp16, one tensor reshaped; committed as `f16`."""
    src = tmp_path / "main"
    assert ms("checkout", "main", src).code == 0
    a: dict[str, torch.Tensor] = {}
    b: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        ts = load_file(f)
        a.update(ts)
        new = {k: v.to(torch.float16) for k, v in ts.items()}
        if "model.norm.weight" in new:
            new["model.norm.weight"] = new["model.norm.weight"].reshape(2, -1).contiguous()
        b.update(new)
        save_file(new, f, metadata={"format": "pt"})
    r = ms("commit", src, "-b", "f16")
    assert r.code == 0, r.err
    return a, b


def test_diff_of_a_retyped_tensor_of_the_same_shape_has_value_statistics(ms, tmp_path) -> None:
    a, b = _retyped_copy(ms, tmp_path)
    r = ms("diff", "main", "f16", "--json")
    assert r.code == 0, r.err
    by_name = {t["name"]: t for t in r.json()["tensors"]}
    for name, t in by_name.items():
        assert t["status"] == "retyped"
        if name == "model.norm.weight":  # reshaped: no element-wise comparison
            assert t["delta_l2"] is None and t["a_shape"] != t["shape"]
            continue
        x, y = a[name].double(), b[name].double()
        d = y - x
        assert t["a_dtype"] == "BF16" and t["dtype"] == "F16"
        assert math.isclose(t["delta_l2"], float(d.norm()), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(t["l2_a"], float(x.norm()), rel_tol=1e-9)
        assert math.isclose(t["l2_b"], float(y.norm()), rel_tol=1e-9)
        assert math.isclose(t["max_abs"], float(d.abs().max()), rel_tol=1e-9, abs_tol=1e-12)
        assert t["nnz"] == int((d != 0).sum()) and t["numel"] == x.numel()
        cos = float((x * y).sum() / (x.norm() * y.norm()))
        assert math.isclose(t["cosine"], cos, rel_tol=1e-9)
    tot = r.json()["totals"]
    assert tot["retyped"] == len(by_name) and tot["delta_l2"] > 0
    text = ms("diff", "main", "f16")
    line = next(ln for ln in text.out.splitlines() if "lm_head.weight" in ln)
    assert "BF16 [" in line and "-> F16 [" in line and "|d| " in line and "cos " in line
    assert "(changed and retyped tensors)" in text.out
    # against the folder (uncommitted) too
    folder = ms("diff", "main", tmp_path / "main", "--json").json()
    got = {t["name"]: t["delta_l2"] for t in folder["tensors"]}
    want = {n: t["delta_l2"] for n, t in by_name.items()}
    assert got == want
