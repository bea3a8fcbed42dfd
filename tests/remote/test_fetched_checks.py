"""Blocks that come from a remote are checked against their blake3 ids; the check their local
entry then holds is computed here, from the bytes that matched, never taken from the remote."""

from __future__ import annotations

from pathlib import Path

from mergestore.api import Store
from mergestore.store.blocks import raw_check


def _pushed(tmp_path: Path, tiny_family, remote_url: str) -> None:
    src = Store.init(tmp_path / "src", block_size=4096)
    src.commit(tiny_family.base, message="base")
    src.commit(tiny_family.experts["dense_small"], message="ds", branch="ds", base="main")
    src.add_remote("origin", remote_url)
    assert src.push("origin", "main", "ds").ok
    src.close()


def _assert_checked(store: Store) -> int:
    entries = dict(store.repo.iter_blocks())
    for bid, loc in entries.items():
        assert loc.check == raw_check(bid, bytes(store.repo.read_block(bid)))
    return len(entries)


def test_a_clone_computes_the_checks_of_what_it_fetched(
    tmp_path: Path, tiny_family, remote_url: str
) -> None:
    _pushed(tmp_path, tiny_family, remote_url)
    with Store.clone(remote_url, tmp_path / "clone") as c:
        assert _assert_checked(c) > 0
        assert any(loc.ref is not None for _b, loc in c.repo.iter_blocks())  # deltas too


def test_a_lazy_clone_keeps_fetched_blocks_with_their_checks(
    tmp_path: Path, tiny_family, remote_url: str
) -> None:
    _pushed(tmp_path, tiny_family, remote_url)
    with Store.clone(remote_url, tmp_path / "lazy", lazy=True) as c:
        assert not list(c.repo.iter_blocks())
        c.checkout("origin/ds", tmp_path / "out")
    with Store.open(tmp_path / "lazy") as c:
        assert _assert_checked(c) > 0
