"""Shared pieces of the codec stages: the stage interfaces, spec-parameter parsing, errors.

A stage is a small frozen dataclass holding only its configuration. It is registered by
`name` (see registry.py) and renders itself as ``name`` or ``name:params`` (see `to_spec`).
Stages are immutable and hold no buffers, so one parsed chain is shared by all threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, TypeAlias

from mergestore.errors import CorruptionError

AnyBuffer: TypeAlias = bytes | bytearray | memoryview
Buffer = AnyBuffer  # short alias used inside the stages

# Upper bound on what any stage will decode to. Blocks are ~1 MiB; this only stops a corrupted
# header from asking for an absurd allocation before the store's hash check can run.
MAX_DECODED_BYTES = 1 << 31


def corrupt(msg: str) -> CorruptionError:
    """One-line CorruptionError for a malformed payload or spec."""
    return CorruptionError(f"malformed block payload: {msg}")


class Stage(ABC):
    """A bytes -> bytes stage that needs nothing but its own configuration."""

    name: ClassVar[str]
    uses_reference: ClassVar[bool] = False

    @abstractmethod
    def encode(self, data: Buffer) -> Buffer: ...

    @abstractmethod
    def decode(self, data: Buffer) -> Buffer:
        """Invert `encode`; raise CorruptionError (never crash) on a malformed input."""

    @abstractmethod
    def to_spec(self) -> str:
        """Canonical text form; `from_spec(params)` of its parameter part gives back `self`."""

    @classmethod
    @abstractmethod
    def from_spec(cls, params: str | None) -> Stage:
        """Build from the text after ``name:`` (None when the spec has no ``:``)."""


class ReferenceStage(ABC):
    """A stage that also needs the reference block's raw bytes (delta codecs)."""

    name: ClassVar[str]
    uses_reference: ClassVar[bool] = True

    @abstractmethod
    def encode(self, data: Buffer, reference: Buffer) -> Buffer: ...

    @abstractmethod
    def decode(self, data: Buffer, reference: Buffer) -> Buffer: ...

    @abstractmethod
    def to_spec(self) -> str: ...

    @classmethod
    @abstractmethod
    def from_spec(cls, params: str | None) -> ReferenceStage: ...


def parse_params(params: str | None, keys: tuple[str, ...]) -> dict[str, str]:
    """Parse ``k1=v1,k2=v2`` with exactly `keys`, in that order (the canonical order)."""
    if params is None:
        raise ValueError("missing parameters")
    items = params.split(",")
    got = [item.partition("=") for item in items]
    if [k for k, _, _ in got] != list(keys) or any(sep != "=" or not v for _, sep, v in got):
        raise ValueError(f"expected parameters {','.join(k + '=' for k in keys)}")
    return {k: v for k, _, v in got}


def parse_int(text: str, lo: int, hi: int) -> int:
    """Canonical decimal integer in [lo, hi] (no '+', no leading zeros)."""
    value = int(text)
    if str(value) != text or not lo <= value <= hi:
        raise ValueError(f"integer {text!r} not canonical or outside [{lo}, {hi}]")
    return value
