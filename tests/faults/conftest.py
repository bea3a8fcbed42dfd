"""Fixtures for the fault-injection tests: the fork server and the fault ledger.

Set MERGESTORE_FAULTS_REPORT=PATH to add this run's counts to the JSON file at PATH
(tests/faults/report.py does, and turns them into the table in docs/reliability.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faultkit import ForkServer, Ledger


@pytest.fixture(scope="session")
def forkserver(tmp_path_factory: pytest.TempPathFactory) -> ForkServer:
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def ledger() -> Ledger:
    led = Ledger()
    yield led
    path = os.environ.get("MERGESTORE_FAULTS_REPORT")
    if path:
        led.merge_into(Path(path))
