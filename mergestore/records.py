"""One stored tensor (a TensorRecord) read back as a torch tensor, block by block."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergestore.formats.safetensors import torch_dtype
from mergestore.store.objects import TensorRecord
from mergestore.store.packs import ReadMeter
from mergestore.store.repo import Repository

if TYPE_CHECKING:
    import torch


def read_record(
    repo: Repository, rec: TensorRecord, meter: ReadMeter | None = None
) -> torch.Tensor:
    buf = bytearray(rec.nbytes)
    pos = 0
    for bid in rec.blocks:
        raw = repo.read_block(bid, meter)
        buf[pos : pos + len(raw)] = raw
        pos += len(raw)
    import torch

    dt = torch_dtype(rec.dtype)
    if rec.nbytes == 0:
        return torch.empty(rec.shape, dtype=dt)
    return torch.frombuffer(buf, dtype=dt).reshape(rec.shape)
