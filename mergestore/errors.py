"""Exceptions. Every error a user can cause is a MergestoreError with a one-line message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """The hint ` (did you mean 'x'?)` for the nearest of `choices` to a mistyped `word`
    (difflib's ratio >= 0.6), else an empty string."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != word else ""


class MergestoreError(Exception):
    """Base for errors the CLI reports as one line on stderr with a non-zero exit."""

    exit_code = 1


class FormatError(MergestoreError):
    """An input file (safetensors header, index json, checkpoint layout) is invalid."""


class NotACheckpointError(MergestoreError):
    """A path that should hold a checkpoint does not."""


class StoreNotFoundError(MergestoreError):
    """No store at the given or discovered location."""


class RefError(MergestoreError):
    """A ref does not exist, is ambiguous, or has an invalid name."""


class AmbiguousRefError(RefError):
    """A name that means more than one thing (a branch and a tag; a prefix of two commits)."""


class CorruptionError(MergestoreError):
    """Stored data does not match its id or its index entry."""


class CheckoutError(MergestoreError):
    """A checkout target is unsafe or not empty."""


class MergeError(MergestoreError):
    """A merge configuration or its inputs are invalid."""


class BudgetError(MergestoreError):
    """An I/O budget cannot be honoured."""


class LockTimeoutError(MergestoreError):
    """Another process holds the store's write lock for too long."""
