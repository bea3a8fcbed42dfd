"""Issue 15 item 19: methods in `merge --help`, "did you mean", the -w hint, help for every
option, `repack -n`, and who holds the store lock when a command waits for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from mergestore.cli.main import cli as root
from mergestore.ops.registry import method_names


def _refs(ms) -> dict:
    return ms("branch", "--json").json()["branches"]


@pytest.mark.parametrize("command", ["merge", "plan"])
def test_help_lists_every_method(ms, command) -> None:
    r = ms(command, "--help")
    assert r.code == 0
    _, _, methods = r.out.partition("Methods (--method, or merge_method: in a config):")
    listed = [ln.split()[0] for ln in methods.splitlines() if ln.startswith("  ") and ln[2] != " "]
    assert listed == method_names() and len(listed) >= 20
    assert "ties " in methods and "needs --base" in methods and "density" in methods


def _walk(cmd: click.Command, path: list[str]):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)  # the public lookup: the CLI loads command modules on demand
        for name in sorted(cmd.list_commands(ctx)):
            yield from _walk(cmd.get_command(ctx, name), [*path, name])


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{' '.join(path)} {'/'.join(p.opts)}"
        for path, cmd in _walk(root, ["mergestore"])
        for p in cmd.params
        if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()
    ]
    assert missing == []
    commands = [path for path, cmd in _walk(root, ["mergestore"]) if not (cmd.help or "").strip()]
    assert commands == []
    assert len(list(_walk(root, []))) > 30  # really walked the tree


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (("merge", "--method", "tise", "--base", "main", "frozen", "-w", "1"), "'ties'"),
        (
            (
                "merge",
                "--method",
                "ties",
                "--base",
                "main",
                "frozen",
                "-w",
                "1",
                "--param",
                "desnity=0.5",
            ),
            "'density'",
        ),  # fmt: skip
        (("merge", "--method", "linear", "mian", "frozen", "-w", "1", "-w", "1"), "'main'"),
        (("show", "frozne"), "'frozen'"),
        (("diff", "main", "dense_smal"), "'dense_small'"),
        (("checkout", "lowrank_atn", "out"), "'lowrank_attn'"),
    ],
)
def test_did_you_mean(ms, args, hint) -> None:
    before = _refs(ms)
    r = ms(*args)
    assert r.code == 1
    assert r.err.count("\n") == 1 and r.err.startswith("error: ")
    assert f"(did you mean {hint}?)" in r.err
    j = ms(*args, "--json")
    assert j.code == 1 and f"(did you mean {hint}?)" in j.json()["error"]
    assert _refs(ms) == before  # nothing moved, nothing added


def test_no_suggestion_for_a_name_far_from_any(ms) -> None:
    r = ms("show", "zzzzqqq")
    assert r.code == 1 and "did you mean" not in r.err


def test_missing_weight_names_the_w_option(ms) -> None:
    r = ms("merge", "--method", "ties", "--base", "main", "frozen", "dense_small")
    assert r.code == 1 and r.err.count("\n") == 1
    assert "missing required parameter 'weight' for model 'frozen'" in r.err
    assert "-w V for each model" in r.err and "--param weight=V" in r.err
    # what the hint says works
    assert ms("merge", "--method", "ties", "--base", "main", "frozen", "dense_small",
              "-w", "1", "-w", "0.5").code == 0  # fmt: skip


def test_repack_n_is_a_dry_run(ms) -> None:
    du = ms("du", "--json").json()
    r = ms("repack", "-n", "--json")
    assert r.code == 0, r.err
    assert r.json()["dry_run"] is True
    assert ms("du", "--json").json() == du  # nothing written
    assert "would re-encode" in ms("repack", "-n").out
    assert ms("repack", "--help").out.count("-n, --dry-run") == 1


# --- waiting for the lock: a second process holds it ------------------------------------------

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX if sys.argv[2] == "ex" else fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _hold(store: Path, mode: str, seconds: float, command: str) -> subprocess.Popen:
    """A process that holds the store's lock file the way `command` would (gc: exclusive, a
    writer: shared), with `command` among its arguments as `mergestore ... command` has."""
    lock = store / "locks" / "gc.lock"
    assert lock.parent.is_dir(), lock
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), mode, str(seconds), command],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_gc_waits_for_a_running_merge_and_says_so(ms, fam_store) -> None:
    holder = _hold(fam_store, "sh", 2.0, "merge")
    try:
        r = ms("gc")
    finally:
        holder.wait(timeout=60)
    assert r.code == 0, r.err
    assert f"waiting for the store lock (held by pid {holder.pid}: merge)" in r.err


def test_a_writer_that_times_out_names_the_holder(ms, fam_store, tiny_family, monkeypatch) -> None:
    monkeypatch.setenv("MERGESTORE_LOCK_TIMEOUT", "0.5")
    before = _refs(ms)
    holder = _hold(fam_store, "ex", 30.0, "gc")
    try:
        r = ms("commit", tiny_family.experts["frozen"], "-b", "again")
        j = ms("commit", tiny_family.experts["frozen"], "-b", "again", "--json")
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert r.code == 1
    assert f"waiting for the store lock (held by pid {holder.pid}: gc)" in r.err
    assert r.err.splitlines()[-1] == (
        f"error: timed out waiting for a running gc (held by pid {holder.pid})"
    )
    assert j.code == 1 and "timed out waiting for a running gc" in j.json()["error"]
    assert _refs(ms) == before
