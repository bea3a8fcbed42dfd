"""Issue 15 item 5: a merge that fails while computing leaves the store byte for byte as it was:
no input it stored, no output block, no journal, no saved session, no ref or reflog entry
(merge/session.py). One interrupted (Ctrl-C, SIGTERM) keeps what it computed, says so in one
line, resumes when run again, and `merge --abort` drops what it kept."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergestore.api import Store
from mergestore.merge import outfolder, turn_writes
from mergestore.merge.engine import Engine, StoreSink
from tests.usability.test_merge_leaves_store import UP, snapshot

ROOT = Path(__file__).resolve().parents[2]
FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def base_only(tiny_family, tmp_path: Path, monkeypatch) -> Path:
    """A store holding only the base, on main; every tensor its own journal chunk, so the
    merge has saved its session several times before it fails."""
    monkeypatch.setenv("MERGESTORE_JOURNAL_BYTES", "1")
    path = tmp_path / "store"
    with Store.init(path, block_size=4096) as s:
        s.commit(tiny_family.base, message="base", branch="main")
    return path


def ties(store: Path, *models: str | Path, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["--store", str(store), "merge", "--method", "ties", "--base", "main"]
    for m in models:
        args += [str(m), "-w", "1"]
    return [*args, "--param", "density=0.5", "-b", "out", *extra]


def method_raises(monkeypatch, n: int, exc: BaseException) -> None:
    """The merge's method raises `exc` on its n-th tensor."""
    real, calls = Engine._merge, [0]

    def merge(self, ld):
        calls[0] += 1
        if calls[0] == n:
            raise exc
        return real(self, ld)

    monkeypatch.setattr(Engine, "_merge", merge)


def fails_on_call(monkeypatch, owner, name: str, n: int, exc: BaseException) -> None:
    real, calls = getattr(owner, name), [0]

    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(owner, name, wrapped)


def bin_copy(src: Path, dst: Path, *, reshape: str | None = None) -> Path:
    """Checkpoint `src` as one pytorch_model.bin (`reshape`: that tensor one row shorter)."""
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(f))
    if reshape:
        tensors[reshape] = tensors[reshape][:-1].clone()
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    torch.save(tensors, dst / "pytorch_model.bin")
    return dst


