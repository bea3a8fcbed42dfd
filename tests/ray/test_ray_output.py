"""Where Ray workers put their output (merge/ray_output.py, remote/worker_output.py): into the
driver's store when they see it, else uploaded to its remote and fetched back, verified, by
the driver. The end-to-end runs against SeaweedFS are in test_ray_remote.py; here the choice,
its errors, the driver's check of uploaded packs and a driver killed mid-merge."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store
from mergestore.api import Store
from mergestore.errors import MergeError
from mergestore.merge.ray_output import WorkerOutput
from mergestore.merge.ray_worker import GroupJob
from mergestore.remote.layout import RemoteCorruptionError
from mergestore.remote.url import parse_url
from mergestore.remote.worker_output import adopt_uploaded, upload_worker_packs
from mergestore.store import codecs
from mergestore.store.blocks import block_id, raw_check
from mergestore.store.repo import StoreConfig
from mergestore.store.worker_packs import WorkerPacks

MERGE = ("merge", "--method", "task_arithmetic", "--base", "main", "dense_small", "-w", "0.5",
         "-b", "x", "--executor", "ray")  # fmt: skip


def _state(root: Path, cli) -> tuple[str, list[str]]:
    return (
        cli("--store", root, "log", "--all", "--json").out,
        sorted(p.name for p in (root / "packs").iterdir()),
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [("remote", "no remote for Ray workers"), ("bogus", "MERGESTORE_RAY_OUTPUT must be one of")],
)
def test_an_output_mode_that_cannot_work_is_refused_in_one_line(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch, value: str, words: str
) -> None:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    root = store.repo.path
    store.close()
    before = _state(root, cli)
    monkeypatch.setenv("MERGESTORE_RAY_OUTPUT", value)
    for extra in ((), ("--json",)):
        r = cli("--store", root, *MERGE, *extra)
        assert r.code == 1, r.out + r.err
        if extra:
            assert words in r.json()["error"]
        else:
            assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
            assert words in r.err
    assert _state(root, cli) == before


def _job(tmp_path: Path, **kw: object) -> GroupJob:
    return GroupJob(
        pack_dir=str(tmp_path / "store" / "packs"),
        config=StoreConfig(),
        block_size=4096,
        places={},
        parts=[],
        **kw,  # type: ignore[arg-type]
    )


def test_a_worker_chooses_the_store_when_it_sees_the_probe(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.touch()
    url = parse_url(f"file://{tmp_path / 'remote'}")
    remotes = {"remote_urls": {"origin": url}, "upload_remote": "origin"}
    seen = WorkerOutput(_job(tmp_path, output="auto", probe=str(probe), **remotes))
    assert not seen.remote and seen.pack_dir == tmp_path / "store" / "packs"
    blind = WorkerOutput(_job(tmp_path, output="auto", probe=str(tmp_path / "gone"), **remotes))
    assert blind.remote and blind.pack_dir != tmp_path / "store" / "packs"
    blind.close()
    assert not blind.pack_dir.exists()  # its temporary folder is removed
    forced = WorkerOutput(_job(tmp_path, output="remote", probe=str(probe), **remotes))
    assert forced.remote
    forced.close()
    with pytest.raises(MergeError, match="cannot see the store at .*no remote"):
        WorkerOutput(_job(tmp_path, output="auto", probe=str(tmp_path / "gone")))


def _uploaded(tmp_path: Path, url: str, n: int = 3) -> tuple[list[bytes], list]:
    """n blocks written by a worker into packs of its own and uploaded to `url`."""
    work = tmp_path / "worker"
    work.mkdir()
    packs = WorkerPacks(work, StoreConfig(), {})
    ids = []
    for i in range(n):
        raw = bytes((i * 7 + k * k) % 251 for k in range(8192))
        bid = block_id(raw)
        packs.add_encoded(bid, len(raw), codecs.encode_block(raw, dtype=None), raw_check(bid, raw))
        ids.append(bid)
    return ids, upload_worker_packs(parse_url(url), "origin", work, packs.finish())


def test_the_driver_verifies_what_it_adopts_from_the_remote(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    url = f"file://{remote}"
    ids, up = _uploaded(tmp_path, url)
    assert len(up) == 1 and up[0].sent
    store = Store.init(tmp_path / "s")
    try:
        packs = [(u.name, u.index) for u in up]
        # tampered with on the remote: refused, nothing stored
        path = remote / "packs" / f"{up[0].name}.pack"
        good = path.read_bytes()
        bad = bytearray(good)
        bad[-10] ^= 0xFF
        path.write_bytes(bytes(bad))
        with (
            pytest.raises(RemoteCorruptionError, match="does not (match|decode)"),
            store.repo.writer() as session,
        ):
            adopt_uploaded(session, parse_url(url), "origin", packs, set(ids))
            session.publish()
        assert not any(store.repo.has_block(b) for b in ids)
        # a forged index (not the one the pack is named by): refused
        with store.repo.writer() as session, pytest.raises(RemoteCorruptionError):
            adopt_uploaded(session, parse_url(url), "origin", [(up[0].name, b"x")], set(ids))
        path.write_bytes(good)
        with store.repo.writer() as session:
            n, fetched = adopt_uploaded(session, parse_url(url), "origin", packs, set(ids[:2]))
            session.publish()
        assert n == 2 and fetched == sum(len(store.repo.read_stored(b)[2]) for b in ids[:2])
        assert store.repo.read_block(ids[1]) == bytes((7 + k * k) % 251 for k in range(8192))
        assert not store.repo.has_block(ids[2])  # only what the merge uses is adopted
    finally:
        store.close()


def _settled(keys, timeout: float = 60.0) -> set[str]:
    """The remote's pack keys once none has appeared for two seconds (a dead driver's
    running tasks finish and upload for a moment after it died)."""
    deadline = time.monotonic() + timeout
    last: set[str] | None = None
    stable = 0
    while time.monotonic() < deadline:
        now = keys()
        stable = stable + 1 if now == last else 0
        if stable >= 4:
            break
        last = now
        time.sleep(0.5)
    return now


def test_driver_killed_mid_merge_publishes_nothing_and_leaves_its_uploads(
    ray_session, tmp_path: Path, cli
) -> None:
    """Workers without the store, driver killed after two tasks came back: no ref, object or
    block of the merge is in the clone; the packs the workers uploaded stay on the remote,
    unreferenced (there is no remote gc, as for a killed push)."""
    src, _fam = family_store(tmp_path / "src", PRESETS["tiny"])
    remote = tmp_path / "remote"
    src.add_remote("origin", f"file://{remote}")
    assert src.push("origin", "main", "dense_small").ok
    src.close()
    clone = tmp_path / "c"
    assert cli("clone", "--lazy", f"file://{remote}", clone).code == 0
    assert cli("--store", clone, "branch", "dense_small", "origin/dense_small").code == 0
    before = _state(clone, cli)

    def keys() -> set[str]:
        return {p.name for p in (remote / "packs").iterdir()}

    remote_before = keys()
    address = ray_session.get_runtime_context().gcs_address
    env = dict(
        os.environ,
        MERGESTORE_FAULT="ray-task-done@2",
        MERGESTORE_PROGRESS="0",
        MERGESTORE_RAY_OUTPUT="remote",
    )
    p = subprocess.run(
        [sys.executable, "-m", "mergestore.cli.main", "--store", str(clone), *MERGE,
         "--ray-address", address],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode == 137, p.stderr[-2000:]
    assert cli("--store", clone, "show", "x").code != 0
    assert _state(clone, cli) == before  # no new pack, ref or object in the clone
    orphans = _settled(keys) - remote_before
    assert any(k.endswith(".idx") for k in orphans)  # uploaded, never adopted: they stay
    assert cli("--store", clone, "fsck").code == 0


def test_a_block_only_in_the_drivers_store_fails_a_worker_without_it_in_one_line(
    ray_session, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The expert was never pushed: a worker with no path to the store cannot read it. One
    line names the tensor and the block and says why; nothing is published."""
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    store.add_remote("origin", f"file://{tmp_path / 'remote'}")
    assert store.push("origin", "main").ok
    root = store.repo.path
    store.close()
    before = _state(root, cli)
    monkeypatch.setenv("MERGESTORE_RAY_OUTPUT", "remote")
    r = cli("--store", root, *MERGE)
    assert r.code == 1 and r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "error: tensor '" in r.err and "only in the driver's store" in r.err, r.err
    assert "not on remote origin" in r.err, r.err
    assert _state(root, cli) == before


