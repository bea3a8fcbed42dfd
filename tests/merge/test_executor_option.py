"""`--executor`: the local executor by default; Ray, when missing, says how to install it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.merge.executor import LocalExecutor, get_executor


def test_get_executor() -> None:
    assert isinstance(get_executor(None), LocalExecutor)
    assert isinstance(get_executor("local"), LocalExecutor)
    ex = LocalExecutor()
    assert get_executor(ex) is ex


def test_ray_missing_says_how_to_install(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    root = store.repo.path
    store.close()
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = cli("--store", root, "merge", "--method", "task_arithmetic", "--base", "main",
            "dense_small", "-w", "0.5", "-b", "m", "--executor", "ray")  # fmt: skip
    assert r.code == 1
    assert r.err.strip().count("\n") == 0 and 'pip install "mergestore[ray]"' in r.err, r.err
    assert cli("--store", root, "show", "m").code != 0
    r = cli("--store", root, "merge", "--method", "task_arithmetic", "--base", "main",
            "dense_small", "-b", "m", "--executor", "ray", "--json")  # fmt: skip
    assert r.code == 1
