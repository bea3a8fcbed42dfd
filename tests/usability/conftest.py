"""Fixtures for issue 15's tests: a committed tiny family, and `mergestore ...` against it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.store import commit_family
from mergestore.api import Store


@pytest.fixture
def fam_store(tiny_family, tmp_path: Path) -> Path:
    """A store with the tiny family: base on `main`, experts on branches of their names."""
    path = tmp_path / "store"
    with Store.init(path, block_size=4096) as s:
        commit_family(s, tiny_family)
    return path


@pytest.fixture
def ms(cli, fam_store: Path) -> Callable[..., object]:
    """`mergestore --store FAM_STORE ARGS...` in-process."""

    def run(*args: str | os.PathLike[str]):
        return cli("--store", fam_store, *args)

    return run


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
