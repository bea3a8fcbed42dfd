"""Per-tensor context handed to kernels: the output tensor's name and the RNG rule."""

from __future__ import annotations

from dataclasses import dataclass

import blake3
import torch

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
        name = self.name.encode("utf-8")
        h = blake3.blake3()
        h.update(b"mergestore.ops.rng.v1\0")
        h.update(int(self.seed).to_bytes(16, "little", signed=True))
        h.update(len(name).to_bytes(8, "little"))
        h.update(name)
        h.update(int(input_index).to_bytes(8, "little", signed=True))
        return int.from_bytes(h.digest(8), "little") >> 1

    def generator(self, input_index: int) -> torch.Generator | None:
        """A fresh seeded CPU generator (per_tensor), or None = torch's global RNG (global)."""
        if self.rng == "global":
            return None
        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.generator_seed(input_index))
        return gen