def adapter(base: Path, dst: Path) -> Path:
    """A PEFT LoRA adapter (r=2) of the base's q_proj and v_proj."""
    g = torch.Generator().manual_seed(3)
    t = {}
    for f in sorted(base.glob("*.safetensors")):
        for name, w in load_file(f).items():
            mod = name.removesuffix(".weight")
            if mod.endswith(("q_proj", "v_proj")) and w.dim() == 2:
                t[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(2, w.shape[1], generator=g)
                t[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(w.shape[0], 2, generator=g)
    dst.mkdir()
    save_file(t, dst / "adapter_model.safetensors", metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4.0, "target_modules": ["q_proj", "v_proj"]}
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def corrupt_a_block(store: Path, ref: str) -> None:
    """Flip a byte in the middle of one of `ref`'s own blocks (one the base has not)."""
    from mergestore.store.packs import pack_path

    with Store.open(store) as s:
        mine = {b for t in s.tensors(ref) for b in t.blocks}
        theirs = {b for t in s.tensors("main") for b in t.blocks}
        bid = sorted(mine - theirs)[0]
        loc = s.repo.block_location(bid)
        path = pack_path(s.repo.pack_dir, loc.pack)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["method-raises", "corrupt-block", "disk-full", "out-write",
                                  "out-files", "late-shape"])  # fmt: skip
def test_failed_merge_leaves_store_unchanged(
    cli, base_only: Path, tiny_family, tmp_path: Path, monkeypatch, kind: str
) -> None:
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    models: tuple[str | Path, ...] = (e1, e2)  # folders: stored by the merge, then dropped
    extra: tuple[str, ...] = ()
    want = "boom"
    if kind == "method-raises":
        method_raises(monkeypatch, 6, RuntimeError("boom"))
    elif kind == "corrupt-block":
        with Store.open(base_only) as s:
            s.commit(e1, message="e1", branch="e1", base="main")
        corrupt_a_block(base_only, "e1")
        models, want = ("e1", e2), "corrupt"
    elif kind == "disk-full":
        fails_on_call(monkeypatch, StoreSink, "commit_blocks", 4, FULL)  # the pack append
        want = "No space left"
    elif kind == "out-write":  # the --out folder's disk fills up mid-merge
        fails_on_call(monkeypatch, turn_writes, "_pwrite_all", 5, FULL)  # a block's write
        extra, want = ("--out", str(tmp_path / "folder")), "No space left"
    elif kind == "out-files":  # writing the folder's other files, after every tensor
        fails_on_call(monkeypatch, outfolder, "write_tree_files", 1, OSError(errno.EIO, "I/O"))
        extra, want = ("--out", str(tmp_path / "folder")), "I/O"
    else:  # a .bin input is checked only once stored: a shape it has wrong is found late
        models = (e1, bin_copy(e2, tmp_path / "bin", reshape=UP))
        want = "shape"
    before = snapshot(base_only)
    r = cli(*ties(base_only, *models, extra=(*extra, "--json")))
    assert r.code == 1, r.err
    assert want in r.json()["error"] and r.err.startswith("error: ")
    assert len(r.err.strip().splitlines()) == 1
    assert snapshot(base_only) == before  # index, refs, reflogs, packs: byte for byte
    assert not (base_only / "pending").exists()
    assert not (tmp_path / "folder").exists()
    assert not [p for p in tmp_path.iterdir() if "mergestore-tmp" in p.name]
    if kind in ("method-raises", "disk-full", "out-write", "out-files"):
        monkeypatch.undo()
        monkeypatch.setenv("MERGESTORE_JOURNAL_BYTES", "1")
        r = cli(*ties(base_only, *models, extra=(*extra, "--json")))
        assert r.code == 0, r.err  # and it runs afterwards, storing both folders
        run = r.json()
        assert run["tensors_reused"] == 0
        assert [i["new_blocks"] > 0 for i in run["imported"]] == [True, True]


@pytest.mark.parametrize("kind", ["bin", "adapter", "base+adapter", "lazy"])
def test_failed_merge_of_each_input_kind_leaves_store_unchanged(
    cli, base_only: Path, tiny_family, tmp_path: Path, monkeypatch, kind: str
) -> None:
    """Inputs the header check cannot look at before they are stored or computed: they go into
    the merge's session too, and a late failure drops them."""
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    if kind == "bin":
        other: str | Path = bin_copy(e2, tmp_path / "bin")
    elif kind == "adapter":
        other = f"main+{adapter(tiny_family.base, tmp_path / 'adapter')}"
    elif kind == "base+adapter":
        other = f"{e2}+{adapter(tiny_family.base, tmp_path / 'adapter')}"
    else:
        with Store.open(base_only) as s:
            s.commit(e2, message="e2", branch="e2", base="main")
        lazy = ["--store", base_only, "merge", "--lazy", "--method", "linear", "main", "e2"]
        assert cli(*lazy, "-w", "1", "-w", "1", "-b", "lz").code == 0
        other = "lz"
    before = snapshot(base_only)
    method_raises(monkeypatch, 15, RuntimeError("boom"))  # after the inputs are made
    r = cli(*ties(base_only, e1, other))
    assert r.code == 1 and "boom" in r.err, r.err
    assert snapshot(base_only) == before
    assert not (base_only / "pending").exists()
    monkeypatch.undo()
    r = cli(*ties(base_only, e1, other, extra=("--json",)))
    assert r.code == 0, r.err  # the same merge runs once nothing fails


def test_interrupted_merge_keeps_its_work_resumes_and_can_be_aborted(
    cli, base_only: Path, tiny_family, monkeypatch
) -> None:
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    before = snapshot(base_only)
    method_raises(monkeypatch, 7, KeyboardInterrupt())
    r = cli(*ties(base_only, e1, e2))
    assert r.code == 130
    [line] = r.err.strip().splitlines()
    assert line.startswith("error: interrupted: kept ") and "merge --abort" in line
    kept = int(line.split("kept ")[1].split()[0])
    assert kept >= 5
    assert snapshot(base_only) != before  # the computed blocks stay, saved for a re-run

    # --json says the same, with what was kept
    monkeypatch.undo()
    assert cli("--store", base_only, "merge", "--abort").code == 0
    assert snapshot(base_only) == before  # abort gives every byte back
    method_raises(monkeypatch, 7, KeyboardInterrupt())
    monkeypatch.setenv("MERGESTORE_JOURNAL_BYTES", "1")
    r = cli(*ties(base_only, e1, e2, extra=("--json",)))
    assert r.code == 130
    info = r.json()
    assert info["code"] == 130 and "merge --abort" in info["error"]
    assert info["kept"]["tensors_done"] == kept and info["kept"]["bytes"] > 0

    # run again: it resumes from what was kept, and leaves nothing saved behind
    monkeypatch.undo()
    monkeypatch.setenv("MERGESTORE_JOURNAL_BYTES", "1")
    r = cli(*ties(base_only, e1, e2, extra=("--json",)))
    assert r.code == 0, r.err
    run = r.json()
    assert run["tensors_reused"] == kept and run["tensors_computed"] == run["tensors"] - kept
    assert not (base_only / "pending").exists()
    assert cli("--store", base_only, "replay", "out").code == 0
    r = cli("--store", base_only, "merge", "--abort", "--json")
    assert r.code == 0 and r.json()["aborted"]["sessions_dropped"] == 0


def test_abort_cli(cli, base_only: Path) -> None:
    r = cli("--store", base_only, "merge", "--abort")
    assert r.code == 0 and "nothing to drop" in r.out
    r = cli("--store", base_only, "merge", "--abort", "--json")
    assert r.json() == {"aborted": {"sessions_dropped": 0, "bytes_freed": 0, "journals_dropped": 0}}
    for extra in ((), ("--json",)):
        r = cli("--store", base_only, "merge", "--abort", "--method", "linear", "main", *extra)
        assert r.code == 2 and r.err.startswith("error: --abort takes no other argument")
    assert "--abort" in cli("--store", base_only, "merge", "--help").out


def test_sigterm_interrupts_a_merge_as_ctrl_c_does(tiny_family, tmp_path: Path) -> None:
    """SIGTERM while the merge waits at its 4th journal flush: it stops as Ctrl-C does, keeps
    the 4 tensors, and a re-run reuses them."""
    store = tmp_path / "store"
    with Store.init(store, block_size=4096) as s:
        s.commit(tiny_family.base, message="base", branch="main")
    sync = tmp_path / "sync"
    sync.mkdir()
    env = dict(os.environ, MERGESTORE_PROGRESS="0", MERGESTORE_JOURNAL_BYTES="1")
    env.update(MERGESTORE_FAULT="pause:journal-flushed@4", MERGESTORE_FAULT_SYNC=str(sync))
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    cmd = [sys.executable, "-m", "mergestore.cli.main", *ties(store, e1, e2, extra=("--json",))]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (sync / "reached").exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert json.loads(out)["kept"]["tensors_done"] == 4
    assert "kept 4 of" in err
    del env["MERGESTORE_FAULT"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tensors_reused"] == 4


def test_bad_adapter_folder_is_refused_before_anything_is_stored(
    cli, base_only: Path, tiny_family, tmp_path: Path, monkeypatch
) -> None:
    """BASE+ADAPTER with the adapter as a folder is checked from the adapter's safetensors
    header (merge/precheck.py): a target the base lacks, or of the wrong shape, is refused
    before any folder is stored."""
    from mergestore.merge import inputs

    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    bad = adapter(tiny_family.base, tmp_path / "bad")
    t = load_file(bad / "adapter_model.safetensors")
    name = sorted(k for k in t if k.endswith("lora_A.weight"))[0]
    t[name] = torch.zeros(2, t[name].shape[1] + 1)  # fits no base tensor
    save_file(t, bad / "adapter_model.safetensors", metadata={"format": "pt"})
    stored: list[object] = []
    real = inputs.commit_checkpoint
    monkeypatch.setattr(
        inputs, "commit_checkpoint", lambda *a, **k: stored.append(a) or real(*a, **k)
    )
    before = snapshot(base_only)
    for other in (f"main+{bad}", f"{e2}+{bad}"):
        r = cli(*ties(base_only, e1, other, extra=("--json",)))
        assert r.code == 1 and "the adapter makes" in r.json()["error"], r.err
        assert stored == [] and snapshot(base_only) == before


def test_a_kept_session_taken_up_by_a_merge_is_not_dropped_under_it(
    tiny_family, tmp_path: Path
) -> None:
    """A merge killed with kill -9 leaves its saved session; the next merge adopts it and holds
    it locked until it ends, so a concurrent `merge --abort` cannot cut the bytes it is about
    to publish. Failing, that merge leaves it as it was, for --abort to drop."""
    store = tmp_path / "store"
    with Store.init(store, block_size=4096) as s:
        s.commit(tiny_family.base, message="base", branch="main")
    env = dict(os.environ, MERGESTORE_PROGRESS="0", MERGESTORE_JOURNAL_BYTES="1")
    env["MERGESTORE_FAULT"] = "journal-flushed@3"
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    cmd = [sys.executable, "-m", "mergestore.cli.main", *ties(store, e1, e2)]
    before = snapshot(store)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 137, p.stderr
    [saved] = list((store / "pending").iterdir())
    with Store.open(store) as s:
        with pytest.raises(RuntimeError), s.merge_session() as ms:
            assert ms.adopted == [saved]
            assert s.abort_merges()["sessions_dropped"] == 0  # held by this merge
            raise RuntimeError("the merge fails")
        assert saved.exists()
        res = s.abort_merges()
    assert res["sessions_dropped"] == 1 and res["bytes_freed"] > 0
    assert snapshot(store) == before  # killed, then aborted: as if the merge never ran


def test_abort_drops_a_journal_gc_published(cli, tiny_family, tmp_path: Path) -> None:
    """gc publishes a killed merge's saved session (its journal then ages as any other);
    `merge --abort` drops that journal too."""
    from mergestore.store import merges

    store = tmp_path / "store"
    with Store.init(store, block_size=4096) as s:
        s.commit(tiny_family.base, message="base", branch="main")
    env = dict(os.environ, MERGESTORE_PROGRESS="0", MERGESTORE_JOURNAL_BYTES="1")
    env["MERGESTORE_FAULT"] = "journal-flushed@3"
    e1, e2 = tiny_family.experts["dense_small"], tiny_family.experts["frozen"]
    cmd = [sys.executable, "-m", "mergestore.cli.main", *ties(store, e1, e2)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 137, p.stderr
    assert cli("--store", store, "gc").code == 0
    assert not (store / "pending").exists()
    with Store.open(store) as s:
        [(_, j)] = merges.journals(s.repo).items()
        assert len(j["tensors"]) == 3 and merges.published_journals(s.repo)
    r = cli("--store", store, "merge", "--abort", "--json")
    assert r.code == 0, r.err
    assert r.json()["aborted"] == {"sessions_dropped": 0, "bytes_freed": 0, "journals_dropped": 1}
    with Store.open(store) as s:
        assert merges.journals(s.repo) == {}
    r = cli("--store", store, "merge", "--abort")
    assert "nothing to drop" in r.out
