"""Issue 15 item 18: the README's Python snippet runs as written on an empty store, and the
global --store works after the command name too."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_snippet() -> str:
    text = README.read_text()
    after = text[text.index("The Python API mirrors the commands:") :]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_readme_python_snippet_runs_on_an_empty_store(tiny_family, tmp_path: Path) -> None:
    shutil.copytree(tiny_family.base, tmp_path / "qwen-base")
    shutil.copytree(tiny_family.experts["dense_small"], tmp_path / "qwen-math")
    shutil.copytree(tiny_family.experts["frozen"], tmp_path / "qwen-code")
    code = python_snippet().replace('"/data/ckpts"', repr(str(tmp_path / "ckpts")))
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, str(README), "exec"), {})  # noqa: S102 - the README's own code
    finally:
        os.chdir(here)
    assert (tmp_path / "out" / "config.json").is_file()


def test_store_after_the_command(cli, fam_store: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MERGESTORE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    before = cli("--store", fam_store, "log", "main", "--json").json()
    assert cli("log", "main", "--store", fam_store, "--json").json() == before
    assert cli("log", f"--store={fam_store}", "main", "--json").json() == before
    r = cli("branch", "x", "main", "--store", fam_store)
    assert r.code == 0 and "x" in cli("--store", fam_store, "branch", "--json").json()["branches"]
