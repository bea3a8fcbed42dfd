"""Helpers for the fault tests: the fork-server client, store checks, and the fault ledger."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mergestore.api import Store
from mergestore.fsck import fsck
from mergestore.store.packs import ENTRY_HEADER, PACK_MAGIC, list_pack_ids, pack_path

SERVER = Path(__file__).with_name("forkserver.py")
ROOT = Path(__file__).resolve().parents[2]
KILLED = (-9, 137)  # SIGKILL from us, or a kill point's os._exit(137)


# ----- running commands ----------------------------------------------------------------------


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def killed(self) -> bool:
        return self.rc in KILLED

    def json(self) -> dict:
        return json.loads(self.out)


class Run:
    def __init__(self, server: ForkServer, rid: str, pid: int, out: Path, err: Path) -> None:
        self.server, self.id, self.pid, self._out, self._err = server, rid, pid, out, err

    def kill(self) -> None:
        self.server._send({"op": "kill", "id": self.id})

    def wait(self, timeout: float = 120.0) -> Result:
        rc = self.server._wait_rc(self.id, timeout)
        # a child killed right after fork may not have created its output files yet
        out, err = (
            f.read_text(errors="replace") if f.exists() else "" for f in (self._out, self._err)
        )
        res = Result(rc, out, err)
        self._out.unlink(missing_ok=True)
        self._err.unlink(missing_ok=True)
        return res


class ForkServer:
    """Client of forkserver.py: start `mergestore ARGS` runs, kill them, collect exit codes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, MERGESTORE_PROGRESS="0", PYTHONPATH=str(ROOT))
        env.pop("MERGESTORE_FAULT", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
            env=env,
        )
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._events: dict[str, dict] = {}
        self._write_lock = threading.Lock()
        assert self.proc.stdout is not None
        first = json.loads(self.proc.stdout.readline())
        assert first.get("ready"), first
        self._reader = threading.Thread(target=self._read_events, daemon=True)
        self._reader.start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)
            with self._cond:
                self._events.setdefault(ev["id"], {}).update(ev)
                self._cond.notify_all()

    def _send(self, req: dict) -> None:
        assert self.proc.stdin is not None
        with self._write_lock:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()

    def _wait_key(self, rid: str, key: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in self._events.get(rid, {}):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"fork server: no {key} for run {rid}")
                self._cond.wait(min(left, 1.0))
            return self._events[rid][key]

    def _wait_rc(self, rid: str, timeout: float) -> int:
        try:
            return self._wait_key(rid, "rc", timeout)
        except TimeoutError:
            self._send({"op": "kill", "id": rid})
            self._wait_key(rid, "rc", 10)
            raise

    def start(
        self,
        *args: str | os.PathLike[str],
        env: dict[str, str] | None = None,
        kill_at_call: int | None = None,
        count_calls: Path | None = None,
    ) -> Run:
        """Start `mergestore ARGS`; `kill_at_call` N: it SIGKILLs itself at its N-th Python
        function call; `count_calls`: it writes how many calls it made to that file."""
        rid = str(next(self._ids))
        out, err = self.tmp / f"{rid}.out", self.tmp / f"{rid}.err"
        self._send(
            {
                "op": "run",
                "id": rid,
                "argv": [os.fspath(a) for a in args],
                "env": env or {},
                "stdout": str(out),
                "stderr": str(err),
                "kill_at_call": kill_at_call,
                "count_calls": str(count_calls) if count_calls else None,
            }
        )
        pid = self._wait_key(rid, "pid", 30)
        return Run(self, rid, pid, out, err)

    def run(
        self,
        *args: str | os.PathLike[str],
        env: dict[str, str] | None = None,
        kill_at_call: int | None = None,
        count_calls: Path | None = None,
    ) -> Result:
        return self.start(*args, env=env, kill_at_call=kill_at_call, count_calls=count_calls).wait()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def has_command(name: str) -> bool:
    import click

    from mergestore.cli.main import cli

    return cli.get_command(click.Context(cli), name) is not None  # commands load lazily


