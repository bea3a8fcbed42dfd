"""Fixtures for the fault-injection tests: the fork server, a checkpoint pool, the fault ledger.

Set MERGESTORE_FAULTS_REPORT=PATH to add this run's counts to the JSON file at PATH
(`python tests/faults/report.py` does, and prints the table docs/reliability.md shows).
MERGESTORE_FAULTS_SCALE=N multiplies random kills and fuzzing examples for a long local run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faultkit import ForkServer, Ledger

from fixtures.family import FamilySpec, make_family


@pytest.fixture(scope="session")
def forkserver(tmp_path_factory: pytest.TempPathFactory) -> ForkServer:
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A base and 16 distinct dense experts (read-only!), so every commit writes new blocks."""
    spec = FamilySpec(experts=tuple(f"dense_large{i}" for i in range(16)))
    fam = make_family(tmp_path_factory.mktemp("pool"), spec)
    return fam.base, list(fam.experts.values())


@pytest.fixture(scope="session")
def ledger() -> Ledger:
    led = Ledger()
    yield led
    path = os.environ.get("MERGESTORE_FAULTS_REPORT")
    if path:
        led.merge_into(Path(path))
