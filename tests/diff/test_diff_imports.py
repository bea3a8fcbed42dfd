"""`diff` and `commit --base` do not import torch when the C kernels compute the statistics.

Importing torch takes about a second here; a diff of two 1 GB checkpoints takes 0.3 s.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mergestore import native


@pytest.mark.needs(native.kernels is not None, "C kernels not built")
def test_diff_and_commit_with_base_leave_torch_unloaded(tiny_family, tmp_path) -> None:
    code = f"""
import sys
from mergestore import Store
s = Store.init({str(tmp_path / "st")!r})
s.commit({str(tiny_family.base)!r}, message="base", branch="main")
s.commit({str(tiny_family.experts["frozen"])!r}, message="x", branch="x", base="main")
res = s.diff("main", "x")
assert res.totals()["blocks_changed"] > 0
assert "torch" not in sys.modules, "torch was imported"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
