"""The identity stage: the payload is the raw block bytes."""

from __future__ import annotations

from typing import ClassVar

from mergestore.fast_dataclass import dataclass

from .base import Buffer, Stage


@dataclass(frozen=True)
class Raw(Stage):
    """Store bytes as they are (chosen when no codec saves enough)."""

    name: ClassVar[str] = "raw"

    def encode(self, data: Buffer) -> Buffer:
        return data

    def decode(self, data: Buffer) -> Buffer:
        return data

    def to_spec(self) -> str:
        return self.name

    @classmethod
    def from_spec(cls, params: str | None) -> Raw:
        if params is not None:
            raise ValueError("raw takes no parameters")
        return cls()
