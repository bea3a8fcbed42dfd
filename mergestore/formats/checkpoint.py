"""Reading a checkpoint (a Hugging Face style directory, or one .safetensors file) as a file list.

Every file of the directory belongs to the checkpoint and is kept byte for byte by the store;
`.safetensors` files additionally get a fully validated header. Layout problems (unsafe names,
broken or looping symlinks, an inconsistent shard index) are FormatErrors, raised before the
store writes anything.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import stat
from pathlib import Path
from typing import Any

from mergestore.errors import CheckoutError, FormatError, NotACheckpointError
from mergestore.fast_dataclass import dataclass
from mergestore.formats.safetensors import (
    SafetensorsHeader,
    TensorEntry,
    _clean_source,
    read_header,
)

__all__ = ["Checkpoint", "CheckpointFile", "safe_join", "scan_checkpoint"]

SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
# Directories that are bookkeeping, not model content (git data, our store, download caches).
SKIPPED_DIRS = frozenset({".git", ".mergestore", ".cache"})
MAX_INDEX_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class CheckpointFile:
    """One regular file of a checkpoint."""

    relpath: str  # posix path relative to the checkpoint root
    abspath: Path  # the file itself (symlinks resolved)
    size: int
    header: SafetensorsHeader | None  # set, and validated, for *.safetensors files


@dataclass(frozen=True)
class Checkpoint:
    """A scanned checkpoint: its root and its files, sorted by relpath."""

    root: Path
    files: tuple[CheckpointFile, ...]

    @property
    def tensor_files(self) -> tuple[CheckpointFile, ...]:
        return tuple(f for f in self.files if f.header is not None)

    def tensor_index(self) -> dict[str, tuple[CheckpointFile, TensorEntry]]:
        """Map each tensor name to its file and entry; a name in two files is a FormatError."""
        index: dict[str, tuple[CheckpointFile, TensorEntry]] = {}
        for f in self.tensor_files:
            assert f.header is not None
            for entry in f.header.tensors:
                if entry.name in index:
                    other = index[entry.name][0].relpath
                    raise FormatError(
                        f"{_show(self.root)}: tensor {_short(entry.name)} is in both "
                        f"{_short(other)} and {_short(f.relpath)}"
                    )
                index[entry.name] = (f, entry)
        return index


# ---------------------------------------------------------------- relative paths


def _show(path: object) -> str:
    return _clean_source(os.fspath(path)) if path != "" else "''"


def _short(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def relpath_problem(relpath: object) -> str | None:
    """Why `relpath` is not a safe, normalized, relative posix path; None if it is."""
    if not isinstance(relpath, str):
        return "is not a string"
    if not relpath:
        return "is empty"
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in relpath):
        return "contains a control character"
    if "\\" in relpath:
        return "contains a backslash"
    if relpath.startswith("/"):
        return "is absolute"
    if len(relpath) >= 2 and relpath[1] == ":" and relpath[0].isascii() and relpath[0].isalpha():
        return "starts with a drive letter"
    for part in relpath.split("/"):
        if part == "":
            return "has an empty component"
        if part in (".", ".."):
            return f"has a {part!r} component"
    return None


def safe_join(root: Path, relpath: str) -> Path:
    """`root / relpath` for a stored path, refusing anything that could land outside `root`.

    Besides the textual checks, existing symlinks under `root` are resolved: a checkout must
    not write through a link that points elsewhere.
    """
    problem = relpath_problem(relpath)
    if problem is not None:
        raise CheckoutError(f"unsafe path {_short(str(relpath))} in checkout: {problem}")
    root = Path(root)
    target = root / relpath
    real_root = os.path.realpath(root)
    real_target = os.path.realpath(target)
    if os.path.commonpath([real_root, real_target]) != real_root or real_target == real_root:
        raise CheckoutError(
            f"unsafe path {_short(relpath)} in checkout: it resolves outside {_show(root)}"
        )
    return target


# ---------------------------------------------------------------- scanning


def _stat(path: str, shown: str) -> os.stat_result:
    try:
        return os.stat(path)  # follows symlinks
    except FileNotFoundError:
        what = "broken symlink" if os.path.islink(path) else "vanished while scanning"
        raise FormatError(f"{shown}: {what}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink cycle
            raise FormatError(f"{shown}: symlink loop") from None
        raise FormatError(f"{shown}: cannot stat: {exc.strerror}") from None


def _walk(root: str, real_root: str) -> list[tuple[str, str, os.stat_result]]:
    """All regular files under `root`: (relpath, real path, stat), symlinks followed."""
    found: list[tuple[str, str, os.stat_result]] = []
    # Stack of (directory path, relpath prefix, real paths of the directories leading to it);
    # a directory whose real path is already on its own chain is a symlink loop.
    stack: list[tuple[str, str, tuple[str, ...]]] = [(root, "", (real_root,))]
    while stack:
        directory, prefix, chain = stack.pop()
        try:
            with os.scandir(directory) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            raise FormatError(f"{_show(directory)}: cannot list: {exc.strerror}") from None
        for name in names:
            rel = prefix + name
            problem = relpath_problem(rel)
            if problem is not None:
                raise FormatError(f"{_show(root)}: file name {_short(rel)} {problem}")
            path = os.path.join(directory, name)
            shown = _show(path)
            st = _stat(path, shown)
            if stat.S_ISDIR(st.st_mode):
                if name in SKIPPED_DIRS:
                    continue
                real = os.path.realpath(path)
                if os.path.commonpath([real_root, real]) != real_root:
                    raise FormatError(f"{shown}: symlink to a directory outside the checkpoint")
                if real in chain:
                    raise FormatError(f"{shown}: symlink loop")
                stack.append((path, rel + "/", (*chain, real)))
            elif stat.S_ISREG(st.st_mode):
                found.append((rel, os.path.realpath(path), st))
            # Sockets, fifos and devices are not checkpoint content; reading a fifo would hang.
    return found


def _load_file(rel: str, real: str, st: os.stat_result, shown: str) -> CheckpointFile:
    header = read_header(real, source=shown) if rel.endswith(SAFETENSORS_SUFFIX) else None
    return CheckpointFile(relpath=rel, abspath=Path(real), size=st.st_size, header=header)


def scan_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Scan and validate a checkpoint directory or a single .safetensors file."""
    given = os.fspath(path)
    shown = _show(given)
    if not os.path.lexists(given):
        raise NotACheckpointError(f"{shown}: no such file or directory")
    st = _stat(given, shown)
    if stat.S_ISREG(st.st_mode):
        name = os.path.basename(given)
        if not name.endswith(SAFETENSORS_SUFFIX):
            raise NotACheckpointError(f"{shown}: not a checkpoint (not a .safetensors file)")
        problem = relpath_problem(name)
        if problem is not None:
            raise FormatError(f"{shown}: file name {problem}")
        root = Path(os.path.dirname(os.path.abspath(given)))
        f = _load_file(name, os.path.realpath(given), st, shown)
        return Checkpoint(root=root, files=(f,))
    if not stat.S_ISDIR(st.st_mode):
        raise NotACheckpointError(f"{shown}: not a checkpoint (not a file or directory)")

    root_str = os.path.abspath(given)
    found = _walk(root_str, os.path.realpath(root_str))
    if not any(rel.endswith(SAFETENSORS_SUFFIX) for rel, _, _ in found):
        raise NotACheckpointError(f"{shown}: not a checkpoint (no .safetensors files)")
    files = tuple(
        sorted(
            (_load_file(rel, real, st, _show(os.path.join(given, rel))) for rel, real, st in found),
            key=lambda f: f.relpath,
        )
    )
    ckpt = Checkpoint(root=Path(root_str), files=files)
    for f in files:
        if f.relpath.endswith(INDEX_SUFFIX):
            _check_index(ckpt, f, _show(os.path.join(given, f.relpath)))
    return ckpt


