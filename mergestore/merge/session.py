"""One write session for a whole merge: a failed merge leaves the store as it was.

Everything a merge writes goes into one WriteSession, published with the merge commit in one
transaction: the folders (and hub ids, .bin weights) it stores as inputs, a BASE+ADAPTER input
applied, the output blocks it computes, its journal, its stat-cache and input-commit entries.
While it runs, this process reads them through the session (Repository.read_through); no other
process sees any of it.

- It succeeds: everything is published at once, then the saved copy (below) is removed.
- It fails (an error in a method, a corrupt or missing block, a shape found wrong late, a full
  disk, an error writing --out): the session is rolled back: its pack bytes are cut off, packs
  it created are removed, nothing was published. Every store file is as before, byte for byte.
- It is interrupted (Ctrl-C, SIGTERM) after some tensors were computed: like git keeping the
  objects of an interrupted fetch, the computed work is kept so that the same merge run again
  resumes (#18). At every journal flush but the last (the publish follows it) the session is
  saved (store/pending.py: packs fsynced, then a file naming its blocks, objects and journal);
  on an interrupt that file stays and the error line says what was kept and how to drop it
  (`mergestore merge --abort`, or gc after its grace period). A kill -9 leaves the same file.
  Interrupted before the first save, nothing is kept: the session is rolled back as for a
  failure.

The next merge adopts what killed or interrupted merges saved (published with its own commit, so
a re-run of the same plan reuses their tensors); gc publishes them first, and their journals then
age out after the grace period as before.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any

from mergestore.errors import MergestoreError
from mergestore.store import pending
from mergestore.store.repo import Repository, WriteSession

ABORT_HINT = "`mergestore merge --abort` drops it (gc does after its grace period)"


class MergeInterrupted(KeyboardInterrupt):
    """Ctrl-C/SIGTERM during a merge whose computed tensors were kept for a re-run to resume;
    str() is the one line the CLI prints, `details` what --json adds."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class MergeSession:
    """The write session of one merge (see the module docstring); a context manager."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.session: WriteSession | None = None
        self.saved: pending.SessionFile | None = None
        self.adopted: list[Any] = []  # orphaned saved sessions taken up (their files)
        self._through: Any = None
        self.kept: dict[str, Any] = {}  # what the last save holds (for the interrupt line)
        self._orphans: Any = None

    def __enter__(self) -> MergeSession:
        ws = self.repo.writer()
        ws.__enter__()
        self.session = ws
        try:
            self._orphans = pending.orphans(self.repo)  # held locked until this merge ends
            for orphan in self._orphans.__enter__():
                if pending.adopt(self.repo, ws, orphan):
                    self.adopted.append(orphan.path)
            self._through = contextlib.ExitStack()
            self._through.enter_context(self.repo.read_through(ws))
            self._through.enter_context(self.repo.cached_objects())  # decoded once a merge
        except BaseException as e:
            ws.__exit__(type(e), e, e.__traceback__)
            self._release_orphans()
            raise
        self.saved = pending.SessionFile(self.repo, ws)
        return self

    @property
    def ws(self) -> WriteSession:
        if self.session is None:
            raise MergestoreError("the merge session is not open")
        return self.session

    def save(self, plan: bytes, ref: str | None, done: int, total: int) -> None:
        """Make what is computed so far survive a kill (called at every journal flush but the
        last)."""
        assert self.saved is not None
        self.kept = {"plan": plan.hex(), "ref": ref, "tensors_done": done, "tensors": total}
        self.saved.save(self.kept)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ws, saved = self.ws, self.saved
        assert saved is not None
        if self._through is not None:
            self._through.__exit__(None, None, None)
            self._through = None
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        try:
            self._finish(ws, saved, exc_type, exc, tb, interrupted)
        finally:
            self._release_orphans()
            self.session = None

    def _release_orphans(self) -> None:
        if self._orphans is not None:
            self._orphans.__exit__(None, None, None)
            self._orphans = None

    def _finish(
        self,
        ws: WriteSession,
        saved: pending.SessionFile,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        interrupted: bool,
    ) -> None:
        if ws.published:
            ws.__exit__(None, None, None)
            saved.remove()
            for path in self.adopted:  # published with this merge
                pending.unlink(path)
            pending.remove_dir_if_empty(self.repo)
        elif interrupted and saved.saved:
            error = self._interrupted()
            ws.__exit__(None, None, None)  # no rollback: the saved blocks stay for a re-run
            saved.release()
            raise error from exc
        else:
            ws.discard()
            ws.__exit__(exc_type or MergestoreError, exc, tb)
            saved.remove()

    def _interrupted(self) -> MergeInterrupted:
        k = self.kept
        details = {"kept": {**k, "bytes": _saved_bytes(self.ws)}}
        msg = (
            f"interrupted: kept {k['tensors_done']} of {k['tensors']} tensors computed, and the"
            f" inputs stored, for a re-run of this merge to resume; {ABORT_HINT}"
        )
        return MergeInterrupted(msg, details)


def _saved_bytes(ws: WriteSession) -> int:
    return sum(end - start for start, end, _ in ws.pack_sizes().values())


def abort_merges(repo: Repository) -> dict[str, int]:
    """`merge --abort`: drop what interrupted or killed merges kept for a re-run: their saved
    sessions (packs cut back where nothing was written after them, else left to gc) and the
    published journals of merges (gc published them, or an older version did). A running
    merge's session is left alone, and so are the tensors journaled for a lazy merge commit."""
    from mergestore.store import merges

    dropped = pending.drop_orphans(repo)
    # a merge's journal names the branch it was for; tensors read from a lazy merge commit
    # (journaled under its plan, no branch) stay for its materialize
    published = [
        pid
        for pid in merges.published_journals(repo)
        if (merges.journal(repo, pid) or {}).get("ref") is not None
    ]
    if published:
        with repo.writer() as ws:
            for pid in published:
                merges.set_journal(ws, pid, None)
            ws.publish()
    return {
        "sessions_dropped": dropped["sessions"],
        "bytes_freed": dropped["bytes_freed"],
        "journals_dropped": len(published),
    }
