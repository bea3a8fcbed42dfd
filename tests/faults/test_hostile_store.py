"""Hostile stored objects and names: crafted trees (`..`, absolute paths, symlinks), odd refs.

Crafted objects are published the way a tampered or foreign store would hold them. Every
command that meets them gives one line `error: ...`, writes nothing outside the checkout target
(and nothing at all into the store), and leaves the store unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import blake3
import pytest
from faultkit import Ledger, Result, assert_clean_error, cli_inproc, dir_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergestore.api import Store
from mergestore.store.objects import BlobFile, Commit, Tree, TreeEntry, canonical_json
from mergestore.store.repo import RefUpdate

SCALE = int(os.environ.get("MERGESTORE_FAULTS_SCALE", "1"))
FUZZ = settings(
    max_examples=80 * SCALE,
    deadline=None,
    derandomize=SCALE == 1,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Box:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "store"
        if not self.store.exists():
            with Store.init(self.store, block_size=4096) as s, s.repo.writer() as w:
                bid = w.put_raw(b"hello\n")
                blob = w.put_object(BlobFile(size=6, blocks=(bid,)))
                tree = w.put_object(Tree(entries=(TreeEntry("config.json", "blob", blob, 6),)))
                c = w.put_object(Commit(tree=tree, parents=(), message="ok", author="a", time=0))
                w.publish([RefUpdate("refs/heads/main", c, "test")])
        self.n = 0

    def everything(self) -> dict[str, str]:
        return {
            p.relative_to(self.root).as_posix(): ""
            for p in self.root.rglob("*")
            if self.store not in p.parents and p != self.store
        }

    def craft(self, entries: list[dict]) -> str:
        """Publish a commit whose tree holds `entries` verbatim; returns its branch name."""
        self.n += 1
        name = f"evil{self.n}"
        with Store.open(self.store) as s, s.repo.writer() as w:
            bid = w.put_raw(b"pwned\n")
            blob = w.put_object(BlobFile(size=6, blocks=(bid,)))
            for e in entries:
                e.setdefault("object", blob.hex())
                e.setdefault("kind", "blob")
                e.setdefault("size", 6)
            data = b"tree\n" + canonical_json({"entries": entries})
            tree = blake3.blake3(data).digest()
            w.objects[tree] = data  # verbatim: no constructor validates it on the way in
            c = w.put_object(Commit(tree=tree, parents=(), message="x", author="a", time=0))
            w.publish([RefUpdate("refs/heads/" + name, c, "test")])
        return name

    def run(self, *args: object) -> tuple[Result, bool]:
        """Run a command; (result, whether the store stayed the same)."""
        before = dir_digest(self.store)
        r = cli_inproc("--store", self.store, *map(str, args))
        return r, dir_digest(self.store) == before


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


EVIL_PATHS = [
    "../evil.txt",
    "../../evil.txt",
    "/tmp/evil.txt",
    "a/../../evil.txt",
    "a/../../../evil.txt",
    "./../evil.txt",
    "a\\..\\..\\evil.txt",
    "",
    ".",
    "..",
    "a/",
    "a//b",
    "evil\x00.txt",
    "C:/evil.txt",
    "~/evil.txt",
    "x" * 5000,
]


@pytest.mark.parametrize("path", EVIL_PATHS, ids=[repr(p[:20]) for p in EVIL_PATHS])
def test_crafted_tree_paths(box: Box, ledger: Ledger, path: str, tmp_path: Path) -> None:
    branch = box.craft([{"path": path}])
    target = tmp_path / "deep" / "out"
    around = box.everything()
    for cmd in (["checkout", branch, target], ["checkout", branch, target, "--force"]):
        r, same = box.run(*cmd)
        ledger.tried("store: crafted tree path")
        assert same
        if r.rc == 0:  # only harmless spellings may pass, and only inside the target
            assert path in ("a//b", "~/evil.txt", "C:/evil.txt"), path
        else:
            assert_clean_error(r)
        new = set(box.everything()) - set(around)
        assert all(p == "deep" or p.startswith("deep/out") for p in new), new
        assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    for cmd in (["ls", branch], ["show", branch], ["fsck"]):
        r, same = box.run(*cmd)
        assert same and r.rc in (0, 1) and "Traceback" not in r.err


@pytest.mark.parametrize(
    "entry",
    [
        {"path": "link", "kind": "symlink", "target": "/etc/passwd"},
        {"path": "link", "kind": "symlink"},
        {"path": "t.safetensors", "kind": "tensorfile"},  # a blob posing as a tensor file
        {"path": "a", "size": -1},
        {"path": "a", "object": "00" * 32},  # a missing object
    ],
)
def test_crafted_tree_entries(box: Box, ledger: Ledger, entry: dict, tmp_path: Path) -> None:
    """Refused, or (a kind or size that disagrees with the object) written inside the target
    from the object itself; fsck reports every one of them against the commit."""
    branch = box.craft([dict(entry)])
    around = box.everything()
    r, same = box.run("checkout", branch, tmp_path / "out")
    ledger.tried("store: crafted tree entry")
    assert same
    if r.rc != 0 or entry.get("kind") == "symlink" or "object" in entry:
        assert_clean_error(r)
    new = set(box.everything()) - set(around)
    assert all(p.startswith("out") for p in new), new
    r, same = box.run("fsck", "--json")
    assert same and r.rc == 1, r.out
    with Store.open(box.store) as s:
        assert s.resolve(branch).hex() in r.json()["affected_commits"]


def test_two_entries_through_a_directory_and_a_symlink_in_the_target(
    box: Box, ledger: Ledger, tmp_path: Path
) -> None:
    """A target that already holds a symlink out of it: --force must not write through it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    (target / "sub").symlink_to(outside, target_is_directory=True)
    branch = box.craft([{"path": "sub/evil.txt"}])
    r, same = box.run("checkout", branch, target, "--force")
    ledger.tried("store: symlink in target")
    assert same
    # The checkout is written into a fresh sibling folder that then replaces the target
    # (formats/outdir.py): the checkpoint's sub/ replaces the link, nothing goes through it.
    assert r.rc == 0, r.err
    assert (target / "sub").is_dir() and not (target / "sub").is_symlink()
    assert not any(outside.iterdir())
    # a symlinked target directory itself is fine to refuse or to follow, but never to escape
    (target / "config.json").symlink_to(outside / "config.json")
    r, same = box.run("checkout", "main", target, "--force")
    ledger.tried("store: symlink in target")
    assert same and not (outside / "config.json").exists()