def test_a_sweep_without_the_store_equals_local_merges(
    ray_session, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`merge --config a.yml b.yml c.yml` on Ray, workers through the remote: the merges share
    tasks (and so the uploaded packs); each adopts the blocks it uses, checked, and gets the
    local merge's tree."""
    src, _fam = family_store(tmp_path / "src", PRESETS["tiny"])
    remote = tmp_path / "remote"
    src.add_remote("origin", f"file://{remote}")
    assert src.push("origin", "main", "dense_small", "lowrank_attn").ok
    paths = []
    for i, w in enumerate((0.2, 0.5, 0.8)):
        p = tmp_path / f"w{i}.yml"
        p.write_text(
            "merge_method: task_arithmetic\nbase_model: main\nmodels:\n"
            f"  - model: dense_small\n    parameters: {{weight: {w}}}\n"
            "  - model: lowrank_attn\n    parameters: {weight: 0.4}\n"
        )
        paths.append(p)
        src.merge(config=p, branch=p.stem)  # the reference
    clone = tmp_path / "c"
    assert cli("clone", "--lazy", f"file://{remote}", clone).code == 0
    for name in ("dense_small", "lowrank_attn"):
        assert cli("--store", clone, "branch", name, f"origin/{name}").code == 0
    monkeypatch.setenv("MERGESTORE_RAY_OUTPUT", "remote")
    r = cli("--store", clone, "merge", "--config", *paths, "--executor", "ray", "--json")
    assert r.code == 0, r.err
    runs = [m["run"]["executor"] for m in r.json()["merges"]]
    assert sum(x["output_packs_uploaded"] for x in runs) > 0
    assert all(x["output_bytes_fetched"] > 0 for x in runs)
    c = Store.open(clone)
    try:
        for p in paths:
            assert c.get_commit(p.stem).tree == src.get_commit(p.stem).tree
    finally:
        c.close()
        src.close()
    assert cli("--store", clone, "fsck", "--full").code == 0
