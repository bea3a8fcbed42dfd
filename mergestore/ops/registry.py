"""Merge-method registry: every method module registers its MethodSpec here at import time.

Importing ``mergestore.ops`` imports every method module, so the registry is complete as soon
as anything in this package is used.
"""

from __future__ import annotations

from mergestore.errors import MergeError, did_you_mean
from mergestore.ops.spec import MethodSpec

_METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; a duplicate name is a programming error."""
    if spec.name in _METHODS:
        raise ValueError(f"merge method {spec.name!r} is already registered")
    _METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The declaration of a method, or MergeError naming the known ones."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        known = ", ".join(method_names())
        hint = did_you_mean(name, method_names()) if isinstance(name, str) else ""
        raise MergeError(f"unknown merge method {name!r}{hint} (known: {known})") from None


def method_names() -> list[str]:
    """All registered method names, sorted."""
    return sorted(_METHODS)
