"""Which branch a merge commit goes to, and the refusal to move an input's branch.

mergekit writes a merge to an output folder the user names; git's `merge` moves the current
branch. A merge of several checkpoints into the base's branch would silently replace the base,
so here a merge never moves HEAD's branch by default: without `-b` it creates a new branch
named from the method (`merge/ties-1`, `merge/ties-2`, ...). A `-b NAME` that exists moves, as
`git branch -f` does, unless NAME points at the base or an input of the merge: that needs
`force`, since moving it would drop the very model that was merged from its name.
"""

from __future__ import annotations

from collections.abc import Iterable

from mergestore.errors import MergeError
from mergestore.store.refs import HEADS, check_new_ref_name
from mergestore.store.repo import Repository

DEFAULT_PREFIX = "merge/"


def default_branch(repo: Repository, method: str) -> str:
    """The first free `merge/<method>-N` (N = 1, 2, ...)."""
    taken = set(repo.list_refs(HEADS + DEFAULT_PREFIX))
    n = 1
    while f"{HEADS}{DEFAULT_PREFIX}{method}-{n}" in taken:
        n += 1
    return f"{DEFAULT_PREFIX}{method}-{n}"


def merge_target(
    repo: Repository,
    method: str,
    branch: str | None,
    inputs: Iterable[tuple[str, bytes]],  # (how to name it in an error, its commit)
    *,
    force: bool = False,
) -> str:
    """The full ref the merge commit goes to; refuses an input's or the base's branch."""
    name = check_new_ref_name(branch) if branch else default_branch(repo, method)
    ref = HEADS + name
    old = repo.read_ref(ref)
    if old is not None and not force:
        for text, commit in inputs:
            if commit == old:
                raise MergeError(
                    f"branch {name!r} points at {text}; moving it would replace that model."
                    " Name another branch with -b, or pass --force"
                )
    return ref
