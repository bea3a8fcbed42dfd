"""Codec registry and chain specs.

Spec grammar (the canonical text the index stores for every block)::

    spec   := stage ("|" stage)*        stages in encode order; decode runs them right to left
    stage  := name [":" params]         name is a registered codec; params never contain "|"

    raw                                  stored as is
    zstd:<level>                         one zstd frame
    bplane:w=<W>,rot=<R>,planes=<P>.<P>  byte planes, low byte first; P is r (raw), h (literal-only
                                         zstd frame) or z<level> (zstd frame)
    xor                                  XOR with the reference block (must come first)

Only canonical text is accepted (parse then render must give back the same string), so one
chain has exactly one spec and the store's spec -> id table cannot hold aliases.
To add a codec: write one module with a frozen dataclass stage and add it to `CODECS`.
"""

from __future__ import annotations

from functools import lru_cache

from .base import ReferenceStage, Stage, corrupt
from .byteplane import BytePlane
from .raw import Raw
from .xordelta import XorDelta
from .zstd import Zstd

AnyStage = Stage | ReferenceStage

CODECS: dict[str, type[Stage] | type[ReferenceStage]] = {
    c.name: c for c in (Raw, Zstd, BytePlane, XorDelta)
}


def chain_to_spec(chain: tuple[AnyStage, ...]) -> str:
    return "|".join(stage.to_spec() for stage in chain)


@lru_cache(maxsize=4096)
def parse_spec(spec: str) -> tuple[AnyStage, ...]:
    """Parse a canonical spec into its stages (cached; stages are immutable and thread-safe).

    Raises CorruptionError: specs come from the index, so a bad one means a damaged store
    (or one written by a newer mergestore that knows more codecs).
    """
    if not spec:
        raise corrupt("empty codec spec")
    chain = []
    for text in spec.split("|"):
        name, sep, params = text.partition(":")
        cls = CODECS.get(name)
        if cls is None:
            raise corrupt(f"unknown codec {name!r} in spec {spec!r}")
        try:
            chain.append(cls.from_spec(params if sep else None))
        except ValueError as e:
            raise corrupt(f"bad codec spec {spec!r}: {e}") from None
    stages = tuple(chain)
    if any(s.uses_reference for s in stages[1:]):
        raise corrupt(f"reference codec must be the first stage in {spec!r}")
    if any(isinstance(s, Raw) for s in stages) and len(stages) > 1:
        raise corrupt(f"raw must stand alone in {spec!r}")
    if chain_to_spec(stages) != spec:
        raise corrupt(f"non-canonical codec spec {spec!r}")
    return stages
