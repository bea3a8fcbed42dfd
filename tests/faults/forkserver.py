"""A process with mergestore imported that forks `mergestore` CLI runs on request.

Importing mergestore (torch) takes seconds; the fault tests start hundreds of short commands and
kill many of them, so each run is a fork of this process instead. This process never opens a
store, so no child inherits an LMDB environment. Children are real processes: `kill -9` on one
is the same as on a freshly started `mergestore`.

Protocol on stdin/stdout, one JSON object per line:
    {"op": "run", "id", "argv", "env", "cwd", "stdout", "stderr"[, "kill_at_call", "count_calls"]}
        -> {"id", "pid"} at once, {"id", "rc"} when the child ends
    kill_at_call N: the child SIGKILLs itself at its N-th Python function call (any thread): a
        kill at a moment picked by count, not by time, so it lands however loaded the machine is
    count_calls PATH: the child writes how many Python function calls it made to PATH
    {"op": "kill", "id"}   SIGKILL the child if it has not been reaped yet (no pid-reuse race)
rc is the exit code, or minus the signal number that ended the child.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import mergestore.checkout  # noqa: E402,F401  (import everything a command may need, once)
import mergestore.fsck  # noqa: E402,F401
import mergestore.store.gc  # noqa: E402,F401
import mergestore.store.repack  # noqa: E402,F401
from mergestore.cli.main import main  # noqa: E402

with contextlib.suppress(ImportError):  # later layers, when present
    import mergestore.merge.run  # noqa: F401


def _count_calls(kill_at: int | None) -> Callable[[], int]:
    """Count Python function calls in every thread of this process from now on; SIGKILL it at
    call `kill_at`. Returns the count so far."""
    counter = itertools.count(1)
    seen = [0]

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "call":
            seen[0] = n = next(counter)
            if n == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.setprofile(profile)
    sys.setprofile(profile)
    return lambda: seen[0]


def _child(req: dict) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    for k, v in (req.get("env") or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if req.get("cwd"):
        os.chdir(req["cwd"])
    code = 0
    calls = None
    if req.get("kill_at_call") or req.get("count_calls"):
        calls = _count_calls(req.get("kill_at_call"))
    try:
        main(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 99
    try:
        sys.setprofile(None)
        if calls is not None and req.get("count_calls"):
            Path(req["count_calls"]).write_text(str(calls()))
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _emit(obj: dict) -> None:
    os.write(1, (json.dumps(obj) + "\n").encode())


def serve() -> None:
    children: dict[int, str] = {}  # pid -> request id
    by_id: dict[str, int] = {}
    buf = b""
    _emit({"ready": True})
    while True:
        ready, _, _ = select.select([0], [], [], 0.005 if children else None)
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                if req["op"] == "run":
                    pid = os.fork()
                    if pid == 0:
                        _child(req)
                    children[pid] = req["id"]
                    by_id[req["id"]] = pid
                    _emit({"id": req["id"], "pid": pid})
                elif req["op"] == "kill":
                    pid = by_id.get(req["id"], 0)
                    if pid in children:
                        os.kill(pid, signal.SIGKILL)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            rid = children.pop(pid, None)
            if rid is not None:
                by_id.pop(rid, None)
                _emit({"id": rid, "rc": os.waitstatus_to_exitcode(status)})
    for pid in children:
        os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    serve()
