"""Ref names and the ref expression syntax (NAME, id prefix, HEAD, REF~N, REF^N)."""

from __future__ import annotations

import re

from mergestore.errors import RefError
from mergestore.fast_dataclass import dataclass

HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"
HEAD = "HEAD"
MIN_PREFIX = 6

_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def check_ref_name(name: str, what: str = "branch") -> str:
    """Validate a branch or tag name the way git's check-ref-format does (roughly)."""
    bad = (
        not name
        or _BAD_CHARS.search(name) is not None
        or ".." in name
        or "//" in name
        or "@{" in name
        or name == "@"
        or name.startswith(("/", "-", "."))
        or name.endswith(("/", ".", ".lock"))
        or any(part.startswith(".") for part in name.split("/"))
        or name == HEAD
        or len(name.encode()) > 255
    )
    if bad:
        raise RefError(f"invalid {what} name {name!r}")
    return name


def check_new_ref_name(name: str, what: str = "branch") -> str:
    """check_ref_name, and refuse a name that a ref expression would read as a commit id
    prefix (6+ hex characters): `log cafe01` would then mean two things."""
    check_ref_name(name, what)
    if looks_like_hex(name):
        raise RefError(
            f"invalid {what} name {name!r}: {len(name)} hex characters read as a commit id"
            " prefix; pick a name with a non-hex character"
        )
    return name


@dataclass(frozen=True)
class RefExpr:
    """A parsed ref expression: a starting name plus a chain of parent steps."""

    start: str
    steps: tuple[
        tuple[str, int], ...
    ]  # ("~", n) = n-th first-parent ancestor; ("^", n) = n-th parent


_STEP = re.compile(r"([~^])(\d*)")


def parse_ref_expr(text: str) -> RefExpr:
    """Split 'main~2^2' into ('main', [('~', 2), ('^', 2)])."""
    if not text or text != text.strip():
        raise RefError(f"invalid ref {text!r}")
    cut = len(text)
    for i, ch in enumerate(text):
        if ch in "~^":
            cut = i
            break
    start, rest = text[:cut], text[cut:]
    if not start:
        raise RefError(f"invalid ref {text!r}")
    steps = []
    pos = 0
    while pos < len(rest):
        m = _STEP.match(rest, pos)
        if not m:
            raise RefError(f"invalid ref {text!r}")
        n = int(m.group(2)) if m.group(2) else 1
        steps.append((m.group(1), n))
        pos = m.end()
    return RefExpr(start=start, steps=tuple(steps))


def looks_like_hex(text: str) -> bool:
    return len(text) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in text.lower())


def ambiguous_ref(short: str, full_names: list[str]) -> str:
    """The one-line error for a name that is both a branch and a tag (or remote ref)."""
    return (
        f"ambiguous ref {short!r}: it names {' and '.join(full_names)}; "
        f"say which with the full name (e.g. {full_names[0]})"
    )
