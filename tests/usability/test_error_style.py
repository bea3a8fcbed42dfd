"""Issue 15 items 11 and 12: one error style for usage errors and the tool's own errors, the
exit codes (2 usage, 1 the rest), and `{"error": ..., "code": N}` on stdout with --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

USAGE = [
    (["merge", "--nosuch"], "--nosuch", "mergestore merge --help"),
    (["checkout"], "missing argument", "mergestore checkout --help"),
    (["lgo"], "no such command", "mergestore --help"),
    (["log", "-n", "x"], "not a valid integer", "mergestore log --help"),
]
TOOL = [
    (["log", "nosuchref"], "nosuchref"),
    (["merge", "--method", "nosuch", "main"], "nosuch"),
    (["checkout", "main", "/proc/nonexistent/dir/out"], ""),
]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("args", "what", "hint"), USAGE)
def test_usage_errors_are_one_line_exit_2(ms, args, what, hint) -> None:
    r = ms(*args)
    assert r.code == 2
    line = one_error_line(r.err)
    assert what in line and hint in line
    assert "Usage:" not in r.err and r.out == ""


@pytest.mark.parametrize(("args", "what"), TOOL)
def test_tool_errors_are_one_line_exit_1(ms, args, what) -> None:
    r = ms(*args)
    assert r.code == 1
    assert what in one_error_line(r.err)


@pytest.mark.parametrize("args", [a for a, _, _ in USAGE] + [a for a, _ in TOOL])
def test_json_errors_on_stdout(ms, args) -> None:
    r = ms(*args, "--json")
    doc = json.loads(r.out)
    assert doc == {"error": one_error_line(r.err).removeprefix("error: "), "code": r.code}
    assert r.code in (1, 2)


def test_exit_codes_are_documented(cli) -> None:
    out = " ".join(cli("--help").out.split())
    assert "Exit status" in out and "2 a usage" in out and '"code"' in out


def test_console_script_exit_code(fam_store: Path) -> None:
    """The installed `mergestore` as a user types it (not in-process)."""
    exe = Path(sys.executable).with_name("mergestore")
    if not exe.exists():
        pytest.skip("the console script is not installed beside this interpreter")
    # a clean environment, as a user's shell has: other tests may leave variables behind
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["MERGESTORE_DIR"] = str(fam_store)
    p = subprocess.run(
        [exe, "merge", "--bogus", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert json.loads(p.stdout)["code"] == 2, (p.stdout, p.stderr)
    assert p.stderr.startswith("error: ")
