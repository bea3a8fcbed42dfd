"""Issue 15 item 6: the merge progress bar advances, counting tensors done of the total."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from mergestore.cli import commands_merge


def test_merge_bar_counts_tensors(ties, monkeypatch) -> None:
    seen: dict = {"advanced": 0}

    @contextlib.contextmanager
    def fake_bar(description, total, enabled=True, unit="bytes"):
        seen.update(total=total, unit=unit)

        def advance(n: int) -> None:
            seen["advanced"] += n

        yield advance

    monkeypatch.setattr(commands_merge, "progress_bar", fake_bar)
    r = ties("-b", "m", "--json")
    assert r.code == 0, r.err
    tensors = r.json()["tensors"]
    assert seen == {"total": tensors, "unit": "tensors", "advanced": tensors}


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
