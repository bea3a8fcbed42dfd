"""Issue 15 item 6: the merge progress bar advances, counting tensors done of the total and
the bytes read and written (mergestore/iotally.py)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

from mergestore import iotally
from mergestore.cli import commands_merge
from mergestore.cli.output import io_text

MERGE = ["merge", "--method", "ties", "--base", "main", "dense_small", "frozen"]
MERGE += ["-w", "1", "-w", "1", "--param", "density=0.5", "-b", "m"]


def test_merge_bar_counts_tensors(ties, monkeypatch) -> None:
    seen: dict = {"advanced": 0}

    @contextlib.contextmanager
    def fake_bar(description, total, enabled=True, unit="bytes", io=False):
        seen.update(total=total, unit=unit, io=io)

        def advance(n: int) -> None:
            seen["advanced"] += n

        yield advance

    monkeypatch.setattr(commands_merge, "progress_bar", fake_bar)
    r = ties("-b", "m", "--json")
    assert r.code == 0, r.err
    tensors = r.json()["tensors"]
    assert seen == {"total": tensors, "unit": "tensors", "advanced": tensors, "io": True}


def test_merge_bar_bytes_grow_with_the_tensors(ms, monkeypatch) -> None:
    """At every tensor the bar advances, the bytes it shows (read from the packs, written to
    them and to --out) have grown: several distinct counts, ending at what the merge did."""
    seen: list[tuple[int, int]] = []

    @contextlib.contextmanager
    def fake_bar(description, total, enabled=True, unit="bytes", io=False):
        assert io
        start = iotally.totals()

        def advance(n: int) -> None:
            read, written = iotally.totals()
            seen.append((read - start[0], written - start[1]))

        yield advance

    monkeypatch.setattr(commands_merge, "progress_bar", fake_bar)
    monkeypatch.setenv("MERGESTORE_JOURNAL_BYTES", "20000")  # several chunks, published apart
    r = ms(*MERGE, "--json")
    assert r.code == 0, r.err
    run = r.json()
    reads = [s[0] for s in seen]
    writes = [s[1] for s in seen]
    assert reads == sorted(reads) and writes == sorted(writes)
    assert len(set(reads)) > 3 and len(set(writes)) > 3
    # the last tensor's count is what the merge read: expert, base and planning reads (a
    # block that is a delta needs its reference too, so at least the run's own figures)
    assert reads[-1] >= run["expert_bytes_read"] + run["base_bytes_read"] > 0
    assert writes[-1] >= run["bytes_written"] > 0


def test_bar_text_shows_bytes() -> None:
    start = iotally.totals()
    iotally.add_read(3 << 20)
    iotally.add_written(1 << 20)
    assert io_text(start) == "read 3.00 MiB, wrote 1.00 MiB"


def test_bar_renders_done_of_total(fam_store, ties_args) -> None:
    """The real bar, in a terminal-like console: `21/21 tensors` appears on stderr."""
    code = (
        "import rich.console, sys\n"
        "orig = rich.console.Console.__init__\n"
        "def init(self, *a, **k):\n"
        "    k['force_terminal'] = True\n"
        "    orig(self, *a, **k)\n"
        "rich.console.Console.__init__ = init\n"
        "from mergestore.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    env = {**os.environ, "MERGESTORE_PROGRESS": "1"}
    args = ["--store", str(fam_store), *ties_args, "-b", "m"]
    p = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode == 0, p.stderr
    assert "tensors" in p.stderr and "/21" in p.stderr, p.stderr[-2000:]
    shown = re.findall(r"read ([0-9.]+) (B|KiB|MiB), wrote", p.stderr)
    assert shown and float(shown[-1][0]) > 0, p.stderr[-2000:]
