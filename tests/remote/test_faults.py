"""Faults: kill -9 push/fetch/clone anywhere, a server that stops mid-transfer, racing pushers.

Each command runs as its own process; MERGESTORE_FAULT kills it at a named point (exit 137,
like kill -9) or pauses it there (pause:POINT) while the test acts.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from seaweed import BUCKET, server_or_fail

from mergestore.api import Store
from mergestore.fsck import fsck
from mergestore.remote.client import ObjectClient
from mergestore.remote.url import parse_url

PUSH_POINTS = ["remote-pack-entry", "remote-after-pack", "remote-before-refs"]
FETCH_POINTS = ["remote-after-chunk", "remote-before-publish"]
SMALL = {"MERGESTORE_REMOTE_PACK_BYTES": "24576", "MERGESTORE_REMOTE_FETCH_BYTES": "16384"}


def run(*args: object, fault: str | None = None, sync: Path | None = None, **popen):
    env = {**os.environ, "MERGESTORE_PROGRESS": "0", **SMALL}
    env.pop("MERGESTORE_FAULT", None)
    if fault:
        env["MERGESTORE_FAULT"] = fault
    if sync:
        env["MERGESTORE_FAULT_SYNC"] = str(sync)
    cmd = [sys.executable, "-m", "mergestore.cli.main", *map(str, args)]
    if popen.pop("background", False):
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def wait_reached(sync: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (sync / "reached").exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before the pause: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "the paused point was never reached"
        time.sleep(0.05)


def _source(tmp_path: Path, family, url: str) -> Path:
    s = Store.init(tmp_path / "src", block_size=4096)
    s.commit(family.base, message="base")
    s.commit(family.experts["dense_small"], message="ds", branch="ds", base="main")
    s.commit(family.experts["lowrank_attn"], message="la", branch="la", base="main")
    s.add_remote("origin", url)
    path = s.path
    s.close()
    return path


def _total_stored(path: Path) -> int:
    s = Store.open(path)
    try:
        return sum(loc.length for _b, loc in s.repo.iter_blocks())
    finally:
        s.close()


def _remote_refs(url: str) -> list[str]:
    return [k for k, _ in ObjectClient(parse_url(url)).list("refs/")]


def _check_complete(tmp_path: Path, url: str, name: str, family) -> None:
    """A full clone of the remote is whole: fsck --full passes, checkout gives the files."""
    c = Store.clone(url, tmp_path / name)
    try:
        assert fsck(c.repo, full=True).ok
        c.checkout("origin/ds", tmp_path / f"{name}-out")
        for f in Path(family.experts["dense_small"]).iterdir():
            assert (tmp_path / f"{name}-out" / f.name).read_bytes() == f.read_bytes()
    finally:
        c.close()


def _random_point(seed: int, points: list[str]) -> str:
    rnd = random.Random(seed)
    return f"{rnd.choice(points)}@{rnd.randint(1, 3)}"


@pytest.mark.parametrize(
    "point",
    [
        "remote-pack-entry@3",
        "remote-after-pack@1",
        "remote-after-pack@2",
        "remote-before-refs@1",
        *(_random_point(seed, PUSH_POINTS) for seed in range(3)),
    ],
)
def test_killed_push_resumes_without_resending_finished_packs(
    tmp_path, tiny_family, remote_url, point
):
    src = _source(tmp_path, tiny_family, remote_url)
    total = _total_stored(src)
    r = run("--store", src, "push", "origin", "main", "ds", "la", fault=point)
    if r.returncode == 0:  # the random point was never reached: nothing to resume
        return
    assert r.returncode == 137, r.stderr
    assert _remote_refs(remote_url) == []  # no ref names data that is not all there
    r = run("--store", src, "push", "origin", "main", "ds", "la", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and {x["status"] for x in res["refs"]} == {"ok"}
    if point.startswith("remote-after-pack"):
        assert 0 < res["block_bytes"] < total  # finished packs were not sent again
    elif point.startswith("remote-before-refs"):
        assert res["block_bytes"] == 0
    _check_complete(tmp_path, remote_url, "check", tiny_family)


@pytest.mark.parametrize(
    "point",
    [
        "remote-after-chunk@1",
        "remote-after-chunk@3",
        "remote-before-publish@1",
        *(_random_point(seed, FETCH_POINTS) for seed in range(3, 5)),
    ],
)
def test_killed_clone_and_fetch_resume(tmp_path, tiny_family, remote_url, point):
    src = _source(tmp_path, tiny_family, remote_url)
    assert run("--store", src, "push", "origin", "main", "ds", "la").returncode == 0
    total = _total_stored(src)
    dst = tmp_path / "dst"
    r = run("clone", remote_url, dst, fault=point)
    if r.returncode != 0:
        assert r.returncode == 137, r.stderr
        s = Store.open(dst)
        try:
            assert s.branches() == {} and fsck(s.repo).ok  # nothing half-visible
        finally:
            s.close()
        r = run("clone", remote_url, dst, "--json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)["block_bytes"]
        if point.startswith("remote-after-chunk"):
            assert got < total
    s = Store.open(dst)
    try:
        assert fsck(s.repo, full=True).ok
        assert s.resolve("origin/la") == Store.open(src).resolve("la")
    finally:
        s.close()


def test_server_stopped_mid_push_and_mid_fetch(tmp_path, tiny_family, s3_env, monkeypatch):
    server = server_or_fail(tmp_path / "sw")
    monkeypatch.setenv("MERGESTORE_REMOTE_RETRY_TIMEOUT", "2")
    try:
        url = f"s3://{BUCKET}/stop?endpoint={server.endpoint}"
        src = _source(tmp_path, tiny_family, url)
        total = _total_stored(src)
        refs_before = Store.open(src).repo.raw_refs()
        sync = tmp_path / "sync"
        sync.mkdir()
        p = run("--store", src, "push", "origin", "main", "ds", "la",
                fault="pause:remote-after-pack@1", sync=sync, background=True)  # fmt: skip
        wait_reached(sync, p)
        server.stop()
        (sync / "go").touch()
        out, err = p.communicate(timeout=300)
        assert p.returncode == 1, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: remote origin:"), err
        s = Store.open(src)
        try:
            assert s.repo.raw_refs() == refs_before  # the local store is unchanged
        finally:
            s.close()
        server = server.restart()
        monkeypatch.setenv("MERGESTORE_REMOTE_RETRY_TIMEOUT", "30")
        r = run("--store", src, "push", "origin", "main", "ds", "la", "--json")
        assert r.returncode == 0, r.stderr
        assert 0 < json.loads(r.stdout)["block_bytes"] < total

        # Fetch: a clone made lazily, then a full fetch stopped after its first chunk.
        dst = tmp_path / "dst"
        assert run("clone", url, dst).returncode == 0
        s = Store.open(src)
        s.commit(tiny_family.experts["frozen"], message="fz", branch="fz", base="main")
        s.close()
        assert run("--store", src, "push", "origin", "fz").returncode == 0
        before = Store.open(dst).repo.raw_refs()
        for f in sync.iterdir():
            f.unlink()
        monkeypatch.setenv("MERGESTORE_REMOTE_RETRY_TIMEOUT", "2")
        p = run("--store", dst, "fetch", "origin",
                fault="pause:remote-after-chunk@1", sync=sync, background=True)  # fmt: skip
        wait_reached(sync, p)
        server.stop()
        (sync / "go").touch()
        out, err = p.communicate(timeout=300)
        if p.returncode != 0:  # it may have had nothing left to read after the pause
            assert p.returncode == 1, err
            assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
            assert Store.open(dst).repo.raw_refs() == before
        server = server.restart()
        monkeypatch.setenv("MERGESTORE_REMOTE_RETRY_TIMEOUT", "30")
        r = run("--store", dst, "fetch", "origin", "--json")
        assert r.returncode == 0, r.stderr
        s = Store.open(dst)
        try:
            assert "refs/remotes/origin/fz" in s.repo.list_refs("refs/remotes/")
            assert fsck(s.repo, full=True).ok
        finally:
            s.close()
    finally:
        server.stop()


def test_racing_pushes(tmp_path, tiny_family, remote_url):
    """Different branches at once: both land. The same branch: one wins, the other is refused
    and loses nothing."""
    a = _source(tmp_path, tiny_family, remote_url)
    assert run("--store", a, "push", "origin", "main").returncode == 0
    b = tmp_path / "b"
    assert run("clone", remote_url, b).returncode == 0
    sb = Store.open(b)
    sb.commit(tiny_family.experts["frozen"], message="b-main", base="main")
    sb.create_branch("fz")
    sb.close()
    sync = tmp_path / "sync"
    sync.mkdir()

    # different branches: A stops just before its ref write while B pushes its own branch
    p = run("--store", a, "push", "origin", "ds", fault="pause:remote-before-refs@1",
            sync=sync, background=True)  # fmt: skip
    wait_reached(sync, p)
    assert run("--store", b, "push", "origin", "fz").returncode == 0
    (sync / "go").touch()
    _out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert {"refs/heads/ds", "refs/heads/fz"} <= set(_remote_refs(remote_url))

    # the same branch: A (a fast-forward when it started) loses the race to B
    sa = Store.open(a)
    sa.commit(tiny_family.experts["lowrank_attn"], message="a-main", base="main")
    sa.close()
    for f in sync.iterdir():
        f.unlink()
    p = run("--store", a, "push", "origin", "main", fault="pause:remote-before-refs@1",
            sync=sync, background=True)  # fmt: skip
    wait_reached(sync, p)
    assert run("--store", b, "push", "origin", "main").returncode == 0
    (sync / "go").touch()
    _out, err = p.communicate(timeout=300)
    assert p.returncode == 1
    assert err.strip() == "rejected: origin/main moved; fetch first"
    # Nothing lost: B's commit is on the remote, A's commit is still A's, and after a fetch
    # A sees B's commit.
    check = Store.clone(remote_url, tmp_path / "check")
    try:
        assert check.get_commit("main").message == "b-main"
    finally:
        check.close()
    assert run("--store", a, "fetch", "origin").returncode == 0
    sa = Store.open(a)
    try:
        assert sa.get_commit("main").message == "a-main"
        assert sa.get_commit("origin/main").message == "b-main"
    finally:
        sa.close()
