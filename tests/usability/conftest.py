"""Fixtures for issue 15's tests: a committed tiny family, and `mergestore ...` against it."""

from __future__ import annotations

import os
import shlex
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


@pytest.fixture
def ties_args() -> tuple[str, ...]:
    """The tests' usual merge: `merge --method ties --base main dense_small frozen -w 1 -w 1`."""
    return tuple(shlex.split("merge --method ties --base main dense_small frozen -w 1 -w 1"))


@pytest.fixture
def ties(ms, ties_args: tuple[str, ...]) -> Callable[..., object]:
    """`mergestore --store FAM_STORE merge --method ties ... -w 1 -w 1 EXTRA...` in-process."""

    def run(*extra: str | os.PathLike[str]):
        return ms(*ties_args, *extra)

    return run


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
