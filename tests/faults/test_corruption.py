"""Damaged stores: a flipped pack byte, a truncated pack, corrupted LMDB values.

Each is detected by `mergestore fsck` (`--full` where only a hash can tell) and reported with the
commits it affects. "Affected" is checked independently of fsck: every commit fsck names fails to
check out, and every commit it does not name checks out byte for byte.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest
from faultkit import ForkServer, Ledger, tree_digest

from mergestore.api import Store
from mergestore.store.objects import BlobFile, TensorFile

Digests = dict[bytes, dict[str, str]]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, forkserver: ForkServer, pool):
    """main (base), a and b (experts on main) and m (their linear merge); and their files."""
    root = tmp_path_factory.mktemp("corrupt")
    path = root / "store"
    base, experts = pool
    with Store.init(path, block_size=4096):
        pass
    expected: Digests = {}

    def run(*args: object) -> dict:
        r = forkserver.run("--store", path, *map(str, args), "--json")
        assert r.rc == 0, r.err
        return r.json()

    for src, branch, extra in ((base, "main", []), (experts[9], "a", ["--base", "main"]),
                               (experts[10], "b", ["--base", "main"])):  # fmt: skip
        cid = run("commit", src, "-m", branch, "-b", branch, *extra)["commit"]
        expected[bytes.fromhex(cid)] = tree_digest(src)
    run("merge", "--method", "linear", "a", "b", "-w", "0.5", "-w", "0.5", "-b", "m")
    with Store.open(path) as s:
        m = s.resolve("m")
        s.checkout("m", root / "m")
    expected[m] = tree_digest(root / "m")
    return path, expected


def commit_blocks(store: Store, cid: bytes) -> set[bytes]:
    """Every block a checkout of `cid` reads, delta references included."""
    out: set[bytes] = set()
    for entry in store.repo.get_tree(store.get_commit(cid).tree).entries:
        f = store.repo.get_file(entry.object)
        if isinstance(f, BlobFile):
            out.update(f.blocks)
        else:
            assert isinstance(f, TensorFile)
            out.update(store.repo.get_file(f.header).blocks)
            for t in f.tensors:
                out.update(t.blocks)
    refs = {store.repo.block_location(b).ref for b in out}
    return out | {r for r in refs if r is not None}


@pytest.fixture
def damaged(pristine, tmp_path: Path):
    path, expected = pristine
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    with Store.open(copy) as s:
        uses = {cid: commit_blocks(s, cid) for cid in expected}
        locs = dict(s.repo.iter_blocks())
    return copy, expected, uses, locs


def fsck_json(fs: ForkServer, path: Path, *extra: str) -> tuple[int, dict]:
    r = fs.run("--store", path, "fsck", *extra, "--json")
    assert r.rc in (0, 1), r.err
    rep = json.loads(r.out)
    assert rep["ok"] is (r.rc == 0)
    return r.rc, rep


def check_affected(
    fs: ForkServer, path: Path, expected: Digests, named: set[bytes], tmp: Path,
    fails: set[bytes] | None = None,
) -> None:  # fmt: skip
    """`fails` (default: the named commits) fail to check out with a one-line error; the
    commits fsck did not name come back byte for byte."""
    fails = named if fails is None else fails
    for cid, digest in expected.items():
        out = tmp / f"co-{cid.hex()[:8]}"
        r = fs.run("--store", path, "checkout", cid.hex(), out)
        if cid in fails:
            assert r.rc == 1 and r.err.startswith("error: ") and "Traceback" not in r.err, r.err
        elif cid not in named:
            assert r.rc == 0, f"{cid.hex()[:12]} was not named by fsck but fails: {r.err}"
            assert tree_digest(out) == digest
        shutil.rmtree(out, ignore_errors=True)


def named_commits(rep: dict) -> set[bytes]:
    return {bytes.fromhex(c) for c in rep["affected_commits"]}


def test_flipped_pack_byte(damaged, forkserver: ForkServer, ledger: Ledger, tmp_path: Path):
    path, expected, uses, locs = damaged
    # the longest block only expert a uses, and the longest base block a delta of a refers to
    used = set().union(*uses.values())
    by_len = sorted(locs, key=lambda b: -locs[b].length)
    refs_of_a = {locs[b].ref for b in uses[_cid(path, "a")] if locs[b].ref is not None}
    users = {b: {c for c, u in uses.items() if b in u} for b in used}
    only_a = next(b for b in by_len if users.get(b) == {_cid(path, "a")} and b not in refs_of_a)
    targets = [only_a]
    if refs_of_a:
        targets.append(max(refs_of_a, key=lambda b: locs[b].length))
    for bid in targets:
        case = tmp_path / f"flip-{bid.hex()[:8]}"
        shutil.copytree(path, case)
        loc = locs[bid]
        pack = case / "packs" / f"pack-{loc.pack:06d}.pack"
        with open(pack, "r+b") as f:
            f.seek(loc.offset + loc.length // 2)
            byte = f.read(1)
            f.seek(loc.offset + loc.length // 2)
            f.write(bytes([byte[0] ^ 0x10]))
        ledger.fault("corruption: flipped pack byte")
        rc, rep = fsck_json(forkserver, case, "--full")
        assert rc == 1
        want = {c for c, u in uses.items() if bid in u}
        assert named_commits(rep) == want
        assert any(bid.hex()[:12] in p["message"] for p in rep["problems"])
        check_affected(forkserver, case, expected, want, tmp_path)
        text = forkserver.run("--store", case, "fsck", "--full")
        assert text.rc == 1 and all(c.hex()[:12] in text.out for c in want), text.out
        ledger.ok("corruption: flipped pack byte")


def _cid(path: Path, ref: str) -> bytes:
    with Store.open(path) as s:
        return s.resolve(ref)


def test_truncated_pack(damaged, forkserver: ForkServer, ledger: Ledger, tmp_path: Path):
    path, expected, uses, locs = damaged
    b = _cid(path, "b")
    # cut the pack holding b's last-written block in the middle of that block
    bid = max(uses[b] - set().union(*[u for c, u in uses.items() if c != b]),
              key=lambda x: (locs[x].pack, locs[x].offset))  # fmt: skip
    loc = locs[bid]
    cut = loc.offset + loc.length // 2
    with open(path / "packs" / f"pack-{loc.pack:06d}.pack", "r+b") as f:
        f.truncate(cut)
    ledger.fault("corruption: truncated pack")
    rc, rep = fsck_json(forkserver, path)  # bounds are checked without --full
    assert rc == 1
    gone = {x for x, lo in locs.items() if lo.pack == loc.pack and lo.offset + lo.length > cut}
    gone |= {x for x, lo in locs.items() if lo.ref in gone}
    want = {c for c, u in uses.items() if u & gone}
    assert b in want and named_commits(rep) == want
    assert any("beyond the end" in p["message"] for p in rep["problems"])
    check_affected(forkserver, path, expected, want, tmp_path)
    ledger.ok("corruption: truncated pack")


def _edit_lmdb(store_path: Path, db: str, key: bytes, edit) -> None:
    env = lmdb.open(str(store_path / "index"), max_dbs=16, subdir=True)
    try:
        handle = env.open_db(db.encode())
        with env.begin(write=True) as txn:
            old = txn.get(key, db=handle)
            assert old is not None, (db, key)
            txn.put(key, edit(bytes(old)), db=handle)
    finally:
        env.close()


def _flip_middle(v: bytes) -> bytes:
    i = len(v) // 2
    return v[:i] + bytes([v[i] ^ 0x01]) + v[i + 1 :]


@pytest.mark.parametrize("what", ["block entry", "tree object", "commit object", "ref", "reflog"])
def test_corrupted_lmdb_value(
    what: str, damaged, forkserver: ForkServer, ledger: Ledger, tmp_path: Path
) -> None:
    path, expected, uses, locs = damaged
    a, m = _cid(path, "a"), _cid(path, "m")
    with Store.open(path) as s:
        tree_a = s.get_commit(a).tree
    if what == "block entry":
        bid = max(uses[a] - uses[m] - uses[_cid(path, "main")], key=lambda x: locs[x].length)
        _edit_lmdb(path, "blocks", bid, lambda v: v[:-3])
        want = {c for c, u in uses.items() if bid in u}
        needle = bid.hex()[:12]
    elif what == "tree object":
        _edit_lmdb(path, "objects", tree_a, _flip_middle)
        want, needle = {a}, tree_a.hex()[:12]
    elif what == "commit object":
        _edit_lmdb(path, "objects", a, _flip_middle)
        want, needle = {a, m}, a.hex()[:12]  # m names a as a parent
    elif what == "ref":
        _edit_lmdb(path, "refs", b"refs/heads/a", lambda v: b"zz" + v[2:])
        want, needle = set(), "refs/heads/a"
    else:
        _edit_lmdb(path, "reflog", b"refs/heads/b\x00" + (0).to_bytes(8, "big"), lambda v: v[:7])
        want, needle = set(), "reflog of refs/heads/b"
    ledger.fault(f"corruption: lmdb {what}")
    rc, rep = fsck_json(forkserver, path)
    assert rc == 1
    assert named_commits(rep) == want, rep["problems"]
    assert any(needle in p["message"] for p in rep["problems"]), rep["problems"]
    if want:
        fails = {a} if what == "commit object" else want  # m's own files are intact
        check_affected(forkserver, path, expected, want, tmp_path, fails)
    ledger.ok(f"corruption: lmdb {what}")


@pytest.mark.parametrize("where", ["inside a header", "another block's entry"])
def test_block_entry_pointing_at_the_wrong_place(
    where: str, damaged, forkserver: ForkServer, ledger: Ledger, tmp_path: Path
) -> None:
    """An index entry whose offset is inside a pack's header, or at another block's payload
    of the same length, is reported by a plain fsck (no --full: the entry headers are read)."""
    path, expected, uses, locs = damaged
    a = _cid(path, "a")
    only_a = uses[a] - set().union(*[u for c, u in uses.items() if c != a])
    bid = max(only_a, key=lambda x: locs[x].length)
    loc = locs[bid]
    if where == "inside a header":
        moved = replace(loc, offset=len(b"MSPACK01"))  # right after the pack's magic
        needle = "is inside a header"
    else:
        other = next(x for x, lo in locs.items()
                     if x != bid and lo.pack == loc.pack and lo.length >= loc.length)  # fmt: skip
        moved = replace(loc, offset=locs[other].offset)
        needle = "entry at its offset is not this block"
    _edit_lmdb(path, "blocks", bid, lambda v: moved.encode())
    ledger.fault(f"corruption: block entry {where}")
    rc, rep = fsck_json(forkserver, path)
    assert rc == 1
    want = {c for c, u in uses.items() if bid in u}
    assert a in want and named_commits(rep) == want, rep["problems"]
    assert any(bid.hex()[:12] in p["message"] and needle in p["message"]
               for p in rep["problems"]), rep["problems"]  # fmt: skip
    check_affected(forkserver, path, expected, want, tmp_path)
    ledger.ok(f"corruption: block entry {where}")