REF_ALPHABET = st.sampled_from(
    list("ab/.~^:?*[\\ @{}-") + ["\x00", "\x01", "\x1b", "\x7f", "\n", "\u00e9", "..", ".lock"]
)


def _git_would_refuse(name: str) -> bool:
    """Independent rules from git-check-ref-format (a subset mergestore must also refuse)."""
    parts = name.split("/")
    return (
        not name
        or any(ord(c) < 0x20 or c == "\x7f" for c in name)
        or any(c in name for c in " ~^:?*[\\")
        or ".." in name
        or "@{" in name
        or name.startswith(("/", "-"))
        or name.endswith(("/", ".", ".lock"))
        or any(p == "" or p.startswith(".") for p in parts)
    )


@given(name=st.lists(REF_ALPHABET, min_size=0, max_size=8).map("".join))
@FUZZ
def test_fuzzed_ref_names(box: Box, ledger: Ledger, name: str) -> None:
    # after `--`, as a user passes a name that starts with "-" (else click reads an option)
    for cmd in (["branch", "--", name, "main"], ["tag", "--", name, "main"]):
        before_refs = _refs(box)
        r, same = box.run(*cmd)
        ledger.tried("refs: fuzzed names")
        if _git_would_refuse(name):
            assert r.rc == 1, f"accepted {name!r}"
        if r.rc == 0:
            kind = "heads" if cmd[0] == "branch" else "tags"
            assert _refs(box) == {
                **before_refs,
                f"refs/{kind}/{name}": _refs(box)["refs/heads/main"],
            }
            with Store.open(box.store) as st_:  # drop it again: the next example starts clean
                st_.repo.update_refs([RefUpdate(f"refs/{kind}/{name}", None, "test")])
        else:
            assert_clean_error(r)
            assert same
    # lookups by such names: an error or a real commit, never a crash
    target = box.root / "lookup"
    lookups = (["log", "--", name], ["show", "--", name], ["reflog", "--", name],
               ["checkout", "--", name, target])  # fmt: skip
    for cmd in lookups:
        r, same = box.run(*cmd)
        assert same and r.rc in (0, 1), r.err
        if r.rc:
            assert_clean_error(r)
    shutil.rmtree(target, ignore_errors=True)


def _refs(box: Box) -> dict[str, bytes]:
    with Store.open(box.store) as s:
        return s.repo.list_refs("")
