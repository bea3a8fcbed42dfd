"""kill -9 during commit, gc, merge and repack: at named fault points and at random moments.

A random moment is picked by count, not by time: the run SIGKILLs itself at its N-th Python
function call (any thread; tests/faults/forkserver.py), N drawn (seeded) from 1 to the number
of calls an uninterrupted run makes. So each kill lands wherever the machine's load is, at a
moment that spreads over the whole run like a timer's would, and the same seed kills at the
same calls.

After every kill the store opens, `fsck --full` is clean, every ref holds its old value or its
new one (a complete, correct commit), and every commit that was live before checks out byte for
byte. Each operation is one test over a list of faults; merge and repack run once their CLI
commands exist.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from faultkit import (
    ForkServer,
    Ledger,
    Result,
    fsck_problems,
    has_command,
    lost_commits,
    refs_of,
    tree_digest,
    unreferenced_pack_bytes,
)

from mergestore.api import Store

SEED = 1729
SCALE = int(os.environ.get("MERGESTORE_FAULTS_SCALE", "1"))
RANDOM_KILLS = 12 * SCALE
HEADS = "refs/heads/"

# Named points (MERGESTORE_FAULT=NAME[@N]): see mergestore/store/faults.py and docs/reliability.md
NAMED: dict[str, list[str]] = {
    "commit": [
        "after-append@1",
        "after-append@30",
        "torn-append@12",
        "before-publish",
        "inside-publish",
    ],
    "gc": [
        "gc-after-mark",
        "gc-mid-copy@1",
        "gc-mid-copy@40",
        "torn-append@5",
        "gc-after-copy",
        "gc-inside-index",
        "gc-after-index",
        "gc-mid-unlink",
    ],
    "merge": [
        "in-progress",
        "after-append@1",
        "after-append@8",
        "torn-append@4",
        "before-publish",
        "inside-publish",
    ],
    "repack": [
        "repack-after-append@1",
        "repack-after-append@20",
        "torn-append@4",
        "repack-after-sync",
        "repack-inside-index",
    ],
}


class Lab:
    """One store under fault injection, and everything it must still hold."""

    def __init__(self, op: str, tmp: Path, fs: ForkServer, base: Path, experts: list[Path],
                 ledger: Ledger) -> None:  # fmt: skip
        self.op, self.fs, self.ledger = op, fs, ledger
        self.path, self.scratch = tmp / "store", tmp / "scratch"
        self.scratch.mkdir()
        self.experts = list(experts)
        self.digests: dict[Path, dict[str, str]] = {}
        self.expected: dict[bytes, dict[str, str]] = {}  # live commit -> its files' digests
        self.kills = 0
        self.random_kills = 0
        self.op_calls = 0  # Python calls the last uninterrupted run of the operation made
        # repack re-encodes blocks stored without delta codecs: give it some to work on
        with Store.init(self.path, block_size=4096, delta_codecs=op != "repack"):
            pass
        self.base_id = self.commit(base, "main", base=None)

    def digest(self, src: Path) -> dict[str, str]:
        if src not in self.digests:
            self.digests[src] = tree_digest(src)
        return self.digests[src]

    def fresh_expert(self) -> Path:
        """An expert not committed yet (cycling once the pool is used up: a long run)."""
        src = self.experts.pop(0)
        self.experts.append(src)
        return src

    def cli(self, *args: object, env: dict[str, str] | None = None) -> Result:
        return self.fs.run("--store", self.path, *map(str, args), env=env)

    def must(self, *args: object) -> Result:
        r = self.cli(*args)
        assert r.rc == 0, f"mergestore {' '.join(map(str, args))}: {r.err}"
        return r

    def commit(self, src: Path, branch: str, base: str | None = "main") -> bytes:
        extra = ["--base", base] if base else []
        msg = f"{src.name} on {branch}"
        r = self.must("commit", src, "-m", msg, "-b", branch, *extra, "--json")
        cid = bytes.fromhex(r.json()["commit"])
        self.expected[cid] = self.digest(src)
        return cid

    def run_op(self, args: list[object], fault: tuple[str, object] | None) -> Result:
        """Run the operation under test: uninterrupted (counting its Python calls), or killed."""
        if fault is not None:
            return self.run_fault(args, fault)
        counted = self.scratch / "calls"
        r = self.fs.run("--store", self.path, *map(str, args), count_calls=counted)
        assert r.rc == 0, f"mergestore {' '.join(map(str, args))}: {r.err}"
        self.op_calls = int(counted.read_text())
        return r

    def run_fault(self, args: list[object], fault: tuple[str, object]) -> Result:
        """Run `mergestore ARGS`, killed at a named point or at its N-th Python call."""
        argv = ["--store", self.path, *map(str, args)]
        if fault[0] == "point":
            r = self.fs.run(*argv, env={"MERGESTORE_FAULT": str(fault[1])})
            assert r.rc == 137, f"fault point {fault[1]} was not reached: rc {r.rc} {r.err}"
        else:
            r = self.fs.run(*argv, kill_at_call=int(fault[1]))  # type: ignore[arg-type]
            self.random_kills += r.killed
        assert r.rc == 0 or r.killed, f"unexpected failure (rc {r.rc}): {r.err}"
        if r.killed:
            self.kills += 1
            self.ledger.fault(f"kill {self.op}")
        return r

    def check(self, before: dict[str, bytes], allow: Callable[[str, bytes | None, bytes], bool],
              killed: bool) -> None:  # fmt: skip
        """Old or new value for every ref; fsck clean; every live commit intact."""
        after = refs_of(self.path)
        for name in sorted(set(before) | set(after)):
            old, new = before.get(name), after.get(name)
            if old != new:
                assert new is not None and allow(name, old, new), f"{name}: {old} -> {new}"
        problems = fsck_problems(self.path)
        assert not problems, problems
        lost = lost_commits(self.path, self.expected, self.scratch)
        self.ledger.lose(f"kill {self.op}", len(lost))
        assert not lost, lost
        self.ledger.verified(f"kill {self.op}", len(self.expected))
        if killed:
            self.ledger.ok(f"kill {self.op}")

    def new_commit_ok(self, cid: bytes, parents: tuple[bytes, ...], src: Path) -> bool:
        """A ref moved by a killed run must hold a complete commit of exactly `src`."""
        with Store.open(self.path) as s:
            if s.get_commit(cid).parents != parents:
                return False
            out = self.scratch / "new"
            s.checkout(cid.hex(), out)
        ok = tree_digest(out) == self.digest(src)
        shutil.rmtree(out)
        if ok:
            self.expected[cid] = self.digest(src)
        return ok


# ----- one case per operation ----------------------------------------------------------------


def commit_case(lab: Lab, i: int, fault: tuple[str, object] | None) -> None:
    src = lab.fresh_expert()
    branch = ("main", "side", f"new{i}")[i % 3]
    before = refs_of(lab.path)
    args: list[object] = ["commit", src, "-m", f"k{i}", "-b", branch, "--base", "main", "--json"]
    r = lab.run_op(args, fault)
    ref = HEADS + branch
    old = before.get(ref)

    def allow(name: str, was: bytes | None, now: bytes) -> bool:
        parents = (was,) if was is not None else (before[HEADS + "main"],)
        return name == ref and was == old and lab.new_commit_ok(now, parents, src)

    if r.rc == 0:
        cid = bytes.fromhex(r.json()["commit"])
        assert refs_of(lab.path)[ref] == cid
        lab.expected[cid] = lab.digest(src)
        before = dict(before, **{ref: cid})
    lab.check(before, allow, r.killed)


def gc_case(lab: Lab, i: int, fault: tuple[str, object] | None) -> None:
    # Garbage for gc to find: a commit on a branch that is then deleted, and (sometimes) a
    # branch moved back, so packs have dead entries and get rewritten.
    src = lab.experts[i % len(lab.experts)]
    lab.must("commit", src, "-m", "garbage", "-b", f"tmp{i}", "--base", "main")
    lab.must("branch", "-d", f"tmp{i}")
    before = refs_of(lab.path)
    args: list[object] = ["gc", "--grace", "0", "--repack-threshold", "0.01", "--json"]
    r = lab.run_op(args, fault)
    lab.check(before, lambda *_: False, r.killed)  # gc never moves a ref


def merge_case(lab: Lab, i: int, fault: tuple[str, object] | None) -> None:
    src = lab.fresh_expert()
    lab.commit(src, f"x{i}")
    args: list[object] = ["merge", "--method", "linear", "main", f"x{i}", "-w", "0.5", "-w", "0.5"]
    args += ["-b", f"m{i}", "--json"]
    # The tree an uninterrupted merge makes, from a copy of the store (merges are deterministic).
    copy = lab.scratch / "copy"
    shutil.copytree(lab.path, copy)
    r0 = lab.fs.run("--store", copy, *map(str, args))
    assert r0.rc == 0, f"merge scenario: fix the merge argv in {__file__}: {r0.err}"
    with Store.open(copy) as s:
        want_tree = s.get_commit(f"m{i}").tree
    shutil.rmtree(copy)
    before = refs_of(lab.path)
    r = lab.run_op(args, fault)

    def allow(name: str, was: bytes | None, now: bytes) -> bool:
        if name != f"{HEADS}m{i}" or was is not None:
            return False
        with Store.open(lab.path) as s:
            c = s.get_commit(now)
            return c.tree == want_tree and c.plan is not None

    if r.rc == 0:
        before = refs_of(lab.path)
    lab.check(before, allow, r.killed)
    # keep the merge result in the set of commits that must survive later faults
    new = refs_of(lab.path).get(f"{HEADS}m{i}")
    if new is not None:
        out = lab.scratch / "merged"
        with Store.open(lab.path) as s:
            s.checkout(new.hex(), out)
        lab.expected[new] = tree_digest(out)
        shutil.rmtree(out)


def repack_case(lab: Lab, i: int, fault: tuple[str, object] | None) -> None:
    lab.commit(lab.fresh_expert(), f"r{i}")  # new blocks for every repack to re-encode
    before = refs_of(lab.path)
    args: list[object] = ["repack", "--delta", "--json"]
    r = lab.run_op(args, fault)
    lab.check(before, lambda *_: False, r.killed)


def _setup_gc(lab: Lab) -> None:
    lab.commit(lab.fresh_expert(), "a")
    lab.commit(lab.fresh_expert(), "b")
    lab.commit(lab.fresh_expert(), "main")


CASES: dict[str, Callable[[Lab, int, tuple[str, object] | None], None]] = {
    "commit": commit_case,
    "gc": gc_case,
    "merge": merge_case,
    "repack": repack_case,
}
SETUP: dict[str, Callable[[Lab], None]] = {"gc": _setup_gc}


@pytest.mark.parametrize("op", list(CASES))
def test_kill_at_named_points_and_random_moments(
    op: str, pool, forkserver: ForkServer, ledger: Ledger, tmp_path: Path
) -> None:
    if not has_command(op):
        pytest.skip(f"`mergestore {op}` does not exist yet")
    base, experts = pool
    lab = Lab(op, tmp_path, forkserver, base, experts, ledger)
    SETUP.get(op, lambda _lab: None)(lab)
    case = CASES[op]
    rng = random.Random(f"{SEED}-{op}")
    case(lab, 0, None)  # an uninterrupted run: how many Python calls one makes
    faults: list[tuple[str, object]] = [("point", p) for p in NAMED[op]]
    faults += [("call", rng.randint(1, lab.op_calls)) for _ in range(RANDOM_KILLS)]
    for i, fault in enumerate(faults, start=1):
        case(lab, i, fault)
    assert lab.kills == len(NAMED[op]) + lab.random_kills
    # a later run may make a few calls fewer than the counted one: most kills still land
    assert lab.random_kills >= RANDOM_KILLS * 3 // 4, (
        f"{lab.random_kills} of {RANDOM_KILLS} kills at random calls landed"
    )
    # Whatever the kills left behind, one complete gc reclaims it all and loses nothing.
    lab.must("gc", "--grace", "0", "--repack-threshold", "1e-9")
    assert unreferenced_pack_bytes(lab.path) == 0
    lab.check(refs_of(lab.path), lambda *_: False, killed=False)
