"""One benchmarked command in its own process: its wall time, peak RSS and CPU time alone.

Linux charges a child the peak RSS of the process it was spawned from: at exec the old
address space's high-water mark goes into the child's ru_maxrss, and with vfork (what
subprocess uses) that old address space is the parent's. A benchmark driver grows (it loads
outputs to compare them), so every command is started from a small launcher, which forks it
and reports its child's figures from wait4 over a pipe. Measured: `python -c pass` started
from a driver that had once held 1 GB reported a peak RSS of 1051 MB; through the launcher,
14 MB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import IO

_LAUNCHER = """
import os, sys, time
report, cmd = int(sys.argv[1]), sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(report)
    os.execvp(cmd[0], cmd)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
os.write(report, f"{wall} {ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}".encode())
os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


@dataclass
class Measured:
    stdout: bytes
    wall: float  # seconds, fork to exit
    rss: int  # peak resident bytes of the command's process
    user: float  # CPU seconds
    system: float


def run(
    cmd: list[str], env: dict[str, str] | None = None, stderr: IO[bytes] | None = None
) -> Measured:
    """Run `cmd` through the launcher; RuntimeError (with its exit code) if it fails."""
    r_fd, w_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, str(w_fd), *cmd],
            stdout=subprocess.PIPE,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
            env=env,
            pass_fds=(w_fd,),
        )
    finally:
        os.close(w_fd)
    assert proc.stdout is not None
    out = proc.stdout.read()
    code = proc.wait()
    with os.fdopen(r_fd, "rb") as f:
        report = f.read().decode().split()
    if code != 0 or len(report) != 4:
        raise RuntimeError(f"{' '.join(cmd)}: exit {code}")
    wall, rss_kb, user, system = report
    return Measured(out, float(wall), int(rss_kb) * 1024, float(user), float(system))