# ---------------------------------------------------------------- shard index


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_short(key)}")
        out[key] = value
    return out


def _check_index(ckpt: Checkpoint, index_file: CheckpointFile, shown: str) -> None:
    """A shard index must map tensor names to shards that exist and hold those tensors."""
    if index_file.size > MAX_INDEX_BYTES:
        raise FormatError(f"{shown}: index file is larger than {MAX_INDEX_BYTES} bytes")
    try:
        raw = index_file.abspath.read_bytes()
    except OSError as exc:
        raise FormatError(f"{shown}: cannot read: {exc.strerror}") from None
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs_no_duplicates)
    except UnicodeDecodeError:
        raise FormatError(f"{shown}: index is not valid UTF-8") from None
    except RecursionError:
        raise FormatError(f"{shown}: index JSON is nested too deeply") from None
    except ValueError as exc:
        detail = (str(exc).splitlines() or [""])[0][:80]
        raise FormatError(f"{shown}: index is not valid JSON: {detail}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        raise FormatError(f"{shown}: index has no 'weight_map' object")

    by_relpath = {f.relpath: f for f in ckpt.files}
    base = posixpath.dirname(index_file.relpath)
    names_cache: dict[str, frozenset[str]] = {}
    for tensor, shard in obj["weight_map"].items():
        if not isinstance(shard, str):
            raise FormatError(f"{shown}: weight_map entry {_short(tensor)} is not a file name")
        problem = relpath_problem(shard)
        if problem is not None:
            raise FormatError(f"{shown}: weight_map file {_short(shard)} {problem}")
        rel = posixpath.join(base, shard) if base else shard
        target = by_relpath.get(rel)
        if target is None or target.header is None:
            raise FormatError(f"{shown}: weight_map names {_short(shard)}, not a tensor file here")
        if rel not in names_cache:
            names_cache[rel] = frozenset(e.name for e in target.header.tensors)
        if tensor not in names_cache[rel]:
            raise FormatError(f"{shown}: tensor {_short(tensor)} is not in {_short(shard)}")
