"""Progress of many merges (`merge --config a.yml b.yml ...`): the bar shows merges done of the
total and the bytes read so far, on Ray and locally; rendered as a terminal shows it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.family import PRESETS
from fixtures.store import family_store

# The real CLI in a child process whose rich consoles think they are terminals, so the
# (transient) bar is drawn on stderr; every frame stays in the captured text.
TERMINAL = (
    "import rich.console, sys\n"
    "orig = rich.console.Console.__init__\n"
    "def init(self, *a, **k):\n"
    "    k['force_terminal'] = True\n"
    "    k['width'] = 160\n"
    "    orig(self, *a, **k)\n"
    "rich.console.Console.__init__ = init\n"
    "from mergestore.cli.main import main\n"
    "main(sys.argv[1:])\n"
)
FRAME = re.compile(r"merges\s.*?(\d+)/(\d+)\s+(\d+(?:\.\d+)?) (B|KiB|MiB|GiB) read")
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def _configs(root: Path, n: int) -> list[Path]:
    root.mkdir()
    out = []
    for k in range(n):
        p = root / f"p{k}.yml"
        p.write_text(
            "merge_method: task_arithmetic\nbase_model: main\nmodels:\n"
            f"  - model: dense_small\n    parameters: {{weight: {0.1 + 0.2 * k}}}\n"
            "  - model: lowrank_attn\n    parameters: {weight: 0.3}\n"
        )
        out.append(p)
    return out


def _frames(stderr: str) -> list[tuple[int, int, int]]:
    """(done, total, bytes read) of every frame of the bar drawn."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stderr)  # drop the terminal's control codes
    return [(int(d), int(t), int(float(v) * UNITS[u])) for d, t, v, u in FRAME.findall(text)]


def _run(store: Path, configs: list[Path], *extra: str, env: dict[str, str]) -> list:
    args = ["--store", str(store), "merge", "--config", *map(str, configs), *extra]
    p = subprocess.run(
        [sys.executable, "-c", TERMINAL, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "MERGESTORE_PROGRESS": "1", **env},
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"{len(configs)} of {len(configs)} merges done" in p.stderr
    return _frames(p.stderr)


def _check(frames: list[tuple[int, int, int]], n: int) -> None:
    assert frames, "no progress bar was drawn"
    assert {t for _d, t, _b in frames} == {n}
    done = [d for d, _t, _b in frames]
    read = [b for _d, _t, b in frames]
    assert done == sorted(done) and read == sorted(read)  # it only moves forward
    assert done[-1] == n and read[-1] > 0
    assert len(set(read)) > 1  # bytes read moved while the merges ran


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, list[Path]]:
    store, _fam = family_store(tmp_path, PRESETS["tiny"])
    root = store.repo.path
    store.close()
    return root, _configs(tmp_path / "sweep", 3)


def test_many_merges_progress_locally(sweep) -> None:
    root, configs = sweep
    _check(_run(root, configs, env={}), len(configs))


def test_many_merges_progress_on_ray(ray_session, sweep) -> None:
    """The child joins this session's Ray instance (RAY_ADDRESS)."""
    root, configs = sweep
    address = ray_session.get_runtime_context().gcs_address
    frames = _run(root, configs, "--executor", "ray", env={"RAY_ADDRESS": address})
    _check(frames, len(configs))
