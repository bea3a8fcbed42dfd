"""The store commands end to end through the CLI, as a user types them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def cli_store(tmp_path: Path, cli) -> Path:
    s = tmp_path / "st"
    assert cli("init", s).code == 0
    return s


def test_quickstart_flow(tiny_family, cli, cli_store: Path, tmp_path: Path) -> None:
    st = ["--store", cli_store]
    r = cli(*st, "commit", tiny_family.base, "-m", "base", "-b", "main", "--json")
    assert r.code == 0, r.err
    base_id = r.json()["commit"]
    r = cli(
        *st,
        "commit",
        tiny_family.experts["frozen"],
        "-m",
        "math expert",
        "-b",
        "math",
        "--base",
        "main",
        "--meta",
        "lr=1e-5",
        "--json",
    )
    assert r.code == 0, r.err
    assert r.json()["new_blocks"] < r.json()["blocks"]
    r = cli(*st, "log", "--all", "--json")
    assert len(r.json()["commits"]) == 2
    r = cli(*st, "log", "--all", "--graph")
    assert r.code == 0 and "math" in r.out
    r = cli(*st, "show", "math", "--json")
    info = r.json()
    assert info["base"] == base_id and info["meta"] == {"lr": "1e-5"}
    assert info["tensors"] > 0 and info["stored_bytes"] > 0 and info["logical_bytes"] > 0
    r = cli(*st, "ls", "math", "--tensors", "--json")
    assert any(t["name"] == "model.norm.weight" for t in r.json()["tensors"])
    r = cli(*st, "checkout", "math", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    assert tree_digest(tmp_path / "out") == tree_digest(tiny_family.experts["frozen"])
    r = cli(*st, "checkout", "math", tmp_path / "out")
    assert r.code != 0 and "not empty" in r.err and r.err[-1] == "\n" and r.err.count("\n") == 1
    assert cli(*st, "checkout", "math", tmp_path / "out", "--force").code == 0
    r = cli(*st, "checkout", base_id[:8], tmp_path / "one", "--tensor", "model.norm.*", "--json")
    assert r.code == 0, r.err
    from safetensors import safe_open

    with safe_open(tmp_path / "one" / "model.safetensors", "pt") as f:
        assert list(f.keys()) == ["model.norm.weight"]
    assert cli(*st, "fsck", "--json").json()["ok"] is True
    du = cli(*st, "du", "--json").json()
    assert du["deduplicated_logical_ratio"] < 1.0 and du["stored_bytes"] < du["logical_bytes"]
    assert du["stored_raw_ratio"] == du["stored_bytes"] / du["deduplicated_bytes"]
    assert cli(*st, "branch", "--json").json()["branches"]["math"]
    assert cli(*st, "tag", "v0", "main", "--json").json()["commit"] == base_id
    assert cli(*st, "branch", "-d", "math").code == 0
    assert "math" in cli(*st, "reflog").out


def test_store_discovery_env_and_upward(tiny_family, cli, tmp_path: Path, monkeypatch) -> None:
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    monkeypatch.chdir(proj)
    assert cli("init").code == 0
    assert (proj / ".mergestore" / "config.json").exists()
    monkeypatch.chdir(proj / "sub")
    assert cli("commit", tiny_family.base, "-m", "b").code == 0
    monkeypatch.setenv("MERGESTORE_DIR", str(proj / ".mergestore"))
    monkeypatch.chdir(tmp_path)
    assert len(cli("log", "--json").json()["commits"]) == 1


@pytest.mark.parametrize("what", ["missing", "notckpt", "corrupt", "truncated"])
def test_bad_input_is_one_line_and_store_unchanged(
    tiny_family, cli, cli_store: Path, tmp_path: Path, what: str
) -> None:
    st = ["--store", cli_store]
    cli(*st, "commit", tiny_family.base, "-m", "base")
    before = tree_digest(cli_store / "packs"), cli(*st, "log", "--json").out
    bad = tmp_path / "bad"
    if what == "notckpt":
        bad.mkdir()
        (bad / "config.json").write_text("{}")
    elif what in ("corrupt", "truncated"):
        bad.mkdir()
        src = next(tiny_family.base.glob("*.safetensors")).read_bytes()
        data = src[:8] + b"{garbage" + src[16:] if what == "corrupt" else src[: len(src) // 2]
        (bad / "model.safetensors").write_bytes(data)
    r = cli(*st, "commit", bad, "-m", "x")
    assert r.code != 0
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err
    assert (tree_digest(cli_store / "packs"), cli(*st, "log", "--json").out) == before


def test_errors_for_unknown_ref_and_missing_store(cli, cli_store: Path, tmp_path: Path) -> None:
    r = cli("--store", cli_store, "show", "nope")
    assert r.code != 0 and "unknown ref" in r.err and r.err.count("\n") == 1
    r = cli("--store", tmp_path / "nostore", "log")
    assert r.code != 0 and "not a mergestore store" in r.err
