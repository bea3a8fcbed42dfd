"""`merge --device cpu|cuda[:N]` (mergekit's --cuda): where the torch lane computes.

Inputs are read and decoded on the CPU as always; each tensor's inputs are moved to the device,
merged there by the same torch kernels, and the result comes back to the CPU to be cut into
blocks. The torch-free lane (C kernels) runs on the CPU only, so a merge on a GPU takes the
torch lane. Whether the bits equal the CPU's depends on the method: see docs/merge-config.md.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mergestore.errors import MergeError

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(text: str | None) -> str | None:
    """None or "cpu" (the default) -> None; "cuda" / "cuda:N" checked against this machine."""
    if text is None:
        return None
    t = text.strip().lower()
    m = _DEVICE.match(t)
    if m is None:
        raise MergeError(f"--device {text!r}: expected cpu, cuda or cuda:N")
    if m.group(1) == "cpu":
        if m.group(2) is not None:
            raise MergeError(f"--device {text!r}: expected cpu, cuda or cuda:N")
        return None
    import torch

    if not torch.cuda.is_available():
        raise MergeError(f"--device {text}: CUDA is not available here (torch {torch.__version__})")
    n = int(m.group(2) or 0)
    if n >= torch.cuda.device_count():
        raise MergeError(f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s)")
    return f"cuda:{n}"


def to_device(x: torch.Tensor | None, device: str) -> torch.Tensor | None:
    return None if x is None else x.to(device, non_blocking=False)
