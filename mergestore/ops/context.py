"""Per-tensor context handed to kernels: the output tensor's name and the RNG rule."""

from __future__ import annotations

from typing import TYPE_CHECKING

import blake3

from mergestore import native
from mergestore.fast_dataclass import dataclass
from mergestore.lazy_numpy import np  # numpy is imported on first use
from mergestore.ops import alloc

if TYPE_CHECKING:
    import torch
else:
    from mergestore.lazy_torch import torch

U64 = (1 << 64) - 1  # the low half of a 128-bit Philox key

RNG_MODES = ("per_tensor", "global")


@dataclass(frozen=True)
class TensorContext:
    """What a kernel may know besides its tensors and parameters.

    rng="per_tensor" (mergestore's default): each (plan seed, tensor name, input index) gets its
    own CPU generator, so random masks do not depend on thread count, tensor order or which
    other tensors are merged. rng="global": kernels draw from torch's default generator in
    mergekit's order, which reproduces mergekit 0.1.5 after the same torch.manual_seed.
    """

    name: str
    seed: int = 0
    rng: str = "per_tensor"

    def __post_init__(self) -> None:
        if self.rng not in RNG_MODES:
            raise ValueError(f"rng must be one of {RNG_MODES}, not {self.rng!r}")

    def generator_seed(self, input_index: int) -> int:
        """The 63-bit seed of input ``input_index``'s generator for this tensor.

        blake3 over a length-prefixed encoding, so (seed, name, index) triples can't collide
        by concatenation.
        """
        return (
            int.from_bytes(self._digest(b"mergestore.ops.rng.v1\0", input_index, 8), "little") >> 1
        )

    def _digest(self, domain: bytes, input_index: int, length: int) -> bytes:
        name = self.name.encode("utf-8")
        h = blake3.blake3()
        h.update(domain)
        h.update(int(self.seed).to_bytes(16, "little", signed=True))
        h.update(len(name).to_bytes(8, "little"))
        h.update(name)
        h.update(int(input_index).to_bytes(8, "little", signed=True))
        return h.digest(length)

    def philox_key(self, input_index: int) -> int:
        """The 128-bit Philox key of input ``input_index``'s drop masks for this tensor.

        The same length-prefixed encoding as generator_seed, under its own domain string.
        """
        return int.from_bytes(
            self._digest(b"mergestore.ops.rng.philox.v1\0", input_index, 16), "little"
        )

    def keep_mask(self, input_index: int, probs: torch.Tensor) -> torch.Tensor:
        """A Bernoulli(probs) keep mask (1/0 in probs' dtype) for non-base input ``input_index``.

        per_tensor: element j is kept when u_j < probs_j, where u is the stream of float32
        uniforms in [0, 1) (24 random bits each) from a counter-based Philox4x64-10 generator
        keyed by philox_key(input_index): numpy's, about 4x faster than torch.bernoulli on
        the CPU, and the same bits on every platform and thread. global: torch.bernoulli on
        torch's default generator, where and as mergekit draws.

        `probs` may be one value expanded to the mask's shape (dare's density): the kernel
        then reads that one value instead of a tensor of copies.
        """
        if self.rng == "global":
            return torch.bernoulli(probs.contiguous())
        key = self.philox_key(input_index)
        if native.kernels is not None and probs.dtype in (torch.bfloat16, torch.float32):
            # The same stream and comparison in one C pass (~3 ns per element, numpy's
            # float32 Philox alone ~11), tested against numpy's in tests/test_native.py.
            one = probs.numel() > 1 and all(st == 0 for st in probs.stride())
            flat = probs.as_strided((1,), (1,)) if one else probs.contiguous().reshape(-1)
            out = alloc.empty((probs.numel(),), probs.dtype)
            bf16 = probs.dtype == torch.bfloat16
            view = (lambda t: t.view(torch.int16).numpy()) if bf16 else (lambda t: t.numpy())
            native.kernels.philox_keep(view(out), view(flat), key & U64, key >> 64, bf16)
            return out.reshape(probs.shape)
        gen = np.random.Generator(np.random.Philox(key=key))
        u = torch.from_numpy(gen.random(probs.numel(), dtype=np.float32)).reshape(probs.shape)
        return (u < probs.float()).to(probs.dtype)

    def drawer(self, input_index: int) -> KeepDraw:
        """keep_mask for input ``input_index`` as a callable (a sparsify.Draw), which also
        names its Philox key so a C kernel can draw and mask in one pass."""
        return KeepDraw(self, input_index)

    def generator(self, input_index: int) -> torch.Generator | None:
        """A fresh seeded CPU generator (per_tensor), or None = torch's global RNG (global)."""
        if self.rng == "global":
            return None
        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.generator_seed(input_index))
        return gen


@dataclass(frozen=True)
class KeepDraw:
    """probs -> ctx.keep_mask(index, probs); philox_key: the stream's key (None when the mask
    comes from torch's global generator)."""

    ctx: TensorContext
    index: int

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        return self.ctx.keep_mask(self.index, probs)

    @property
    def philox_key(self) -> int | None:
        return self.ctx.philox_key(self.index) if self.ctx.rng == "per_tensor" else None
