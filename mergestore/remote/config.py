"""The remotes a store knows: `<store>/remotes.json`, {"remotes": {NAME: {"url", "lazy"}}}.

URLs are stored without credentials (parse_url refuses any), so this file never holds one.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from mergestore.errors import MergestoreError, RefError
from mergestore.fast_dataclass import dataclass
from mergestore.remote.url import RemoteURL, parse_url
from mergestore.store.refs import check_ref_name

REMOTES_FILE = "remotes.json"


@dataclass(frozen=True)
class RemoteSpec:
    """A configured remote: its name, URL and whether clones from it are lazy."""

    name: str
    url: RemoteURL
    lazy: bool = False


def check_remote_name(name: str) -> str:
    try:
        check_ref_name(name, "remote")
    except RefError:
        raise RefError(f"invalid remote name {name!r}") from None
    if "/" in name:
        raise RefError(f"invalid remote name {name!r} (no '/')")
    return name


def load_remotes(store_path: Path) -> dict[str, RemoteSpec]:
    path = store_path / REMOTES_FILE
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise MergestoreError(f"{path}: unreadable ({e})") from None
    out: dict[str, RemoteSpec] = {}
    for name, entry in (d.get("remotes") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise MergestoreError(f"{path}: malformed entry for remote {name!r}")
        out[name] = RemoteSpec(name, parse_url(entry["url"]), bool(entry.get("lazy", False)))
    return out


def _save(store_path: Path, remotes: dict[str, RemoteSpec]) -> None:
    body = {
        "remotes": {
            r.name: {"url": r.url.text, "lazy": r.lazy}
            for r in sorted(remotes.values(), key=lambda r: r.name)
        }
    }
    tmp = store_path / f".{REMOTES_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, store_path / REMOTES_FILE)


class _Locked:
    def __init__(self, store_path: Path) -> None:
        self.path = store_path / "locks" / "remotes.lock"

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def add_remote(store_path: Path, name: str, url: str, *, lazy: bool = False) -> RemoteSpec:
    check_remote_name(name)
    spec = RemoteSpec(name, parse_url(url), lazy)
    with _Locked(store_path):
        remotes = load_remotes(store_path)
        if name in remotes:
            raise MergestoreError(f"remote {name!r} already exists")
        remotes[name] = spec
        _save(store_path, remotes)
    return spec


def remove_remote(store_path: Path, name: str) -> RemoteSpec:
    with _Locked(store_path):
        remotes = load_remotes(store_path)
        spec = remotes.pop(name, None)
        if spec is None:
            raise MergestoreError(f"no remote {name!r}")
        _save(store_path, remotes)
    return spec


def get_remote(store_path: Path, name: str) -> RemoteSpec:
    remotes = load_remotes(store_path)
    spec = remotes.get(name)
    if spec is None:
        known = ", ".join(sorted(remotes)) or "none"
        raise MergestoreError(f"no remote {name!r} (known: {known}; see `mergestore remote add`)")
    return spec
