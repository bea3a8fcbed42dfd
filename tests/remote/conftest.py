"""Remote fixtures: a real SeaweedFS S3 server per test session (free ports on 127.0.0.1), and
a `remote_url` fixture that runs each test against it and against file://.

Under CI=true a server that cannot start fails the tests; elsewhere they skip.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from seaweed import BUCKET, Seaweed, server_or_fail

_counter = itertools.count()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = server_or_fail(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials as a user gives them: AWS_* environment variables (any key for SeaweedFS)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mergestore-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "mergestore-test-secret-value")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("MERGESTORE_REMOTE_RETRY_TIMEOUT", "5")


@pytest.fixture(params=["file", "s3"])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty remote: file:// in a temp folder, or a new prefix on the S3 server."""
    if request.param == "file":
        return f"file://{tmp_path / 'remote'}"
    server = request.getfixturevalue("seaweed")
    request.getfixturevalue("s3_env")
    prefix = f"t{os.getpid()}-{next(_counter)}-{time.time_ns() % 10**9}"
    return f"s3://{BUCKET}/{prefix}?endpoint={server.endpoint}"


@pytest.fixture
def origin(tmp_path: Path, tiny_family, remote_url: str):
    """A store with the family's base on main and `remote_url` as its remote "origin"."""
    from mergestore.api import Store

    s = Store.init(tmp_path / "a", block_size=4096)
    s.commit(tiny_family.base, message="base")
    s.add_remote("origin", remote_url)
    yield s
    s.close()