# ----- checking a store ----------------------------------------------------------------------


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def dir_digest(root: Path) -> dict[str, str]:
    """Every file under root (names and contents) but LMDB's reader table: 'unchanged'."""
    return {k: v for k, v in tree_digest(root).items() if not k.endswith("lock.mdb")}


def cli_inproc(*args: str | os.PathLike[str]) -> Result:
    """`mergestore ARGS` in this process with main()'s semantics (exit code, stdout, stderr)."""
    import contextlib
    import io

    from mergestore.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([os.fspath(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


def assert_clean_error(r: Result, *, contains: str = "") -> None:
    """A refusal as the CLI promises: non-zero exit, one line `error: ...`, no traceback."""
    lines = r.err.strip().splitlines()
    assert r.rc not in (0, 70, 99), f"rc {r.rc}: {r.err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    assert "Traceback" not in r.err and "internal error" not in r.err, r.err
    assert contains.lower() in lines[0].lower(), f"{contains!r} not in {lines[0]!r}"


def refs_of(store_path: Path) -> dict[str, bytes]:
    with Store.open(store_path) as s:
        return s.repo.list_refs("")


def fsck_problems(store_path: Path, full: bool = True) -> list[str]:
    with Store.open(store_path) as s:
        rep = fsck(s.repo, full=full)
        return [f"{p.kind}: {p.message}" for p in rep.problems]


def lost_commits(store_path: Path, expected: dict[bytes, dict[str, str]], scratch: Path) -> list:
    """Commits in `expected` (id -> file digests) that are gone or check out differently."""
    lost = []
    with Store.open(store_path) as s:
        for cid, digest in expected.items():
            out = scratch / f"co-{cid.hex()[:12]}"
            try:
                s.checkout(cid.hex(), out)
                if tree_digest(out) != digest:
                    lost.append((cid.hex()[:12], "content differs"))
            except Exception as e:  # any failure to give the bytes back is a loss
                lost.append((cid.hex()[:12], f"{type(e).__name__}: {e}"))
            finally:
                shutil.rmtree(out, ignore_errors=True)
    return lost


def unreferenced_pack_bytes(store_path: Path) -> int:
    """Pack bytes no index entry accounts for (0 after a gc that rewrote every dead byte)."""
    with Store.open(store_path) as s:
        live: Counter[int] = Counter()
        for _bid, loc in s.repo.iter_blocks():
            live[loc.pack] += ENTRY_HEADER.size + loc.length
        total = 0
        for pid in list_pack_ids(s.repo.pack_dir):
            size = pack_path(s.repo.pack_dir, pid).stat().st_size
            total += size - (len(PACK_MAGIC) if size else 0) - live[pid]
        return total


# ----- the ledger: what docs/reliability.md reports ------------------------------------------


@dataclass
class Ledger:
    """Counts of faults injected and survived, hostile inputs tried, and data lost."""

    faults: Counter[str] = field(default_factory=Counter)
    survived: Counter[str] = field(default_factory=Counter)
    inputs: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)  # commits verified byte for byte
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def ok(self, kind: str) -> None:
        with self._lock:
            self.survived[kind] += 1

    def tried(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.inputs[kind] += n

    def verified(self, kind: str, n: int) -> None:
        with self._lock:
            self.checks[kind] += n

    def lose(self, kind: str, n: int) -> None:
        with self._lock:
            self.lost[kind] += n

    def to_json(self) -> dict:
        return {
            "faults": dict(self.faults),
            "survived": dict(self.survived),
            "inputs": dict(self.inputs),
            "lost": dict(self.lost),
            "verified_commits": dict(self.checks),
        }

    def merge_into(self, path: Path) -> None:
        """Add these counts to the JSON file at path (several pytest runs may add up)."""
        data = json.loads(path.read_text()) if path.exists() else {}
        for key, counts in self.to_json().items():
            slot = data.setdefault(key, {})
            for k, v in counts.items():
                slot[k] = slot.get(k, 0) + v
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
