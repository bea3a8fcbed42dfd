"""The remote's format marker: the lowest format that describes what the remote holds, raised
by a conditional write before blocks that need more (sparse byte planes: format 2), and an
older tool refused with a version error, not a codec error."""

from __future__ import annotations

import json
from pathlib import Path

from mergestore.api import Store
from mergestore.remote import layout
from mergestore.remote.client import ObjectClient
from mergestore.remote.url import parse_url


def _marker(url: str) -> dict:
    data = ObjectClient(parse_url(url), "origin").get(layout.FORMAT_KEY)
    assert data is not None
    return json.loads(data)


def _uses_sparse(store: Store, ref: str) -> bool:
    specs = set()
    for t in store.tensors(ref):
        for b in t.blocks:
            specs.add(store.repo.codec_spec(store.repo.block_location(b).codec))
    return layout.format_for_specs(specs) == 2


def test_a_remote_is_raised_to_format_2_by_the_first_push_of_sparse_planes(
    origin: Store, tiny_family, remote_url: str, cli, tmp_path: Path
):
    assert not _uses_sparse(origin, "main")
    assert origin.push("origin", "main").ok
    assert _marker(remote_url)["format"] == 1  # nothing a format-1 tool cannot read

    origin.commit(tiny_family.experts["dense_small"], message="ds", branch="ds", base="main")
    assert _uses_sparse(origin, "ds")  # a light fine-tune's XOR delta: a sparse plane
    assert origin.push("origin", "ds").ok
    assert _marker(remote_url) == {"format": 2, "block_size": 4096}

    r = cli("clone", remote_url, tmp_path / "b", "--json")
    assert r.code == 0, r.err
    assert cli("--store", tmp_path / "b", "checkout", "origin/ds", tmp_path / "out").code == 0


def test_an_older_tool_gets_a_version_error(
    origin: Store, tiny_family, remote_url: str, cli, tmp_path: Path, monkeypatch
):
    origin.commit(tiny_family.experts["dense_small"], message="ds", branch="ds", base="main")
    assert origin.push("origin", "main", "ds").ok
    monkeypatch.setattr(layout, "FORMAT", 1)  # what a tool before format 2 reads
    r = cli("clone", remote_url, tmp_path / "b", "--json")
    assert r.code != 0
    assert r.json()["error"] == "remote format 2 is newer than this tool (1)"
    assert not (tmp_path / "b" / "config.json").exists()


def test_a_marker_raised_meanwhile_is_kept(remote_url: str) -> None:
    from mergestore.remote.push import mark_format

    client = ObjectClient(parse_url(remote_url), "origin")
    mark_format(client, 8192, 1)
    assert _marker(remote_url) == {"format": 1, "block_size": 8192}
    mark_format(client, 4096, 2)  # raised; the remote's block size stays
    assert _marker(remote_url) == {"format": 2, "block_size": 8192}
    mark_format(client, 4096, 1)  # never lowered
    assert _marker(remote_url)["format"] == 2
