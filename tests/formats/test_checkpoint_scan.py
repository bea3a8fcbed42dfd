"""Scanning checkpoint directories and single files; safe_join against hostile paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergestore.errors import CheckoutError, FormatError, NotACheckpointError
from mergestore.formats.checkpoint import Checkpoint, safe_join, scan_checkpoint


def _st(path: Path, tensors: dict[str, tuple[int, ...]], metadata=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: torch.zeros(s) for n, s in tensors.items()}, str(path), metadata=metadata)


def _index(path: Path, weight_map: dict) -> None:
    path.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def _sharded(root: Path) -> None:
    _st(root / "model-00001-of-00002.safetensors", {"a.w": (2, 2), "a.b": (2,)}, {"format": "pt"})
    _st(root / "model-00002-of-00002.safetensors", {"b.w": (3,)})
    _index(
        root / "model.safetensors.index.json",
        {
            "a.w": "model-00001-of-00002.safetensors",
            "a.b": "model-00001-of-00002.safetensors",
            "b.w": "model-00002-of-00002.safetensors",
        },
    )
    (root / "config.json").write_text('{"hidden_size": 2}')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text('{"a": 0}')


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    return msg


def test_sharded_directory(tmp_path):
    _sharded(tmp_path)
    ckpt = scan_checkpoint(tmp_path)
    assert ckpt.root == tmp_path
    assert [f.relpath for f in ckpt.files] == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer/vocab.json",
    ]
    for f in ckpt.files:
        assert f.size == (tmp_path / f.relpath).stat().st_size
        assert f.abspath.read_bytes() == (tmp_path / f.relpath).read_bytes()
        assert (f.header is not None) == f.relpath.endswith(".safetensors")
    assert [f.relpath for f in ckpt.tensor_files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    index = ckpt.tensor_index()
    assert {n: f.relpath for n, (f, _) in index.items()} == {
        "a.w": "model-00001-of-00002.safetensors",
        "a.b": "model-00001-of-00002.safetensors",
        "b.w": "model-00002-of-00002.safetensors",
    }
    assert index["a.w"][1].shape == (2, 2)
    assert ckpt.tensor_files[0].header.metadata == {"format": "pt"}


def test_nested_subfolders_and_skipped_dirs(tmp_path):
    _st(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", {"x": (1,)})
    _st(tmp_path / "text_encoder" / "deep" / "model.safetensors", {"y": (1,)})
    (tmp_path / "README.md").write_text("hi")
    for skipped in (".git", ".mergestore", ".cache", "unet/.cache"):
        (tmp_path / skipped).mkdir(parents=True, exist_ok=True)
        (tmp_path / skipped / "junk.safetensors").write_bytes(b"not a safetensors file")
    ckpt = scan_checkpoint(str(tmp_path))
    assert [f.relpath for f in ckpt.files] == [
        "README.md",
        "text_encoder/deep/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    ]


def test_hidden_files_that_are_not_skipped_are_kept(tmp_path):
    _st(tmp_path / "m.safetensors", {"x": (1,)})
    (tmp_path / ".gitattributes").write_text("*.safetensors filter=lfs")
    assert [f.relpath for f in scan_checkpoint(tmp_path).files] == [
        ".gitattributes",
        "m.safetensors",
    ]


def test_hf_cache_style_symlinked_files(tmp_path):
    blobs = tmp_path / "blobs"
    snap = tmp_path / "snapshots" / "abc123"
    _st(blobs / "1111", {"w": (4,)})
    (blobs / "2222").write_text("{}")
    snap.mkdir(parents=True)
    os.symlink("../../blobs/1111", snap / "model.safetensors")
    os.symlink("../../blobs/2222", snap / "config.json")
    ckpt = scan_checkpoint(snap)
    assert [f.relpath for f in ckpt.files] == ["config.json", "model.safetensors"]
    f = ckpt.files[1]
    assert f.abspath == (blobs / "1111").resolve()
    assert f.size == (blobs / "1111").stat().st_size
    assert [e.name for e in f.header.tensors] == ["w"]


def test_symlinked_directory_inside_tree_is_followed(tmp_path):
    _st(tmp_path / "real" / "m.safetensors", {"w": (1,)})
    os.symlink("real", tmp_path / "alias")
    assert [f.relpath for f in scan_checkpoint(tmp_path).files] == [
        "alias/m.safetensors",
        "real/m.safetensors",
    ]


def test_symlinked_directory_outside_tree_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    ck = tmp_path / "ck"
    _st(ck / "m.safetensors", {"w": (1,)})
    os.symlink(outside, ck / "escape")
    with pytest.raises(FormatError, match="outside the checkpoint") as info:
        scan_checkpoint(ck)
    _one_line(info.value)


@pytest.mark.parametrize("target", [".", "..", "../sub", "../other/back"])
def test_directory_symlink_loops_are_refused(tmp_path, target):
    ck = tmp_path / "ck"
    _st(ck / "sub" / "m.safetensors", {"w": (1,)})
    (ck / "other").mkdir()
    os.symlink("../sub", ck / "other" / "back")  # on its own, not a loop
    os.symlink(target, ck / "sub" / "loop")
    with pytest.raises(FormatError, match="symlink loop") as info:
        scan_checkpoint(ck)
    _one_line(info.value)


def test_directory_symlink_to_the_checkpoint_parent_is_outside(tmp_path):
    ck = tmp_path / "ck"
    _st(ck / "m.safetensors", {"w": (1,)})
    os.symlink("..", ck / "up")
    with pytest.raises(FormatError, match="outside the checkpoint"):
        scan_checkpoint(ck)


def test_file_symlink_cycle_and_broken_symlink(tmp_path):
    _st(tmp_path / "m.safetensors", {"w": (1,)})
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(FormatError, match="symlink loop"):
        scan_checkpoint(tmp_path)
    os.unlink(tmp_path / "a")
    os.unlink(tmp_path / "b")
    os.symlink("missing", tmp_path / "dangling")
    with pytest.raises(FormatError, match="broken symlink"):
        scan_checkpoint(tmp_path)


def test_fifo_is_not_content(tmp_path):
    _st(tmp_path / "m.safetensors", {"w": (1,)})
    os.mkfifo(tmp_path / "pipe")
    assert [f.relpath for f in scan_checkpoint(tmp_path).files] == ["m.safetensors"]


def test_single_file(tmp_path):
    _st(tmp_path / "solo.safetensors", {"w": (2,)})
    (tmp_path / "other.safetensors").write_bytes(b"garbage is not looked at")
    ckpt = scan_checkpoint(tmp_path / "solo.safetensors")
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.root == tmp_path
    assert [f.relpath for f in ckpt.files] == ["solo.safetensors"]
    assert ckpt.files[0].header.tensors[0].name == "w"


def test_single_file_must_be_safetensors(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(NotACheckpointError, match="not a .safetensors file"):
        scan_checkpoint(tmp_path / "model.bin")


def test_single_invalid_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\0" * 4)
    with pytest.raises(FormatError, match="bad.safetensors: "):
        scan_checkpoint(tmp_path / "bad.safetensors")


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(NotACheckpointError) as info:
        scan_checkpoint(missing)
    assert _one_line(info.value) == f"{missing}: no such file or directory"


def test_not_a_checkpoint_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(NotACheckpointError) as info:
        scan_checkpoint(tmp_path)
    assert _one_line(info.value) == f"{tmp_path}: not a checkpoint (no .safetensors files)"


def test_empty_directory_and_only_skipped_tensors(tmp_path):
    with pytest.raises(NotACheckpointError):
        scan_checkpoint(tmp_path)
    _st(tmp_path / ".cache" / "m.safetensors", {"w": (1,)})
    with pytest.raises(NotACheckpointError):
        scan_checkpoint(tmp_path)


def test_invalid_shard_in_directory_names_the_file(tmp_path):
    _st(tmp_path / "good.safetensors", {"w": (1,)})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0[]")
    with pytest.raises(FormatError) as info:
        scan_checkpoint(tmp_path)
    assert _one_line(info.value).startswith(str(tmp_path / "sub" / "bad.safetensors") + ": ")


@pytest.mark.parametrize(
    "index_text, match",
    [
        ("{", "not valid JSON"),
        (b"\xff", "not valid UTF-8"),
        ("[]", "weight_map"),
        ('{"metadata": {}}', "weight_map"),
        ('{"weight_map": []}', "weight_map"),
        ('{"weight_map": {"a.w": 3}}', "not a file name"),
        ('{"weight_map": {"a.w": "missing.safetensors"}}', "not a tensor file"),
        ('{"weight_map": {"a.w": "config.json"}}', "not a tensor file"),
        ('{"weight_map": {"nope": "model-00001-of-00002.safetensors"}}', "'nope' is not in"),
        ('{"weight_map": {"b.w": "model-00001-of-00002.safetensors"}}', "'b.w' is not in"),
        ('{"weight_map": {"a.w": "../x/model.safetensors"}}', "'..' component"),
        ('{"weight_map": {"a.w": "/abs.safetensors"}}', "absolute"),
        ('{"weight_map": {"a.w": "a\\\\b.safetensors"}}', "backslash"),
        ('{"weight_map": {}, "weight_map": {}}', "duplicate key"),
        ('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
)
def test_bad_index(tmp_path, index_text, match):
    _sharded(tmp_path)
    path = tmp_path / "model.safetensors.index.json"
    if isinstance(index_text, bytes):
        path.write_bytes(index_text)
    else:
        path.write_text(index_text)
    with pytest.raises(FormatError) as info:
        scan_checkpoint(tmp_path)
    msg = _one_line(info.value)
    assert match in msg, msg
    assert msg.startswith(str(path) + ": ")


def test_index_in_subfolder_resolves_relative_to_it(tmp_path):
    sub = tmp_path / "text_encoder"
    _st(sub / "model-1.safetensors", {"enc.w": (2,)})
    _index(sub / "model.safetensors.index.json", {"enc.w": "model-1.safetensors"})
    _st(tmp_path / "model-1.safetensors", {"other": (1,)})  # same name at top: not the target
    ckpt = scan_checkpoint(tmp_path)
    assert "text_encoder/model.safetensors.index.json" in [f.relpath for f in ckpt.files]
    _index(sub / "model.safetensors.index.json", {"other": "model-1.safetensors"})
    with pytest.raises(FormatError, match="'other' is not in"):
        scan_checkpoint(tmp_path)


def test_tensor_index_refuses_a_name_in_two_files(tmp_path):
    _st(tmp_path / "a.safetensors", {"w": (1,)})
    _st(tmp_path / "b.safetensors", {"w": (1,)})
    ckpt = scan_checkpoint(tmp_path)  # scanning alone is fine
    with pytest.raises(FormatError, match="'w' is in both 'a.safetensors' and 'b.safetensors'"):
        ckpt.tensor_index()


@pytest.mark.parametrize("name", ["back\\slash.txt", "new\nline.txt", "tab\t.txt", "del\x7f"])
def test_unsafe_file_names_are_refused(tmp_path, name):
    _st(tmp_path / "m.safetensors", {"w": (1,)})
    (tmp_path / name).write_text("x")
    with pytest.raises(FormatError) as info:
        scan_checkpoint(tmp_path)
    _one_line(info.value)


def test_undecodable_file_name_is_refused(tmp_path):
    _st(tmp_path / "m.safetensors", {"w": (1,)})
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.txt"), "wb") as f:
        f.write(b"x")
    with pytest.raises(FormatError, match="not valid UTF-8"):
        scan_checkpoint(tmp_path)


# ---------------------------------------------------------------- safe_join


@pytest.mark.parametrize(
    "relpath",
    [
        "",
        ".",
        "..",
        "../x",
        "a/../../x",
        "a/..",
        "a/./b",
        "./a",
        "/etc/passwd",
        "//server/share",
        "a//b",
        "a/",
        "a\\..\\..\\x",
        "..\\x",
        "C:/Windows",
        "c:x",
        "a\0b",
        "a\nb",
        "\x1b[31m",
        "x\udcff",
        None,
        b"bytes",
    ],
)
def test_safe_join_refuses_hostile_paths(tmp_path, relpath):
    with pytest.raises(CheckoutError) as info:
        safe_join(tmp_path, relpath)
    _one_line(info.value)


@pytest.mark.parametrize(
    "relpath",
    ["a", "a/b/c.safetensors", "..a", "a..", "...", "a/.hidden", "ünï/代码.json", "ab:c", "a/b:c"],
)
def test_safe_join_accepts_ordinary_paths(tmp_path, relpath):
    assert safe_join(tmp_path, relpath) == tmp_path / relpath


def test_safe_join_refuses_paths_through_existing_symlinks(tmp_path):
    root = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "link")
    os.symlink(tmp_path / "elsewhere" / "f", root / "filelink")
    os.symlink(".", root / "self")
    with pytest.raises(CheckoutError, match="outside"):
        safe_join(root, "link/f")
    with pytest.raises(CheckoutError, match="outside"):
        safe_join(root, "filelink")
    with pytest.raises(CheckoutError, match="outside"):
        safe_join(root, "self")  # resolves to root itself, not a path inside it
    assert safe_join(root, "self/x") == root / "self" / "x"  # still inside root


def test_safe_join_with_symlinked_root(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    assert safe_join(tmp_path / "alias", "a/b") == tmp_path / "alias" / "a" / "b"
