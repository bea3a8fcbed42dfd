"""`merge --out DIR --overwrite`: a merge writes over a non-empty folder by checkout --force's
rule (formats/outdir.py); without it the folder is refused before anything is read or stored.
(merge --force means "recompute", so the folder option has its own name.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.usability.test_merge_leaves_store import snapshot

MERGE = ["merge", "--method", "ties", "--base", "main", "dense_small", "frozen"]
MERGE += ["-w", "1", "-w", "1", "--param", "density=0.5", "-b", "m"]


def files_of(folder: Path) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = Path(root, f)
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def old_folder(ms, tmp_path: Path) -> Path:
    """An older merge in many shards (more than the new one writes), plus files of the user's."""
    out = tmp_path / "out"
    r = ms("merge", "--method", "linear", "main", "frozen", "-w", "1", "-w", "1", "-b", "old",
           "--out", out, "--out-shard-size", "20K")  # fmt: skip
    assert r.code == 0, r.err
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()
    (out / "runs" / "eval.json").write_text("{}")
    return out


def test_non_empty_out_is_refused_naming_overwrite(ms, fam_store: Path, tmp_path: Path) -> None:
    out = old_folder(ms, tmp_path)
    before, folder = snapshot(fam_store), files_of(out)
    for as_json in (False, True):
        r = ms(*MERGE, "--out", out, *(["--json"] if as_json else []))
        assert r.code == 1, r.err
        msg = r.json()["error"] if as_json else r.err
        assert "not empty" in msg and "--overwrite" in msg
        if not as_json:
            assert r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1
        assert snapshot(fam_store) == before and files_of(out) == folder


def test_overwrite_replaces_the_checkpoint_and_keeps_other_files(ms, tmp_path: Path) -> None:
    out = old_folder(ms, tmp_path)
    old_shards = {p.name for p in out.iterdir() if p.name.endswith(".safetensors")}
    r = ms(*MERGE, "--out", out, "--overwrite", "--json")
    assert r.code == 0, r.err
    info = r.json()["out"]
    fresh = tmp_path / "fresh"
    assert ms("checkout", "m", fresh).code == 0
    want, got = files_of(fresh), files_of(out)
    assert {k: v for k, v in got.items() if k in want} == want  # the merge, byte for byte
    assert set(got) - set(want) == {"notes.txt", "runs/eval.json"}
    assert sorted(info["kept"]) == ["notes.txt", "runs/eval.json"]
    stale = old_shards - set(want)
    assert stale and set(info["removed"]) == stale
    assert not [p for p in tmp_path.iterdir() if "mergestore-tmp" in p.name]

    # text: what was removed and kept is said, as checkout --force says it
    (out / "model-00099-of-00099.safetensors").write_bytes(b"stale")
    r = ms(*MERGE, "-m", "again", "--out", out, "--overwrite", "--force")
    assert r.code == 0, r.err
    assert "removed 1 file (model-00099-of-00099.safetensors)" in r.err
    assert "kept 2 files (notes.txt, runs/eval.json)" in r.err
    assert files_of(out) == got


def test_overwrite_needs_out(ms, fam_store: Path) -> None:
    before = snapshot(fam_store)
    for as_json in (False, True):
        r = ms(*MERGE, "--overwrite", *(["--json"] if as_json else []))
        assert r.code == 2, r.err
        if as_json:
            assert "--out" in r.json()["error"]
        else:
            assert r.err.startswith("error: ") and "--out" in r.err
            assert len(r.err.strip().splitlines()) == 1
    assert snapshot(fam_store) == before


def test_overwrite_over_a_file_is_refused(ms, fam_store: Path, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    r = ms(*MERGE, "--out", target, "--overwrite")
    assert r.code == 2 and "is a file" in r.err  # click's path check: a usage error
    assert target.read_text() == "x"


def test_overwrite_rule_is_in_help(ms) -> None:
    text = " ".join(ms("merge", "--help").out.split())
    assert "--overwrite" in text and "all other files are kept" in text


def test_api_merge_overwrite(fam_store: Path, tmp_path: Path) -> None:
    from mergestore.api import Store
    from mergestore.errors import MergestoreError

    out = tmp_path / "o"
    out.mkdir()
    (out / "config.json").write_text("{}")
    kw = dict(method="linear", models=["main", "frozen"], weights=[1, 1], out=out)
    with Store.open(fam_store) as s:
        try:
            s.merge(branch="a", **kw)
        except MergestoreError as e:
            assert "--overwrite" in str(e)
        else:
            raise AssertionError("a non-empty out folder was written over")
        res = s.merge(branch="a", overwrite=True, **kw)
    assert res.out["removed"] == [] and res.out["kept"] == []
    assert (out / "config.json").read_text() != "{}"
