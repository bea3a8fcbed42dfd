"""Ray workers of a lazy clone read their blocks from the object-store remote's packs.

`mergestore clone --lazy s3://... ./c && mergestore --store ./c merge ... --executor ray`:
the workers read each block with ranged GETs from the remote packs (never the index), check
it against its id, and write their output packs into the clone, which the driver adopts and
publishes. Against a real SeaweedFS server and a real local Ray.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.api import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "remote"))
from seaweed import BUCKET, Seaweed, server_or_fail  # noqa: E402

CONFIG = """merge_method: ties
base_model: main
models:
  - model: dense_small
    parameters: {weight: 0.6, density: 0.5}
  - model: lowrank_attn
    parameters: {weight: 0.4, density: 0.5}
dtype: float32
out_dtype: bfloat16
"""
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = server_or_fail(tmp_path_factory.mktemp("seaweed-ray"))
    yield server
    server.stop()


@pytest.fixture
def pushed(tmp_path: Path, seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, str]:
    """A family store pushed to a fresh prefix of the S3 server; credentials as a user gives
    them (AWS_* variables, which the executor hands to the tasks that read the remote)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mergestore-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "mergestore-test-secret-value")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("MERGESTORE_REMOTE_RETRY_TIMEOUT", "5")
    src, _fam = family_store(tmp_path / "src", PRESETS["tiny"])
    prefix = f"ray{os.getpid()}-{next(_prefixes)}-{time.time_ns() % 10**9}"
    url = f"s3://{BUCKET}/{prefix}?endpoint={seaweed.endpoint}"
    src.add_remote("origin", url)
    assert src.push("origin", "main", "dense_small", "lowrank_attn").ok
    yield src, url
    src.close()


def _lazy_clone(cli, url: str, clone: Path) -> Path:
    """`clone --lazy`, and local branches of the experts from their remote-tracking ones."""
    r = cli("clone", "--lazy", url, clone)
    assert r.code == 0, r.err
    for name in ("dense_small", "lowrank_attn"):
        assert cli("--store", clone, "branch", name, f"origin/{name}").code == 0
    return clone


def _blocks(store: Store, ref: str) -> tuple[bytes, dict[str, tuple[bytes, ...]]]:
    return store.get_commit(ref).tree, {t.name: tuple(t.blocks) for t in store.tensors(ref)}


def test_lazy_clone_merge_on_ray_reads_the_remote_packs(
    ray_session, pushed: tuple[Store, str], tmp_path: Path, cli
) -> None:
    src, url = pushed
    cfg = tmp_path / "m.yml"
    cfg.write_text(CONFIG)
    local = src.merge(config=cfg, branch="x")  # the reference: a local merge of the same
    clone = _lazy_clone(cli, url, tmp_path / "c")
    c = Store.open(clone)
    assert c.repo.promised_count("origin") > 0
    c.close()

    r = cli("--store", clone, "merge", "--config", cfg, "-b", "x", "--executor", "ray", "--json")
    assert r.code == 0, r.err
    out = r.json()
    ex = out["executor"]
    assert ex["name"] == "ray"
    # every byte the workers read came from the remote by ranged GETs, and is reported (the
    # driver itself fetched only the small files it checks, config.json)
    assert ex["bytes_fetched"] == ex["pack_bytes_read"] > 0
    assert ex["bytes_fetched"] <= out["bytes_fetched"] < 1.1 * ex["bytes_fetched"]
    assert out["expert_bytes_read"] == local.run["expert_bytes_read"]

    c = Store.open(clone)
    try:
        assert _blocks(c, "x") == _blocks(src, "x")  # the local merge's tree and block ids
        # the workers did not fetch through the clone's index: the inputs' tensor blocks are
        # still promised (a local merge would have kept them in local packs)
        inputs = [b for ref in ("dense_small", "lowrank_attn", "main")
                  for t in c.tensors(ref) for b in t.blocks]  # fmt: skip
        assert inputs and all(c.repo.block_is_promised(b) for b in inputs)
        assert c.replay("x")["identical"]
    finally:
        c.close()
    r = cli("--store", clone, "fsck")
    assert r.code == 0, r.out + r.err


