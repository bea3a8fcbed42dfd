"""Hugging Face Hub ids as checkpoint sources: ``Qwen/Qwen2-0.5B`` or ``Qwen/Qwen2-0.5B@rev``.

An id resolves through the local Hugging Face cache first, laid out as huggingface_hub writes
it (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)::

    models--Qwen--Qwen2-0.5B/refs/main              the commit sha a branch or tag names
    models--Qwen--Qwen2-0.5B/snapshots/<sha>/...     the files (symlinks into ../../blobs)

When the revision is not cached, it is downloaded with huggingface_hub's snapshot_download
(weights as safetensors, else pytorch_model*.bin; configs and tokenizer files), unless
HF_HUB_OFFLINE is set. Either way the caller gets the snapshot folder, the repo id and the
resolved commit sha, which the store records in the commit's metadata.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mergestore.errors import MergestoreError
from mergestore.fast_dataclass import dataclass

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "tokenizer.model",
    "*.txt",
    "*.jinja",
    "*.py",
]


class HubError(MergestoreError):
    """A hub id that cannot be resolved (not cached and not downloadable)."""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub snapshot resolved to a local folder."""

    repo_id: str
    revision: str  # as asked: "main", a tag, a branch or a sha
    sha: str  # the commit it resolved to
    path: Path  # the snapshot folder

    def meta(self) -> dict[str, str]:
        """What a commit records about where it came from."""
        return {"hub_id": self.repo_id, "hub_revision": self.sha, "hub_ref": self.revision}


def parse_hub_id(text: str) -> tuple[str, str] | None:
    """("org/name", revision) for ``org/name[@rev]``; None when it is not shaped like one."""
    repo, _, rev = text.partition("@")
    if not _REPO_ID.match(repo) or repo.endswith((".safetensors", ".bin")):
        return None
    if "@" in text and not rev:
        return None
    return repo, rev or "main"


def looks_like_hub_id(text: str) -> bool:
    """An ``org/name[@rev]`` that is not an existing local path."""
    return parse_hub_id(text) is not None and not os.path.lexists(os.path.expanduser(text))


def hub_cache_dir() -> Path:
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_snapshot(repo_id: str, revision: str, cache: Path | None = None) -> HubSource | None:
    """The cached snapshot of repo_id at revision, or None."""
    root = (cache or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    if not root.is_dir():
        return None
    sha = revision if _SHA.match(revision) else None
    if sha is None:
        ref = root / "refs" / revision
        if not ref.is_file():
            return None
        sha = ref.read_text().strip()
        if not _SHA.match(sha):
            raise HubError(f"{ref}: not a commit sha (a damaged Hugging Face cache)")
    snap = root / "snapshots" / sha
    if not snap.is_dir():
        return None
    return HubSource(repo_id, revision, sha, snap)


def resolve_hub(text: str) -> HubSource:
    """Resolve ``org/name[@rev]`` to a local snapshot: the cache, else a download."""
    parsed = parse_hub_id(text)
    if parsed is None:
        raise HubError(f"{text!r} is not a Hugging Face model id (org/name[@revision])")
    repo_id, revision = parsed
    cache = hub_cache_dir()
    hit = cached_snapshot(repo_id, revision, cache)
    if hit is not None:
        return hit
    if _offline():
        raise HubError(
            f"{text} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: "
            f"download it once online (huggingface-cli download {repo_id}), or point HF_HOME "
            "at a cache that has it"
        )
    try:
        import huggingface_hub
    except ImportError:
        raise HubError(
            f"{text} is not in the Hugging Face cache ({cache}); downloading it needs "
            "huggingface_hub: pip install 'mergestore[hub]'"
        ) from None
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS, cache_dir=cache
        )
        if not any(Path(path).glob("*.safetensors")):  # an older repo: pickled weights only
            path = huggingface_hub.snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["pytorch_model*.bin", "*.bin.index.json"],
                cache_dir=cache,
            )
    except Exception as e:  # network, auth, missing repo: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(
            f"{text} is not in the Hugging Face cache ({cache}) and could not be downloaded: "
            f"{first}"
        ) from None
    snap = Path(path)
    return HubSource(repo_id, revision, snap.name if _SHA.match(snap.name) else revision, snap)
