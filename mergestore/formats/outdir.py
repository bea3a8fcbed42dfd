"""An output folder written whole or not at all (`checkout DIR`, `merge --out DIR`).

Files are written into a temporary sibling, `.NAME.mergestore-tmp-PID`, next to DIR. When every
file is complete the sibling takes DIR's place in one rename; on any failure, Ctrl-C included,
the sibling is removed. So DIR is either as it was or the complete new checkpoint, never a
mix, and no temporary folder stays behind (a process killed with SIGKILL can leave its sibling;
it is removed by the next write to the same DIR from a process of the same id, or by hand).

Over a non-empty DIR (`checkout --force`), the rule is git's for untracked files: the
checkpoint owns its own files and DIR's weight files, and leaves everything else alone.

- every file the checkpoint has replaces the file of the same path;
- every other checkpoint file directly in DIR is removed: `*.safetensors`,
  `*.safetensors.index.json`, and the config, tokenizer, chat-template, model-card and
  mergekit_config.yml files of OWNED_NAMES (stale shards, indexes and descriptions of an older
  checkpoint, which a loader would otherwise pick up);
- every other file (notes, training state, `.bin` weights, subfolders) is kept.

The kept files are hard-linked into the sibling (copied where links are not possible), and the
sibling and DIR are exchanged atomically (renameat2 RENAME_EXCHANGE; two renames where the
kernel lacks it); the old DIR is then removed. A DIR that is a mount point cannot be renamed:
there the files are staged in a hidden folder inside DIR and moved into place one by one at the
end (kept entries are then DIR's top-level names).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

from mergestore.errors import CheckoutError

OWNED_SUFFIXES = (".safetensors", ".safetensors.index.json")
# The other files of an HF checkpoint as mergekit writes one (a stale one would describe
# another model): config, tokenizer, chat template, model card, the merge's recipe.
OWNED_NAMES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "README.md",
        "mergekit_config.yml",
    }
)
FORCE_RULE = (
    "the checkpoint's files replace same-named ones; other checkpoint files at the folder's "
    "top level (*.safetensors, *.safetensors.index.json, config, tokenizer and chat-template "
    "files, README.md, mergekit_config.yml) are removed; all other files are kept"
)


def owned(name: str) -> bool:
    """A top-level file name that belongs to a checkpoint (removed by --force if stale)."""
    return name.endswith(OWNED_SUFFIXES) or name in OWNED_NAMES


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def check_target(out: Path, force: bool = False, hint: str = "use --force to overwrite") -> None:
    """DIR must not exist or be an empty directory (any directory with `force`)."""
    if out.exists() and not out.is_dir():
        raise CheckoutError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CheckoutError(f"{out}: directory is not empty ({hint})")


class StagedDir:
    """The temporary sibling an output folder is written into (see the module docstring)."""

    def __init__(
        self, out: str | os.PathLike[str], *, force: bool = False, hint: str | None = None
    ) -> None:
        self.out = Path(out)
        check_target(self.out, force, *([hint] if hint else []))
        self.target = self.out.resolve() if self.out.exists() else self.out.absolute()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # A mount point cannot be renamed over, nor a sibling renamed onto it: stage inside.
        self.inside = self.target.is_dir() and os.path.ismount(self.target)
        name = f".{self.target.name}.mergestore-tmp-{os.getpid()}"
        self.path = (self.target if self.inside else self.target.parent) / name
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()
        self.kept: list[str] = []  # files of DIR kept by publish() (relative paths)
        self.removed: list[str] = []  # files of DIR neither kept nor replaced

    def publish(self) -> None:
        """Move the complete staged folder into DIR's place (keeping DIR's unrelated files)."""
        try:
            if self.inside:
                self._publish_inside()
                return
            replacing = self.target.is_dir() and any(self.target.iterdir())
            if replacing:
                self._take_kept_files()
                if not _exchange(self.path, self.target):
                    old = self.path.with_name(self.path.name + "-old")
                    os.rename(self.target, old)
                    try:
                        os.rename(self.path, self.target)
                    except BaseException:
                        os.rename(old, self.target)
                        raise
                    self.path = old
                shutil.rmtree(self.path)  # the old DIR, now at the staged path
            else:
                os.replace(self.path, self.target)  # over an empty DIR too
        except BaseException:
            self.abort()
            raise

    def _publish_inside(self) -> None:
        """DIR is a mount point: the staged files are moved into it one by one (each rename is
        atomic, the whole is not: an interruption here can leave some of them moved)."""
        staged = sorted(os.listdir(self.path))
        for name in sorted(os.listdir(self.target)):
            p = self.target / name
            if p == self.path:
                continue
            if name in staged or owned(name):
                if name not in staged:
                    self.removed.append(name)
                _remove(p)
            else:
                self.kept.append(name)
        for name in staged:
            os.rename(self.path / name, self.target / name)
        os.rmdir(self.path)

    def abort(self) -> None:
        """Remove the staged folder (DIR is untouched)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def _take_kept_files(self) -> None:
        for root, dirs, files in os.walk(self.target):
            links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
            dirs[:] = sorted(d for d in dirs if d not in links)  # a link is kept, not entered
            rel_root = Path(root).relative_to(self.target)
            for name in sorted([*files, *links]):
                rel = rel_root / name
                staged = self.path / rel
                if os.path.lexists(staged) or (rel_root == Path(".") and owned(name)):
                    if not os.path.lexists(staged):
                        self.removed.append(rel.as_posix())
                    continue
                try:
                    staged.parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(Path(root, name), staged)
                except (FileExistsError, NotADirectoryError):
                    self.removed.append(rel.as_posix())  # a new file stands in its way
                    continue
                self.kept.append(rel.as_posix())


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _link_or_copy(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the kernel or libc lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # the kernel or file system cannot: two renames instead
    raise OSError(err, os.strerror(err), str(b))
