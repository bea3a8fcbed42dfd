"""A check shared by the lane tests: CLI merges that must never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def assert_merges_skip_torch(store_dir: Path, configs: list[str]) -> None:
    """Run `merge --config C -b mI --json` for each config in one fresh interpreter (through
    the CLI's main) and fail if any merge fails or torch ends up in sys.modules."""
    code = f"""
import sys
from mergestore.cli.main import main
for i, cfg in enumerate({configs!r}):
    try:
        main(["--store", {str(store_dir)!r}, "merge", "--config", cfg, "-b", f"m{{i}}", "--json"])
    except SystemExit as e:
        assert not e.code, e.code
assert "torch" not in sys.modules, "torch was imported"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
