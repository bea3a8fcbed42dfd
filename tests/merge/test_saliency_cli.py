"""`mergestore saliency` and `merge --saliency` on the real tiny LM family, as a user types them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fixtures.lm_family import EXPERTS, ensure_lm_family
from mergestore.api import Store

WINDOW, WINDOWS = 32, 6


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory):
    fam = ensure_lm_family("tiny")
    root = tmp_path_factory.mktemp("lmsal")
    store = Store.init(root / "store", block_size=4096)
    store.commit(fam.base, branch="main")
    for name, path in fam.experts.items():
        store.commit(path, branch=name, base="main")
    cal = root / "cal.jsonl"
    docs = [Path("/usr/share/common-licenses/GPL-3").read_text()[:2000], "def f(x):\n" * 40]
    cal.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    yield fam, store, root, cal
    store.close()


def _windows(fam, cal: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fam.base))
    ids: list[int] = []
    for line in cal.read_text().splitlines():
        ids += tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
        ids.append(tok.eos_token_id)
    total = len(ids) // WINDOW
    every = torch.tensor(ids[: total * WINDOW]).reshape(total, WINDOW)
    return every[[i * total // WINDOWS for i in range(WINDOWS)]]  # spread over the text


def _grads(fam, x: torch.Tensor) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(fam.base), dtype=torch.float32).eval()
    m(input_ids=x, labels=x).loss.backward()
    return {n: p.grad for n, p in m.named_parameters()}


def _load(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)


def _sal(cli, root: Path, cal: Path, out: str, *extra: str):
    return cli(
        "--store",
        root / "store",
        "saliency",
        "main",
        "--calibration",
        cal,
        "-o",
        root / out,
        "--window",
        str(WINDOW),
        "--max-windows",
        str(WINDOWS),
        *extra,
    )


def test_gradient_is_the_models_gradient_on_the_windows(lm, cli) -> None:
    fam, _store, root, cal = lm
    r = _sal(cli, root, cal, "grads", "--json")
    assert r.code == 0, r.err
    res = r.json()
    assert res["kind"] == "gradient" and res["windows"] == WINDOWS and res["window"] == WINDOW
    meta, got = _load(root / "grads.safetensors")
    assert meta["saliency"] == "gradient"
    want = _grads(fam, _windows(fam, cal))
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-7)


def test_fisher_is_the_mean_squared_window_gradient(lm, cli) -> None:
    fam, _store, root, cal = lm
    r = _sal(cli, root, cal, "fisher", "--fisher")
    assert r.code == 0, r.err
    assert r.out.strip().endswith("fisher.safetensors")
    meta, got = _load(root / "fisher.safetensors")
    assert meta["saliency"] == "fisher"
    x = _windows(fam, cal)
    want: dict[str, torch.Tensor] = {}
    for i in range(WINDOWS):
        for k, g in _grads(fam, x[i : i + 1]).items():
            want[k] = want.get(k, 0) + g.double() ** 2 / WINDOWS
    for k in want:
        torch.testing.assert_close(got[k], want[k].float(), rtol=1e-4, atol=1e-12)


def test_budgeted_merge_with_the_helpers_output(lm, cli) -> None:
    _fam, store, root, cal = lm
    if not (root / "grads.safetensors").exists():
        assert _sal(cli, root, cal, "grads").code == 0
    args = ["--store", root / "store", "--method", "task_arithmetic", "--base", "main"]
    args += [*EXPERTS, *sum((["-w", "0.3"] for _ in EXPERTS), [])]
    sal = ["--saliency", root / "grads.safetensors"]
    p = cli("plan", *args, "--budget", "25%", *sal, "--json")
    assert p.code == 0, p.err
    plan = p.json()
    assert plan["saliency"]["kind"] == "gradient"
    assert plan["expert_bytes_planned"] <= plan["budget_bytes"]
    m = cli("merge", *args, "--budget", "25%", *sal, "-b", "sal25", "--json")
    assert m.code == 0, m.err
    assert m.json()["plan"] == plan["plan"]  # plan and merge agree
    assert cli("--store", root / "store", "replay", "sal25").code == 0
    # a second merge of the same plan is the memo: same commit
    again = cli("merge", *args, "--budget", "25%", *sal, "-b", "sal25b", "--json").json()
    assert again["memo"] and again["commit"] == m.json()["commit"]
    assert store.resolve("sal25") == bytes.fromhex(m.json()["commit"])


@pytest.mark.parametrize(
    ("setup", "extra", "code", "message"),
    [
        ("exists", [], 1, "exists (--force overwrites it)"),
        ("empty", [], 1, "fewer than one window"),
        ("badjson", [], 1, "not a JSON line"),
        ("nocal", [], 2, "does not exist"),
        ("unknown-ref", [], 1, "unknown ref"),
        ("no-transformers", [], 1, 'pip install "mergestore[saliency]"'),
    ],
)
def test_saliency_errors(lm, cli, tmp_path: Path, monkeypatch, setup, extra, code, message):
    _fam, store, root, cal = lm
    out = tmp_path / "o.safetensors"
    ref = "main"
    if setup == "exists":
        out.write_bytes(b"x")
    elif setup == "empty":
        cal = tmp_path / "e.jsonl"
        cal.write_text('{"text": "hi"}\n')
    elif setup == "badjson":
        cal = tmp_path / "b.jsonl"
        cal.write_text("{nope\n")
    elif setup == "nocal":
        cal = tmp_path / "missing.jsonl"
    elif setup == "unknown-ref":
        ref = "nope"
    elif setup == "no-transformers":
        monkeypatch.setitem(sys.modules, "transformers", None)
    branches = store.branches()
    base = ["--store", root / "store", "saliency", ref, "--calibration", cal, "-o", out, *extra]
    r = cli(*base)
    assert r.code == code, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1 and message in r.err
    rj = cli(*base, "--json")
    assert rj.code == code and rj.json()["code"] == code
    assert store.branches() == branches
    if setup != "exists":
        assert not out.exists()


def test_bad_saliency_with_folder_inputs_stores_nothing(cli, tmp_path: Path) -> None:
    fam = ensure_lm_family("tiny")
    sp = tmp_path / "store"
    with Store.init(sp, block_size=4096) as s:
        s.commit(fam.base, branch="main")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")

    def files() -> list[tuple[str, int]]:
        return sorted(
            (str(p.relative_to(sp)), p.stat().st_size)
            for p in sp.rglob("*")
            if p.is_file() and p.name != "lock.mdb"
        )

    before = files()
    folders = [str(fam.experts[n]) for n in EXPERTS]  # not committed yet: the merge would
    r = cli(
        "--store",
        sp,
        "merge",
        "--method",
        "task_arithmetic",
        "--base",
        "main",
        *folders,
        "--budget",
        "25%",
        "--saliency",
        bad,
    )
    assert r.code == 1 and r.err.startswith("error: ") and "not a readable safetensors" in r.err
    assert files() == before
