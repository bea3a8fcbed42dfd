"""Exceptions. Every error a user can cause is a MergestoreError with a one-line message."""

from __future__ import annotations


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
