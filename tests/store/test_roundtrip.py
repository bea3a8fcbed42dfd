"""Commit → checkout reproduces every file byte for byte; blocks are stored once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from mergestore.api import Store


def digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_sharded_family_round_trip(tiny_family, store: Store, tmp_path: Path) -> None:
    res = store.commit(tiny_family.base, message="base", branch="main")
    out = tmp_path / "out"
    store.checkout("main", out)
    assert digest_tree(out) == digest_tree(tiny_family.base)
    assert res.files == len(digest_tree(tiny_family.base))
    assert any(p.name.endswith(".index.json") for p in out.iterdir())


def test_every_expert_round_trips(tiny_family, store: Store, tmp_path: Path) -> None:
    store.commit(tiny_family.base, message="base", branch="main")
    for name, path in tiny_family.experts.items():
        store.commit(path, message=name, branch=name, base="main")
        out = tmp_path / name
        store.checkout(name, out)
        assert digest_tree(out) == digest_tree(path), name


DTYPES = [
    torch.bfloat16,
    torch.float16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int64,
    torch.bool,
    torch.uint8,
]


@st.composite
def tensor_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    n = draw(st.integers(1, 5))
    out = {}
    for i in range(n):
        dt = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 7), min_size=0, max_size=3)))
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
        if dt == torch.bool:
            t = torch.randint(0, 2, shape, generator=gen).bool()
        elif dt.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dt)
        else:
            t = torch.randint(-100 if dt != torch.uint8 else 0, 100, shape, generator=gen).to(dt)
        out[f"t{i}.{draw(st.sampled_from(['weight', 'bias', 'x']))}"] = t
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tensors=tensor_dicts(),
    meta=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_single_file_round_trip_property(tmp_path_factory, tensors, meta) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    src = tmp / "model.safetensors"
    save_file(tensors, str(src), metadata=meta or None)
    with Store.init(tmp / "store", block_size=4096) as s:
        s.commit(src, message="m", branch="main")
        s.checkout("main", tmp / "out")
        assert (tmp / "out" / "model.safetensors").read_bytes() == src.read_bytes()
        for name, t in tensors.items():
            assert torch.equal(s.read_tensor("main", name), t)


def test_large_tensor_is_cut_into_row_aligned_blocks(store: Store, tmp_path: Path) -> None:
    t = torch.randn(300, 64).to(torch.bfloat16)  # 128 bytes/row, 4096-byte blocks → 32 rows
    save_file({"w": t}, str(tmp_path / "m.safetensors"))
    store.commit(tmp_path / "m.safetensors", message="m", branch="main")
    rec = store.tensor_record("main", "w")
    assert rec.rows_per_block == 32
    assert len(rec.blocks) == 10  # ceil(300 / 32)
    assert torch.equal(store.read_tensor("main", "w"), t)


def test_second_commit_of_same_checkpoint_writes_no_blocks(tiny_family, store: Store) -> None:
    first = store.commit(tiny_family.base, message="one", branch="main")
    second = store.commit(tiny_family.base, message="two", branch="main")
    assert first.new_blocks == first.total_blocks or first.new_blocks > 0
    assert second.new_blocks == 0
    assert second.written_bytes == 0
    assert store.get_commit("main").parents == (first.commit,)


def test_frozen_expert_adds_only_changed_blocks(tiny_family, store: Store) -> None:
    store.commit(tiny_family.base, message="base", branch="main")
    base_blocks = {b for t in store.tensors("main") for b in t.blocks}
    res = store.commit(
        tiny_family.experts["frozen"], message="frozen", branch="frozen", base="main"
    )
    expert = store.tensors("frozen")
    changed = {b for t in expert for b in t.blocks} - base_blocks
    # blocks written = changed tensor blocks + at most a few header/blob blocks
    assert changed
    assert res.new_blocks >= len(changed)
    assert res.new_blocks - len(changed) <= 2 * res.files
    base_by_name = {t.name: t for t in store.tensors("main")}
    for t in expert:
        if "layernorm" in t.name or "embed" in t.name:
            assert t.blocks == base_by_name[t.name].blocks


def test_identical_blocks_within_one_commit_stored_once(store: Store, tmp_path: Path) -> None:
    z = torch.zeros(64, 64)  # 16 KiB of zeros → 4 identical 4 KiB blocks
    save_file({"a": z, "b": z.clone()}, str(tmp_path / "m.safetensors"))
    res = store.commit(tmp_path / "m.safetensors", message="zeros", branch="main")
    rec_a = store.tensor_record("main", "a")
    assert len(rec_a.blocks) == 4 and len(set(rec_a.blocks)) == 1
    assert res.new_blocks == 1  # the zero block, written once for 8 uses
    assert sum(1 for _ in store.repo.iter_blocks()) == 2  # plus the header block
