"""Issue 15 item 7: checkout and merge --out write a folder whole or not at all, and
`checkout --force` replaces the checkpoint's files by a stated rule (formats/outdir.py)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from mergestore import checkout as checkout_mod
from mergestore.merge import outfolder

MERGE = ["merge", "--method", "ties", "--base", "main", "dense_small", "frozen"]
MERGE += ["-w", "1", "-w", "1", "--param", "density=0.5"]


def files_of(folder: Path) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = Path(root, f)
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "mergestore-tmp" in p.name)


def fail_after(monkeypatch, module, n: int, exc: BaseException) -> None:
    """Make the n-th pwrite of `module` fail (a full disk, or Ctrl-C) mid-write."""
    real = module._pwrite_all
    calls = [0]

    def pwrite(fd, data, offset):
        calls[0] += 1
        if calls[0] == n:
            raise exc
        return real(fd, data, offset)

    monkeypatch.setattr(module, "_pwrite_all", pwrite)


@pytest.mark.parametrize(
    "exc,code",
    [(OSError(errno.ENOSPC, "No space left on device"), 1), (KeyboardInterrupt(), 130)],
    ids=["disk-full", "ctrl-c"],
)
def test_failed_checkout_leaves_nothing(ms, tmp_path: Path, monkeypatch, exc, code) -> None:
    out = tmp_path / "out"
    fail_after(monkeypatch, checkout_mod, 5, exc)
    r = ms("checkout", "main", out)
    assert r.code == code, r.err
    if code == 1:
        assert r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_failed_force_checkout_leaves_the_folder_as_it_was(ms, tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    assert ms("checkout", "dense_small", out).code == 0
    (out / "notes.txt").write_text("mine")
    before = files_of(out)
    fail_after(monkeypatch, checkout_mod, 5, OSError(errno.ENOSPC, "No space left on device"))
    r = ms("checkout", "main", out, "--force", "--json")
    assert r.code == 1 and "No space left" in r.json()["error"]
    assert files_of(out) == before
    assert leftovers(tmp_path) == []


def test_force_replaces_stale_shards_and_keeps_other_files(ms, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # an older checkpoint in many shards (more than main's 4), with a file of the user's
    r = ms(*MERGE, "-b", "m", "--out", out, "--out-shard-size", "20K")
    assert r.code == 0, r.err
    old_shards = [p for p in out.iterdir() if p.name.endswith(".safetensors")]
    assert len(old_shards) > 4
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()
    (out / "runs" / "eval.json").write_text("{}")
    (out / "tokenizer.json").write_text("an old tokenizer")  # main has one: replaced

    r = ms("checkout", "main", out, "--force", "--json")
    assert r.code == 0, r.err
    fresh = tmp_path / "fresh"
    assert ms("checkout", "main", fresh).code == 0
    want = files_of(fresh)
    got = files_of(out)
    assert {k: v for k, v in got.items() if k in want} == want  # main's files, byte for byte
    assert set(got) - set(want) == {"notes.txt", "runs/eval.json"}
    assert (out / "notes.txt").read_text() == "mine"
    info = r.json()
    assert sorted(info["kept"]) == ["notes.txt", "runs/eval.json"]
    stale = {p.name for p in old_shards} - set(want)
    assert stale and set(info["removed"]) == stale | {"README.md", "mergekit_config.yml"}
    assert leftovers(tmp_path) == []

    # text: what was removed and kept is said
    (out / "model-00099-of-00099.safetensors").write_bytes(b"stale")
    r = ms("checkout", "main", out, "--force")
    assert r.code == 0, r.err
    assert "removed 1 file (model-00099-of-00099.safetensors)" in r.err
    assert "kept 2 files (notes.txt, runs/eval.json)" in r.err


def test_force_rule_is_in_help(ms) -> None:
    r = ms("checkout", "--help")
    text = " ".join(r.out.split())
    assert "*.safetensors.index.json" in text and "all other files are kept" in text
    assert "README.md, mergekit_config.yml" in text


def test_non_empty_without_force_is_refused(ms, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    r = ms("checkout", "main", out, "--json")
    assert r.code == 1 and "not empty" in json.loads(r.out)["error"]
    assert files_of(out) == {"x": hashlib.sha256(b"x").hexdigest()}


def test_checkout_into_an_empty_dir(ms, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert ms("checkout", "main", out).code == 0
    assert "config.json" in files_of(out) and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "exc,code",
    [(OSError(errno.ENOSPC, "No space left on device"), 1), (KeyboardInterrupt(), 130)],
    ids=["disk-full", "ctrl-c"],
)
def test_failed_merge_out_leaves_nothing(ms, tmp_path: Path, monkeypatch, exc, code) -> None:
    out = tmp_path / "merged"
    fail_after(monkeypatch, outfolder, 3, exc)
    r = ms(*MERGE, "-b", "m", "--out", out)
    assert r.code == code, r.err
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_checkout_into_a_mount_point(ms, tmp_path: Path, monkeypatch) -> None:
    """A mount point cannot be renamed over: the files are staged inside it and moved in; the
    --force rule is the same."""
    from mergestore.formats import outdir

    out = tmp_path / "mnt"
    out.mkdir()
    monkeypatch.setattr(outdir.os.path, "ismount", lambda p: Path(p) == out.resolve())
    assert ms("checkout", "dense_small", out).code == 0
    fresh = tmp_path / "fresh"
    assert ms("checkout", "main", fresh).code == 0
    (out / "notes.txt").write_text("mine")
    (out / "model-00099-of-00099.safetensors").write_bytes(b"stale")
    r = ms("checkout", "main", out, "--force", "--json")
    assert r.code == 0, r.err
    assert r.json()["kept"] == ["notes.txt"]
    assert files_of(out) == {**files_of(fresh), "notes.txt": files_of(out)["notes.txt"]}
    assert leftovers(out) == [] and leftovers(tmp_path) == []
