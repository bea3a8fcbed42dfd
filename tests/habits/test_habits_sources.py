"""Hub ids through a Hugging Face cache laid out on disk, and pytorch_model*.bin conversion."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

SHA = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root: Path, repo_id: str, model_dir: Path, sha: str = SHA) -> Path:
    """The layout huggingface_hub writes: blobs, snapshots of symlinks, refs/main."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(model_dir.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return snap


def test_commit_hub_id_from_cache(cli, tmp_path, models, monkeypatch) -> None:
    cache = tmp_path / "hf" / "hub"
    _hub_cache(cache, "Org/Tiny-0.1B", models("tiny"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    s = tmp_path / "store"
    assert cli("--store", s, "init").code == 0
    r = cli("--store", s, "commit", "Org/Tiny-0.1B", "-b", "main")
    assert r.code == 0, r.err
    meta = cli("--store", s, "show", "main", "--json").json()["meta"]
    assert meta == {"hub_id": "Org/Tiny-0.1B", "hub_revision": SHA, "hub_ref": "main"}
    # a revision by sha, and HF_HUB_CACHE taking precedence over HF_HOME
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "nowhere"))
    r = cli("--store", s, "commit", f"Org/Tiny-0.1B@{SHA}", "-b", "pinned")
    assert r.code == 0, r.err
    assert cli("--store", s, "show", "pinned", "--json").json()["meta"]["hub_ref"] == SHA
    # a merge names hub ids directly; the card lists them as base_model (one input: the
    # same checkpoint twice, as hub id and as `main`, is refused as a duplicate model)
    r = cli("--store", s, "merge", "--method", "passthrough", "Org/Tiny-0.1B", "-b", "m")
    assert r.code == 0, r.err
    out = tmp_path / "out"
    assert cli("--store", s, "checkout", "m", out).code == 0
    card = (out / "README.md").read_text()
    assert "- Org/Tiny-0.1B\n" in card
    assert "[Org/Tiny-0.1B](https://huggingface.co/Org/Tiny-0.1B)" in card


def test_hub_id_offline_without_cache_is_one_line(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    s = tmp_path / "store"
    assert cli("--store", s, "init").code == 0
    r = cli("--store", s, "commit", "Qwen/Qwen2-0.5B@main", "-b", "q")
    assert r.code != 0
    assert r.err.count("\n") == 1
    assert "Qwen/Qwen2-0.5B@main is not in the Hugging Face cache" in r.err
    assert "HF_HUB_OFFLINE" in r.err
    r = cli("--store", s, "merge", "--method", "linear", "Qwen/Qwen2-0.5B", "-w", "1")
    assert r.code != 0 and r.err.count("\n") == 1 and "not in the Hugging Face cache" in r.err


def _bin_model(path: Path, models, shards: int) -> dict[str, torch.Tensor]:
    src = models("src_for_bin")
    t = load_file(src / "model.safetensors")
    path.mkdir()
    shutil.copy(src / "config.json", path / "config.json")
    names = sorted(t)
    if shards == 1:
        torch.save(t, path / "pytorch_model.bin")
        return t
    half = len(names) // 2
    parts = [names[:half], names[half:]]
    wm = {}
    for i, part in enumerate(parts, 1):
        fname = f"pytorch_model-{i:05d}-of-00002.bin"
        torch.save({k: t[k] for k in part}, path / fname)
        wm.update({k: fname for k in part})
    (path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 6240}, "weight_map": wm})
    )
    return t


def test_commit_pytorch_bin_checkpoints(cli, tmp_path, models) -> None:
    s = tmp_path / "store"
    assert cli("--store", s, "init").code == 0
    for shards in (1, 2):
        src = tmp_path / f"bin{shards}"
        want = _bin_model(src, models, shards)
        r = cli("--store", s, "commit", src, "-b", f"b{shards}")
        assert r.code == 0, r.err
        info = cli("--store", s, "show", f"b{shards}", "--json").json()
        assert info["meta"]["conversion"] == "torch.load(weights_only=True) -> safetensors"
        paths = sorted(f["path"] for f in info["files"])
        out = tmp_path / f"out{shards}"
        assert cli("--store", s, "checkout", f"b{shards}", out).code == 0
        got = {}
        for f in out.glob("*.safetensors"):
            got.update(load_file(f))
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
        assert not list(out.glob("*.bin"))
        if shards == 2:
            assert "model.safetensors.index.json" in paths
            assert "model-00001-of-00002.safetensors" in paths
    # the two hold the same tensors: the second commit stored no new tensor blocks
    assert cli("--store", s, "diff", "b1", "b2", "--json").json()["totals"]["changed"] == 0


def test_bin_with_pickled_code_is_refused(cli, tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    src = tmp_path / "evil"
    src.mkdir()
    torch.save({"w": Evil()}, src / "pytorch_model.bin")
    s = tmp_path / "store"
    assert cli("--store", s, "init").code == 0
    r = cli("--store", s, "commit", src, "-b", "e")
    assert r.code != 0 and r.err.count("\n") == 1
    assert "weights_only=True" in r.err
    assert not (tmp_path / "pwned").exists()