def test_lazy_clone_merge_on_ray_human_output_says_fetched(
    ray_session, pushed: tuple[Store, str], tmp_path: Path, cli
) -> None:
    _src, url = pushed
    cfg = tmp_path / "m.yml"
    cfg.write_text(CONFIG)
    clone = _lazy_clone(cli, url, tmp_path / "c")
    r = cli("--store", clone, "merge", "--config", cfg, "-b", "y", "--executor", "ray")
    assert r.code == 0, r.err
    assert "fetched" in r.err and "from the remote" in r.err


def test_corrupt_remote_block_fails_the_ray_merge_naming_it(
    ray_session, tmp_path: Path, cli
) -> None:
    """A block whose bytes on the remote do not match its id fails the merge in one line that
    names the block; nothing is published (here a file:// remote, tampered with on disk)."""
    from mergestore.store.promised import PROMISED_PACK_BASE, slot_name

    src, _fam = family_store(tmp_path / "src", PRESETS["tiny"])
    remote = tmp_path / "remote"
    src.add_remote("origin", f"file://{remote}")
    assert src.push("origin", "main", "dense_small", "lowrank_attn").ok
    src.close()
    clone = _lazy_clone(cli, f"file://{remote}", tmp_path / "c")
    c = Store.open(clone)
    rec = max(c.tensors("dense_small"), key=lambda t: t.nbytes)
    bid = next(b for b in rec.blocks if c.repo.block_is_promised(b))
    loc = c.repo.block_location(bid)
    _remote, pack = slot_name(c.repo, loc.pack - PROMISED_PACK_BASE)
    c.close()
    path = remote / "packs" / f"{pack}.pack"
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    cfg = tmp_path / "m.yml"
    cfg.write_text(CONFIG)
    r = cli("--store", clone, "merge", "--config", cfg, "-b", "x", "--executor", "ray")
    assert r.code == 1
    assert r.err.startswith("error: ") and r.err.strip().count("\n") == 0, r.err
    assert bid.hex()[:12] in r.err and "corrupt" in r.err and rec.name in r.err
    assert cli("--store", clone, "show", "x").code != 0  # nothing published


