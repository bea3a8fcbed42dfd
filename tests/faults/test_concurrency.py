"""Four writer processes committing and merging at once, with readers checking out meanwhile.

The only error allowed is waiting for a lock (and no wait may time out). Afterwards every
commit any writer reported is present and checks out byte for byte, the contended branch holds
every commit made on it, and every merge equals the same merge run again serially.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from faultkit import ForkServer, Ledger, fsck_problems, lost_commits, tree_digest

from mergestore.api import Store

WRITERS = 4
ROUNDS = int(os.environ.get("MERGESTORE_FAULTS_SCALE", "1"))


def test_four_writers_and_readers(
    forkserver: ForkServer, pool, ledger: Ledger, tmp_path: Path
) -> None:
    base, experts = pool
    path = tmp_path / "store"
    with Store.init(path, block_size=4096):
        pass
    r = forkserver.run("--store", path, "commit", base, "-m", "base", "-b", "main", "--json")
    assert r.rc == 0, r.err
    main_id = bytes.fromhex(r.json()["commit"])
    expected: dict[bytes, dict[str, str]] = {main_id: tree_digest(base)}
    digests = {p: tree_digest(p) for p in experts[: 2 * WRITERS]}
    lock = threading.Lock()
    errors: list[str] = []
    shared: list[bytes] = []
    merges: dict[str, bytes] = {}
    done = threading.Event()
    ops = 0

    def run(*args: object) -> dict:
        nonlocal ops
        res = forkserver.run("--store", path, *map(str, args), "--json")
        with lock:
            ops += 1
            if res.rc != 0:
                errors.append(f"{' '.join(map(str, args))}: rc {res.rc}: {res.err.strip()}")
                return {}
        return res.json()

    def writer(k: int) -> None:
        own, other = experts[k], experts[WRITERS + k]
        for rnd in range(ROUNDS):
            c = run("commit", own, "-m", f"w{k}", "-b", f"w{k}", "--base", "main")
            s = run("commit", other, "-m", f"s{k}.{rnd}", "-b", "shared", "--base", "main")
            m = run("merge", "--method", "linear", "main", f"w{k}", "-w", "0.5", "-w", "0.5",
                    "-b", f"m{k}")  # fmt: skip
            with lock:
                if c:
                    expected[bytes.fromhex(c["commit"])] = digests[own]
                if s:
                    expected[bytes.fromhex(s["commit"])] = digests[other]
                    shared.append(bytes.fromhex(s["commit"]))
                if m:
                    merges[f"m{k}"] = bytes.fromhex(m["commit"])

    reads = 0

    def reader(j: int) -> None:
        nonlocal reads
        n = 0
        while not done.is_set():
            with lock:
                known = list(expected.items())
            cid, digest = known[n % len(known)]
            out = tmp_path / f"read{j}-{n}"
            res = forkserver.run("--store", path, "checkout", cid.hex(), out)
            with lock:
                reads += 1
                if res.rc != 0:
                    errors.append(f"checkout {cid.hex()[:12]}: {res.err.strip()}")
                elif tree_digest(out) != digest:
                    errors.append(f"checkout {cid.hex()[:12]}: different bytes")
            shutil.rmtree(out, ignore_errors=True)
            n += 1

    writers = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
    readers = [threading.Thread(target=reader, args=(j,)) for j in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    ledger.tried("concurrent writer/reader commands", ops + reads)
    assert not errors, errors
    assert reads >= 2 and len(merges) == WRITERS
    # every commit present, byte for byte
    lost = lost_commits(path, expected, tmp_path)
    ledger.lose("concurrency", len(lost))
    assert not lost, lost
    ledger.verified("concurrency", len(expected))
    assert not fsck_problems(path)
    with Store.open(path) as s:
        # the contended branch: each commit on it has the previous tip as its parent
        chain = [e.id for e in s.log("shared")]
        assert set(shared) <= set(chain) and len(chain) == len(shared) + 1  # + main
        for name, cid in merges.items():
            assert s.resolve(name) == cid
            # the same merge again, alone: the same tree (content-addressed: same bytes)
            c = s.get_commit(cid)
            w = f"w{name[1:]}"
            assert c.parents == (main_id, s.resolve(w))
            again = s.merge(method="linear", models=["main", w], weights=[0.5, 0.5],
                            branch=f"again-{name}")  # fmt: skip
            assert s.get_commit(again.commit).tree == c.tree
