"""Read-ahead across a merge's tasks: the disk fetches the next tasks' blocks while the cores
merge the current ones.

Each task's reads are announced to the kernel (posix_fadvise WILLNEED, exactly the spans the
task will read: store/reader.py) when the engine admits it. Admission runs only as far ahead as
the memory bound allows (merge/inflight.py), and with a cold page cache that left the disk idle
while the tasks being merged were decoded: a 1.78B-parameter task_arithmetic merge read its
3 GB of packs at 100-230 MB/s from a disk that reads 300 MB/s, on 1.0-1.7 of 2 cores
(docs/benchmarks.md, issue 14 session 24). So the tasks after the one admitted are announced
too, up to `budget` bytes of pack ahead of it. Announced pages cost no memory of the process;
the budget keeps them few enough to stay cached until they are read, so the disk reads no
block the merge does not count.

The index entries looked up to announce a task are kept for its worker (`take`): the worker
reads them without looking its blocks up again, and without announcing them again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from mergestore.store.index import BlockLocation

READ_AHEAD_BYTES = 256 << 20

Locations = Mapping[bytes, BlockLocation]


class ReadAhead:
    """Announces tasks' reads in task order, up to `budget` pack bytes past the one admitted."""

    def __init__(
        self,
        n_tasks: int,
        planned: Callable[[int], Locations],
        advise: Callable[[Locations], None],
        budget: int = READ_AHEAD_BYTES,
    ) -> None:
        self.n_tasks = n_tasks
        self.planned = planned  # task index -> the blocks it will read
        self.advise = advise
        self.budget = budget
        self._next = 0  # the first task not announced yet
        self._ahead: deque[tuple[int, int]] = deque()  # (task, pack bytes) announced, not admitted
        self._ahead_bytes = 0
        self.announced_bytes = 0  # for tests and traces
        self._kept: dict[int, Locations] = {}  # task -> its announced blocks, until taken

    def admitted(self, index: int) -> None:
        """Task `index` is admitted: announce it (unless it was) and the tasks after it that
        fit in the budget."""
        while self._ahead and self._ahead[0][0] <= index:
            self._ahead_bytes -= self._ahead.popleft()[1]
        while self._next < self.n_tasks and (
            self._next <= index or self._ahead_bytes < self.budget
        ):
            i = self._next
            self._next += 1
            locations = self.planned(i)
            if not locations:
                continue
            self.advise(locations)
            self._kept[i] = locations
            nbytes = sum(loc.length for loc in locations.values())
            self.announced_bytes += nbytes
            if i > index:
                self._ahead.append((i, nbytes))
                self._ahead_bytes += nbytes

    def take(self, index: int) -> Locations | None:
        """The blocks task `index` was announced with (once; None if it read nothing)."""
        return self._kept.pop(index, None)
