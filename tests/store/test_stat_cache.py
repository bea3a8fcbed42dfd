"""The stat cache: an unchanged folder costs a stat per file, not a re-read (store/statcache.py).

Reads are counted where the data is read (ingest.read_exact) as well as in the results, never
timed. Files are aged before the first commit: a file modified within RACY_WINDOW_NS of the
entry's write time is racy (git's rule) and is read again on purpose.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fixtures.family import PRESETS, make_family
from mergestore import ingest
from mergestore.api import Store
from mergestore.store.statcache import RACY_WINDOW_NS


class ReadCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        real = ingest.read_exact

        def counting(fd, buf, length, offset):
            view = real(fd, buf, length, offset)
            self.bytes += len(view)
            return view

        monkeypatch.setattr(ingest, "read_exact", counting)

    def take(self) -> int:
        n, self.bytes = self.bytes, 0
        return n


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> ReadCounter:
    return ReadCounter(monkeypatch)


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def age(folder: Path, seconds: float = 60.0) -> None:
    """Set every file's mtime well before now (out of the racy window)."""
    t = time.time_ns() - int(seconds * 1e9)
    for p in files_of(folder):
        os.utime(p, ns=(t, t))


@pytest.fixture
def family(tmp_path: Path):
    fam = make_family(tmp_path / "fam", PRESETS["tiny"])
    age(fam.root)
    return fam


def test_unchanged_folder_reads_no_data(family, store: Store, reads: ReadCounter) -> None:
    first = store.commit(family.base, message="base", branch="main")
    assert first.files_read == first.files
    assert reads.take() == first.bytes_read > 0
    again = store.commit(family.base, message="again", branch="main")
    assert reads.take() == 0
    assert (again.files_read, again.bytes_read, again.new_blocks) == (0, 0, 0)
    assert again.total_blocks == first.total_blocks  # what the commit holds, read or not
    assert again.tree == first.tree
    assert again.commit != first.commit  # a new commit (a new parent), the same tree


def test_touched_file_is_read_again(family, store: Store, reads: ReadCounter) -> None:
    first = store.commit(family.base, message="base", branch="main")
    reads.take()
    touched = files_of(family.base)[0]
    t = time.time_ns() - 30 * 10**9  # a new mtime, still out of the racy window
    os.utime(touched, ns=(t, t))
    again = store.commit(family.base, message="again", branch="main")
    assert again.files_read == 1
    assert reads.take() == again.bytes_read == touched.stat().st_size - header_len(touched)
    assert again.tree == first.tree  # same bytes, same tree


def test_changed_bytes_with_the_old_mtime_are_seen(
    family, store: Store, tmp_path: Path, reads: ReadCounter
) -> None:
    store.commit(family.base, message="base", branch="main")
    shard = next(p for p in files_of(family.base) if p.suffix == ".safetensors")
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # a tensor byte; same size
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime moves
    again = store.commit(family.base, message="changed", branch="main")
    assert again.files_read == 1 and reads.take() > 0
    out = tmp_path / "out"
    store.checkout("main", out)
    assert (out / shard.relative_to(family.base)).read_bytes() == bytes(data)


def test_racy_entry_is_read_again(family, store: Store, reads: ReadCounter) -> None:
    racy = files_of(family.base)[-1]
    now = time.time_ns()
    os.utime(racy, ns=(now, now))  # modified "just now": same tick as the entry's write
    store.commit(family.base, message="base", branch="main")
    reads.take()
    again = store.commit(family.base, message="again", branch="main")
    assert again.files_read == 1  # only the racy one, though its stat still matches
    # Once its mtime is older than the entry's write time, it is clean.
    old = now - 2 * RACY_WINDOW_NS
    os.utime(racy, ns=(old, old))
    store.commit(family.base, message="aged", branch="main")  # records the new stat
    reads.take()
    last = store.commit(family.base, message="clean", branch="main")
    assert last.files_read == 0 and reads.take() == 0


def test_verify_inputs_reads_everything(family, store: Store, cli, reads: ReadCounter) -> None:
    store.commit(family.base, message="base", branch="main")
    reads.take()
    res = cli("--store", store.path, "commit", family.base, "-m", "v", "--verify-inputs", "--json")
    assert res.code == 0, res.err
    out = res.json()
    assert out["files_read"] == out["files"] and out["bytes_read"] == reads.take() > 0
    res = cli("--store", store.path, "commit", family.base, "-m", "s", "--json")
    assert res.json()["files_read"] == 0 and reads.take() == 0


def test_entry_whose_objects_were_collected_is_not_trusted(
    family, store: Store, tmp_path: Path, reads: ReadCounter
) -> None:
    store.commit(family.base, message="base", branch="main")
    store.commit(family.experts["frozen"], message="x", branch="tmp", base="main")
    kept = {e.object for e in store.tree("main").entries}
    gone = [e.path for e in store.tree("tmp").entries if e.object not in kept]
    assert gone
    store.delete_branch("tmp")
    store.gc(grace=0)  # removes the expert's own file objects and blocks
    reads.take()
    again = store.commit(family.experts["frozen"], message="x", branch="tmp2", base="main")
    assert again.files_read == len(gone) and reads.take() == again.bytes_read > 0
    assert store.fsck(full=True).ok
    out = tmp_path / "out"
    store.checkout("tmp2", out)
    for path in gone:
        assert (out / path).read_bytes() == (family.experts["frozen"] / path).read_bytes()


def test_merge_of_committed_folders_costs_a_stat(family, store: Store, cli, reads) -> None:
    experts = [family.experts[n] for n in ("dense_small", "frozen")]
    args = ["--store", store.path, "merge", "--method", "task_arithmetic", "--base"]
    args += [family.base, *experts, "-w", "0.5", "-w", "0.5", "--json"]
    args += ["--no-write-model-card"]  # the card names the input commits, made anew each time
    first = cli(*args)
    assert first.code == 0, first.err
    run = first.json()
    assert run["input_files_read"] == run["input_files"] > 0
    assert reads.take() == run["input_bytes_read"] > 0
    second = cli(*args).json()
    assert (second["input_files_read"], second["input_bytes_read"]) == (0, 0)
    assert reads.take() == 0
    # The unchanged folders are the same input commits, so the plan is the same: a memo hit.
    assert (second["plan"], second["commit"], second["memo"]) == (run["plan"], run["commit"], True)
    verified = cli(*args, "--verify-inputs").json()
    assert verified["input_files_read"] == verified["input_files"]
    assert reads.take() == verified["input_bytes_read"] == run["input_bytes_read"]


def header_len(path: Path) -> int:
    """Bytes of a safetensors file before its tensor data (read by the scan, not the ingest)."""
    if path.suffix != ".safetensors":
        return 0
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")
