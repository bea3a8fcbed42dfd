"""mergestore.lazy_torch: planning a merge loads no torch; the proxy is torch once used."""

from __future__ import annotations

import copy
import subprocess
import sys


def test_method_modules_and_planning_import_no_torch() -> None:
    code = """
import sys
import mergestore.cli.main, mergestore.merge.run, mergestore.merge.config, mergestore.ops
from mergestore.ops import get_method, validate_params
spec = get_method("ties")
validate_params(spec, {}, [{"weight": 0.5, "density": 0.4}], has_base=True)
assert "torch" not in sys.modules, "torch was imported"
from mergestore.lazy_torch import torch, is_imported
assert not is_imported() and "not imported" in repr(torch)
assert torch.float16.itemsize == 2  # the first attribute imports it
assert is_imported() and "torch" in sys.modules and "imported" in repr(torch)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_proxy_forwards_and_keeps_attributes() -> None:
    import torch as real

    from mergestore.lazy_torch import torch

    assert torch.bfloat16 is real.bfloat16
    assert isinstance(torch.zeros(2), torch.Tensor)
    assert "bfloat16" in vars(torch)  # kept: later lookups are plain attribute reads
    copy.copy(torch)  # dunder probes are not forwarded to torch
