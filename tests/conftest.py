"""Shared fixtures: tiny checkpoint families, fresh stores, and an in-process CLI runner."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from ci_gate import unavailable

from fixtures.family import PRESETS, Family, make_family
from mergestore.api import Store

os.environ.setdefault("MERGESTORE_LOCK_TIMEOUT", "60")
os.environ["MERGESTORE_PROGRESS"] = "0"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.needs(ok, reason)`: skip when not ok, or fail under CI=true (ci_gate.py)."""
    for mark in item.iter_markers("needs"):
        ok, reason = mark.args
        if not ok:
            unavailable(reason)


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    """Base + dense_small, frozen and lowrank_attn experts, bf16, several shards. Read-only!"""
    return make_family(tmp_path_factory.mktemp("family"), PRESETS["tiny"])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.init(tmp_path / "store", block_size=4096)
    yield s
    s.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `mergestore ARGS...` in-process; returns exit code, stdout and stderr."""
    from mergestore.cli.main import main

    def run(*args: str | os.PathLike[str]) -> CliResult:
        capsys.readouterr()
        try:
            main([os.fspath(a) for a in args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0) if not isinstance(e.code, str) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
