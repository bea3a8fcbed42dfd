"""What a remote holds, as far as this store knows: its pack indexes and object bundles.

They are immutable and named by their hash, so they are cached for good under
`<store>/remotes/<name>/` (packs/<H>.idx, objects/<H>.bundle): a sync lists the remote and
downloads only the names it has not seen. From them come the set of blocks the remote has
(and where: pack, offset, length) and the objects and statistics it has.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from mergestore.remote.client import ObjectClient
from mergestore.remote.layout import (
    OBJECTS,
    PACKS,
    Bundle,
    IdxEntry,
    PackIndex,
    RemoteCorruptionError,
    bundle_key,
    content_name,
    decode_bundle,
    decode_index,
    idx_key,
    name_of_key,
)


class RemoteState:
    """The cached view of one remote's packs and bundles."""

    def __init__(self, store_path: Path, name: str) -> None:
        self.dir = store_path / "remotes" / name
        self.name = name
        self.packs: dict[str, PackIndex] = {}
        self.blocks: dict[bytes, tuple[str, IdxEntry]] = {}
        self.bundles: dict[str, Bundle] = {}
        self.objects: dict[bytes, bytes] = {}
        self.stats: dict[bytes, bytes] = {}
        self._load_cache()

    # ----- the local cache -------------------------------------------------------------------

    def _load_cache(self) -> None:
        for sub, suffix, add in (
            ("packs", ".idx", self._add_index),
            ("objects", ".bundle", self._add_bundle),
        ):
            d = self.dir / sub
            if not d.is_dir():
                continue
            for p in sorted(d.iterdir()):
                h = name_of_key(p.name, "", suffix)
                if h is None:
                    continue
                data = p.read_bytes()
                if content_name(data) != h:  # a damaged cache file: fetch it again
                    with contextlib.suppress(OSError):
                        p.unlink()
                    continue
                add(h, data)

    def _save(self, sub: str, filename: str, data: bytes) -> None:
        d = self.dir / sub
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{filename}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, d / filename)

    def _add_index(self, h: str, data: bytes) -> None:
        idx = decode_index(data, h)
        self.packs[h] = idx
        for e in idx.entries:
            self.blocks.setdefault(e.block, (h, e))

    def _add_bundle(self, h: str, data: bytes) -> None:
        b = decode_bundle(data, h)
        self.bundles[h] = b
        for oid, obj in b.objects.items():
            self.objects.setdefault(oid, obj)
        for k, v in b.stats.items():
            self.stats.setdefault(k, v)

    def record_index(self, h: str, data: bytes) -> None:
        """Remember a pack index this process uploaded (or downloaded)."""
        if h not in self.packs:
            self._add_index(h, data)
            self._save("packs", f"{h}.idx", data)

    def record_bundle(self, h: str, data: bytes) -> None:
        if h not in self.bundles:
            self._add_bundle(h, data)
            self._save("objects", f"{h}.bundle", data)

    # ----- syncing with the remote -----------------------------------------------------------

    def sync(self, client: ObjectClient, progress: Callable[[int], None] | None = None) -> int:
        """Download the indexes and bundles this cache lacks; returns the bytes downloaded."""
        got = 0
        listing = client.list(PACKS)
        pack_sizes: dict[str, int] = {}
        idx_names: list[str] = []
        for key, size in listing:
            if (h := name_of_key(key, PACKS, ".pack")) is not None:
                pack_sizes[h] = size
            elif (h := name_of_key(key, PACKS, ".idx")) is not None:
                idx_names.append(h)
        for h in idx_names:
            if h in self.packs:
                continue
            if h not in pack_sizes:
                raise RemoteCorruptionError(
                    f"remote {self.name}: pack index {h[:16]} has no pack beside it"
                )
            data = self._get_named(client, idx_key(h), h)
            idx = decode_index(data, h)
            if idx.pack_size != pack_sizes[h]:
                raise RemoteCorruptionError(
                    f"remote {self.name}: pack {h[:16]} holds {pack_sizes[h]} bytes, "
                    f"its index says {idx.pack_size}"
                )
            self.record_index(h, data)
            got += len(data)
            if progress:
                progress(len(data))
        for key, _size in client.list(OBJECTS):
            h = name_of_key(key, OBJECTS, ".bundle")
            if h is None or h in self.bundles:
                continue
            data = self._get_named(client, bundle_key(h), h)
            self.record_bundle(h, data)
            got += len(data)
            if progress:
                progress(len(data))
        return got

    def _get_named(self, client: ObjectClient, key: str, h: str) -> bytes:
        data = client.get(key)
        if data is None:
            raise RemoteCorruptionError(f"remote {self.name}: {key} vanished while reading")
        if content_name(data) != h:
            raise RemoteCorruptionError(
                f"remote {self.name}: {key} does not match its name (corrupt or tampered)"
            )
        return data
