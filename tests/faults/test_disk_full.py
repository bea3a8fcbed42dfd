"""A full disk (ENOSPC) during a pack write: one clear error, and the store exactly as it was.

The error is injected (MERGESTORE_FAULT=enospc@N writes half of the N-th pack entry, then
raises ENOSPC, as a real full disk does); the failed command gives its partial bytes back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import (
    ForkServer,
    Ledger,
    assert_clean_error,
    dir_digest,
    fsck_problems,
    lost_commits,
    tree_digest,
)

from mergestore.api import Store
from mergestore.store.packs import PACK_MAGIC


def same_store(before: dict[str, str], path: Path) -> None:
    """Unchanged, but for empty packs (a pack id is never reused, so one may stay, empty)."""
    after = dir_digest(path)
    for name in set(after) - set(before):
        assert name.startswith("packs/pack-"), name
        assert (path / name).read_bytes() == PACK_MAGIC, f"{name} kept bytes"
    assert {k: v for k, v in after.items() if k in before} == before


@pytest.fixture
def filled(tmp_path: Path, forkserver: ForkServer, pool):
    base, experts = pool
    path = tmp_path / "store"
    with Store.init(path, block_size=4096, delta_codecs=False):  # repack gets work to do
        pass
    expected = {}
    for src, branch in ((base, "main"), (experts[11], "x"), (experts[12], "gone")):
        extra = ["--base", "main"] if branch != "main" else []
        r = forkserver.run("--store", path, "commit", src, "-m", branch, "-b", branch,
                           *extra, "--json")  # fmt: skip
        assert r.rc == 0, r.err
        expected[bytes.fromhex(r.json()["commit"])] = tree_digest(src)
    gone = bytes.fromhex(forkserver.run("--store", path, "branch", "-d", "gone", "--json")
                         .json()["was"])  # fmt: skip
    del expected[gone]
    return path, expected


CASES = {
    "commit": (["commit", "{e13}", "-m", "new", "-b", "x", "--base", "main"], [1, 7]),
    "merge": (["merge", "--method", "linear", "main", "x", "-w", "0.5", "-w", "0.5"], [1, 5]),
    "gc": (["gc", "--grace", "0", "--repack-threshold", "1e-9"], [1, 9]),
    "repack": (["repack", "--delta"], [1, 9]),
}


@pytest.mark.parametrize("op", list(CASES))
def test_enospc_during_pack_write(
    op: str, filled, forkserver: ForkServer, pool, ledger: Ledger, tmp_path: Path
) -> None:
    path, expected = filled
    args, points = CASES[op]
    args = [str(pool[1][13]) if a == "{e13}" else a for a in args]
    for n in points:
        before = dir_digest(path)
        r = forkserver.run("--store", path, *args, env={"MERGESTORE_FAULT": f"enospc@{n}"})
        ledger.fault(f"ENOSPC {op}")
        assert_clean_error(r, contains="no space left on device")
        same_store(before, path)
        assert not fsck_problems(path)
        assert not lost_commits(path, expected, tmp_path)
        ledger.ok(f"ENOSPC {op}")
        ledger.verified(f"ENOSPC {op}", len(expected))
    # with space again, the same command succeeds
    r = forkserver.run("--store", path, *args)
    assert r.rc == 0, r.err
    assert not fsck_problems(path)
    assert not lost_commits(path, expected, tmp_path)
