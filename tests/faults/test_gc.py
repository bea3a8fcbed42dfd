"""gc end to end through the CLI: dry run, grace, reflog recovery, pack rewrite, concurrency.

Every check compares against facts computed here (file digests of the source checkpoints, pack
sizes on disk), never against figures gc itself reports, except where the dry run's prediction
is compared with the real run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from faultkit import (
    ForkServer,
    Ledger,
    Result,
    dir_digest,
    fsck_problems,
    lost_commits,
    refs_of,
    tree_digest,
    unreferenced_pack_bytes,
)

from mergestore.api import Store
from mergestore.store.gc import collect_garbage
from mergestore.store.packs import list_pack_ids, pack_path


class Bench:
    """A store driven through the fork server, and what it must hold."""

    def __init__(self, tmp: Path, fs: ForkServer, pool: tuple[Path, list[Path]]) -> None:
        self.path, self.fs, self.tmp = tmp / "store", fs, tmp
        self.base, self.experts = pool
        self.expected: dict[bytes, dict[str, str]] = {}
        with Store.init(self.path, block_size=4096):
            pass

    def cli(self, *args: object, env: dict[str, str] | None = None) -> Result:
        return self.fs.run("--store", self.path, *map(str, args), env=env)

    def must(self, *args: object) -> Result:
        r = self.cli(*args)
        assert r.rc == 0, f"mergestore {' '.join(map(str, args))}: {r.err}"
        return r

    def commit(self, src: Path, branch: str, *extra: str) -> bytes:
        r = self.must("commit", src, "-m", src.name, "-b", branch, *extra, "--json")
        cid = bytes.fromhex(r.json()["commit"])
        self.expected[cid] = tree_digest(src)
        return cid

    def pack_bytes(self) -> int:
        d = self.path / "packs"
        return sum(pack_path(d, p).stat().st_size for p in list_pack_ids(d))

    def intact(self, expected: dict[bytes, dict[str, str]] | None = None) -> None:
        assert not fsck_problems(self.path)
        scratch = self.tmp / "scratch"
        scratch.mkdir(exist_ok=True)
        assert not lost_commits(self.path, expected or self.expected, scratch)


@pytest.fixture
def bench(tmp_path: Path, forkserver: ForkServer, pool) -> Bench:
    return Bench(tmp_path, forkserver, pool)


def test_dry_run_predicts_and_changes_nothing(bench: Bench, ledger: Ledger) -> None:
    bench.commit(bench.base, "main")
    bench.commit(bench.experts[0], "keep", "--base", "main")
    gone = bench.commit(bench.experts[1], "tmp", "--base", "main")
    bench.must("branch", "-d", "tmp")
    live = {c: d for c, d in bench.expected.items() if c != gone}
    before = dir_digest(bench.path)
    dry = bench.must("gc", "--dry-run", "--grace", "0", "--json").json()
    assert dir_digest(bench.path) == before, "a dry run wrote to the store"
    assert dry["dry_run"] and dry["commits_removed"] == 1 and dry["bytes_reclaimed"] > 0
    size_before = bench.pack_bytes()
    real = bench.must("gc", "--grace", "0", "--json").json()
    for key in ("commits_removed", "objects_removed", "blocks_removed", "pack_bytes_after"):
        assert real[key] == dry[key], key
    # reclaimed by rewriting packs: the files on disk really shrank, by what was reported
    assert bench.pack_bytes() == size_before - real["bytes_reclaimed"] < size_before
    assert bench.cli("show", gone.hex()).rc != 0
    bench.intact(live)
    ledger.verified("gc", len(live))


def test_deleted_branch_recovered_within_grace_then_gone_after_grace_0(
    bench: Bench, ledger: Ledger, tmp_path: Path
) -> None:
    bench.commit(bench.base, "main")
    cid = bench.commit(bench.experts[2], "exp", "--base", "main")
    moved = bench.commit(bench.experts[3], "exp", "--base", "main")  # moves exp past cid
    bench.must("branch", "-d", "exp")
    # the reflog shows both moves and the deletion, oldest first
    log = bench.must("reflog", "exp", "--json").json()["entries"]
    assert [(e["old"], e["new"]) for e in log] == [
        (None, cid.hex()),
        (cid.hex(), moved.hex()),
        (moved.hex(), None),
    ]
    text = bench.must("reflog", "exp").out
    assert moved.hex()[:10] in text and "deleted" in text
    # a default gc (grace 14 days) keeps both, so the branch comes back by id
    rep = bench.must("gc", "--json").json()
    assert rep["commits_removed"] == 0
    bench.must("branch", "exp", moved.hex()[:12])
    bench.must("branch", "old-exp", cid.hex())
    assert refs_of(bench.path)["refs/heads/exp"] == moved
    bench.intact()
    # delete again; a gc whose grace has passed (simulated clock, 1 h grace) removes both
    bench.must("branch", "-d", "exp")
    bench.must("branch", "-d", "old-exp")
    with Store.open(bench.path) as s:
        kept = collect_garbage(s.repo, grace=3600)  # entries are seconds old: still kept
        assert kept.commits_removed == 0
        later = collect_garbage(s.repo, grace=3600, now=time.time() + 7200)
        assert later.commits_removed == 2 and later.reflog_expired >= 3
    r = bench.cli("branch", "exp", moved.hex())
    assert r.rc == 1 and r.err.startswith("error: ") and "unknown ref" in r.err, r.err
    live = {c: d for c, d in bench.expected.items() if c not in (cid, moved)}
    bench.intact(live)
    ledger.verified("gc", len(live))


def test_grace_0_removes_what_no_ref_reaches(bench: Bench) -> None:
    bench.commit(bench.base, "main")
    cid = bench.commit(bench.experts[4], "x", "--base", "main")
    bench.must("branch", "-d", "x")
    rep = bench.must("gc", "--grace", "0", "--repack-threshold", "1e-9", "--json").json()
    assert rep["commits_removed"] == 1 and rep["blocks_removed"] > 0
    assert unreferenced_pack_bytes(bench.path) == 0
    assert bench.cli("branch", "x", cid.hex()).rc == 1
    # the branch and its reflog are gone: `reflog x` names no ref any more (an error, as git)
    r = bench.cli("reflog", "x", "--json")
    assert r.rc == 1 and "no reflog" in r.err and cid.hex() not in r.out
    bench.intact({c: d for c, d in bench.expected.items() if c != cid})


def test_bad_grace_is_a_clear_error(bench: Bench) -> None:
    r = bench.cli("gc", "--grace", "soon")
    assert r.rc == 1 and r.err.strip().startswith("error: not a duration"), r.err


def _pause(bench: Bench, name: str) -> tuple[dict[str, str], Path]:
    sync = bench.tmp / f"sync-{name.replace(':', '-').replace('@', '-')}"
    sync.mkdir()
    return {"MERGESTORE_FAULT": f"pause:{name}", "MERGESTORE_FAULT_SYNC": str(sync)}, sync


def _wait_reached(sync: Path, run) -> None:
    deadline = time.monotonic() + 60
    while not (sync / "reached").exists():
        assert time.monotonic() < deadline, "the paused command never reached its point"
        time.sleep(0.02)


def test_gc_waits_for_a_commit_in_flight(bench: Bench, ledger: Ledger) -> None:
    """A commit stopped midway (blocks appended, nothing published) holds gc off."""
    bench.commit(bench.base, "main")
    src = bench.experts[5]
    env, sync = _pause(bench, "after-append@3")
    run = bench.fs.start("--store", bench.path, "commit", src, "-m", "slow", "-b", "slow",
                         "--base", "main", "--json", env=env)  # fmt: skip
    _wait_reached(sync, run)
    ledger.fault("gc during commit")
    # gc cannot start while the commit is in flight: with a short lock wait it says so
    r = bench.cli("gc", "--grace", "0", env={"MERGESTORE_LOCK_TIMEOUT": "0.3"})
    assert r.rc == 1 and "waiting for running writers" in r.err, r.err
    # a patient gc waits, then runs once the commit has published
    gc_run = bench.fs.start("--store", bench.path, "gc", "--grace", "0", "--json")
    (sync / "go").touch()
    done = run.wait()
    assert done.rc == 0, done.err
    cid = bytes.fromhex(done.json()["commit"])
    bench.expected[cid] = tree_digest(src)
    g = gc_run.wait()
    assert g.rc == 0, g.err
    assert refs_of(bench.path)["refs/heads/slow"] == cid
    bench.intact()
    ledger.ok("gc during commit")
    ledger.verified("gc during commit", len(bench.expected))


def test_gc_waits_for_a_merge_in_flight(bench: Bench, ledger: Ledger) -> None:
    bench.commit(bench.base, "main")
    bench.commit(bench.experts[6], "e6", "--base", "main")
    env, sync = _pause(bench, "after-append@2")
    args = ["merge", "--method", "linear", "main", "e6", "-w", "0.5", "-w", "0.5", "-b", "m"]
    run = bench.fs.start("--store", bench.path, *args, "--json", env=env)
    _wait_reached(sync, run)
    ledger.fault("gc during merge")
    gc_run = bench.fs.start("--store", bench.path, "gc", "--grace", "0", "--json")
    (sync / "go").touch()
    assert run.wait().rc == 0
    assert gc_run.wait().rc == 0
    with Store.open(bench.path) as s:
        assert s.replay("m")["identical"]
    bench.intact()
    ledger.ok("gc during merge")


def test_commit_waits_for_gc(bench: Bench, ledger: Ledger) -> None:
    """gc stopped after marking holds writers off; a short lock wait is a clear error."""
    bench.commit(bench.base, "main")
    gone = bench.commit(bench.experts[7], "x", "--base", "main")
    bench.must("branch", "-d", "x")
    del bench.expected[gone]
    before = dir_digest(bench.path)
    env, sync = _pause(bench, "gc-after-mark")
    gc_run = bench.fs.start("--store", bench.path, "gc", "--grace", "0", env=env)
    _wait_reached(sync, gc_run)
    ledger.fault("commit during gc")
    r = bench.cli("commit", bench.experts[8], "-m", "m", "-b", "y",
                  env={"MERGESTORE_LOCK_TIMEOUT": "0.3"})  # fmt: skip
    # it says whom it waits for (the pid in the kernel's lock table), then gives up in one line
    waiting, error = r.err.strip().splitlines()
    assert r.rc == 1 and waiting.startswith(
        f"waiting for the store lock (held by pid {gc_run.pid}: "
    ), r.err
    assert error == f"error: timed out waiting for a running gc (held by pid {gc_run.pid})"
    assert dir_digest(bench.path) == before
    (sync / "go").touch()
    assert gc_run.wait().rc == 0
    bench.commit(bench.experts[8], "y", "--base", "main")
    bench.intact()
    ledger.ok("commit during gc")


def test_merge_of_a_path_input_holds_gc_off_throughout(bench: Bench, ledger: Ledger) -> None:
    """A merge stores path inputs as detached commits first: gc --grace 0 must not take them
    between that and publishing the merge (the in-progress marker spans both)."""
    bench.commit(bench.base, "main")
    env, sync = _pause(bench, "in-progress")
    args = ["merge", "--method", "linear", "main", bench.experts[13], "-w", "0.5", "-w", "0.5"]
    run = bench.fs.start("--store", bench.path, *args, "-b", "pm", "--json", env=env)
    _wait_reached(sync, run)
    ledger.fault("gc during merge of a path")
    r = bench.cli("gc", "--grace", "0", env={"MERGESTORE_LOCK_TIMEOUT": "0.3"})
    assert r.rc == 1 and "waiting for running writers" in r.err, r.err
    gc_run = bench.fs.start("--store", bench.path, "gc", "--grace", "0", "--json")
    (sync / "go").touch()
    assert run.wait().rc == 0
    assert gc_run.wait().rc == 0
    with Store.open(bench.path) as s:
        path_input = s.get_commit("pm").parents[1]
        assert s.replay("pm")["identical"]
    assert bench.cli("show", path_input.hex()).rc == 0
    bench.intact()
    ledger.ok("gc during merge of a path")


def test_gc_and_repack_in_flight(tmp_path: Path, forkserver: ForkServer, pool, ledger: Ledger):
    """repack stopped with its fresh packs written; a gc --grace 0 queued behind it. Whichever
    wins when repack turns its lock exclusive, nothing is lost and the store stays clean."""
    bench = Bench(tmp_path, forkserver, pool)
    shutil.rmtree(bench.path)
    with Store.init(bench.path, block_size=4096, delta_codecs=False):
        pass
    bench.commit(bench.base, "main")
    bench.commit(bench.experts[14], "e", "--base", "main")
    bench.commit(bench.experts[15], "gone", "--base", "main")
    bench.must("branch", "-d", "gone")
    bench.expected = {c: d for c, d in bench.expected.items() if c != refs_of_gone(bench)}
    env, sync = _pause(bench, "repack-after-sync")
    run = bench.fs.start("--store", bench.path, "repack", "--delta", "--json", env=env)
    _wait_reached(sync, run)
    ledger.fault("gc during repack")
    gc_run = bench.fs.start("--store", bench.path, "gc", "--grace", "0", "--json")
    (sync / "go").touch()
    r, g = run.wait(), gc_run.wait()
    assert g.rc == 0, g.err
    assert r.rc == 0 or "run repack again" in r.err, r.err
    bench.intact()
    bench.must("gc", "--grace", "0", "--repack-threshold", "1e-9")
    assert unreferenced_pack_bytes(bench.path) == 0
    bench.intact()
    ledger.ok("gc during repack")
    ledger.verified("gc during repack", len(bench.expected))


def refs_of_gone(bench: Bench) -> bytes:
    """The commit the deleted branch `gone` pointed at (its reflog's last old value)."""
    log = bench.must("reflog", "gone", "--json").json()["entries"]
    return bytes.fromhex(log[-1]["old"])