def test_ray_merge_on_a_store_opened_by_url_is_refused_before_any_task(
    ray_session, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--store URL` is a read-only view: a Ray merge there says so in one line before any
    task runs, and leaves no worker pack in the view's cache."""
    monkeypatch.setenv("MERGESTORE_CACHE", str(tmp_path / "cache"))
    src, _fam = family_store(tmp_path / "src", PRESETS["tiny"])
    url = f"file://{tmp_path / 'remote'}"
    src.add_remote("origin", url)
    assert src.push("origin", "main", "dense_small").ok
    src.close()
    assert cli("--store", url, "log").code == 0  # the view exists, its packs as they are
    views = list((tmp_path / "cache" / "views").iterdir())
    before = sorted(p.name for p in (views[0] / "packs").iterdir())
    r = cli("--store", url, "merge", "--method", "task_arithmetic", "--base", "main",
            "origin/dense_small", "-w", "0.5", "-b", "x", "--executor", "ray")  # fmt: skip
    assert r.code == 1 and r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "read-only view" in r.err
    assert sorted(p.name for p in (views[0] / "packs").iterdir()) == before


def _remote_keys(url: str) -> set[str]:
    from mergestore.remote.client import ObjectClient
    from mergestore.remote.url import parse_url

    return {k for k, _size in ObjectClient(parse_url(url)).list("packs/")}


def _blocks_in_new_packs(url: str, keys: set[str]) -> set[bytes]:
    from mergestore.remote.client import ObjectClient
    from mergestore.remote.layout import decode_index, name_of_key
    from mergestore.remote.url import parse_url

    client = ObjectClient(parse_url(url))
    out: set[bytes] = set()
    for key in keys:
        if (h := name_of_key(key, "packs/", ".idx")) is not None:
            out.update(e.block for e in decode_index(client.get(key), h).entries)
    return out


def test_workers_without_the_store_send_their_output_through_the_remote(
    ray_session, pushed: tuple[Store, str], tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MERGESTORE_RAY_OUTPUT=remote: workers act as if they had no path to the clone. They read
    every input from the remote (also blocks the clone holds locally), upload their output
    packs there, and the driver fetches, verifies and publishes those blocks with the commit:
    the local merge's tree and block ids; a later push sends none of them again."""
    src, url = pushed
    cfg = tmp_path / "m.yml"
    cfg.write_text(CONFIG)
    src.merge(config=cfg, branch="x")  # the reference: a local merge of the same
    clone = _lazy_clone(cli, url, tmp_path / "c")
    assert cli("--store", clone, "checkout", "main", tmp_path / "out").code == 0
    c = Store.open(clone)
    held = [b for t in c.tensors("main") for b in t.blocks if not c.repo.block_is_promised(b)]
    c.close()
    assert held  # the checkout kept the base's blocks in the clone's own packs
    before = _remote_keys(url)

    monkeypatch.setenv("MERGESTORE_RAY_OUTPUT", "remote")
    r = cli("--store", clone, "merge", "--config", cfg, "-b", "x", "--executor", "ray", "--json")
    assert r.code == 0, r.err
    out = r.json()
    ex = out["executor"]
    # every input came from the remote by ranged GETs, the blocks held locally too
    assert ex["bytes_fetched"] == ex["pack_bytes_read"] > 0
    new = _remote_keys(url) - before
    assert ex["output_packs_uploaded"] > 0 and ex["bytes_uploaded"] > 0
    assert len(new) == 2 * ex["output_packs_uploaded"]  # each pack and its index
    # the driver fetched what it adopts back, to check it: counted in bytes_fetched
    assert 0 < ex["output_bytes_fetched"] <= ex["bytes_uploaded"]
    assert out["bytes_fetched"] >= ex["bytes_fetched"] + ex["output_bytes_fetched"]
    assert out["blocks_written"] > 0

    c = Store.open(clone)
    try:
        assert _blocks(c, "x") == _blocks(src, "x")  # the local merge's tree and block ids
        assert c.replay("x")["identical"]
    finally:
        c.close()
    assert cli("--store", clone, "fsck", "--full").code == 0
    c = Store.open(clone)
    tensor_blocks = {b for t in c.tensors("x") for b in t.blocks}
    c.close()
    monkeypatch.delenv("MERGESTORE_RAY_OUTPUT")
    before = _remote_keys(url)
    r = cli("--store", clone, "push", "origin", "x", "--json")
    assert r.code == 0, r.err
    # the push sends the driver's own small files (the card, mergekit_config.yml), never a
    # tensor block again: the workers' packs hold them
    pushed_blocks = _blocks_in_new_packs(url, _remote_keys(url) - before)
    assert len(pushed_blocks) == r.json()["blocks"] <= 3
    assert not pushed_blocks & tensor_blocks


def test_workers_that_see_the_store_write_into_it(
    ray_session, pushed: tuple[Store, str], tmp_path: Path, cli
) -> None:
    """The default (auto): a worker that finds the driver's probe in the store writes there."""
    _src, url = pushed
    cfg = tmp_path / "m.yml"
    cfg.write_text(CONFIG)
    clone = _lazy_clone(cli, url, tmp_path / "c")
    before = _remote_keys(url)
    r = cli("--store", clone, "merge", "--config", cfg, "-b", "x", "--executor", "ray", "--json")
    assert r.code == 0, r.err
    ex = r.json()["executor"]
    assert ex["output_packs_uploaded"] == ex["bytes_uploaded"] == 0
    assert 0 < ex["task_cpu_seconds_max"] <= ex["task_cpu_seconds_sum"]  # for the cluster model
    assert _remote_keys(url) == before
    assert not list((clone / "locks").glob("ray-probe.*"))  # removed after the merge
