"""Getting Ray ready while the driver plans.

A merge on Ray pays, before its first task runs: importing Ray and joining the cluster in the
driver (1-3 s here), and, on every node, starting worker processes for this driver's job and
importing mergestore's engine in them (another 1-2 s). None of it depends on the plan, so
`warm(address)` starts it on a background thread as soon as the command knows it will merge
on Ray, and the driver plans meanwhile (resolving inputs, the budget's selection, looking up
block places). `warm` submits one tiny task per cluster CPU that imports the worker's modules;
Ray keeps those worker processes for the merge's own tasks. `connect` (ray_executor) waits
for the warm-up and takes over its connection; if the warm-up failed, it connects again itself
and reports the error as usual.

Only a cluster that is already running is warmed (an address given, or $RAY_ADDRESS): starting
a local Ray instance in the background could leave it half-started if planning fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

_lock = threading.Lock()
_thread: threading.Thread | None = None
_pending: list[Any] = []  # the warm-up tasks' refs (kept, so nothing is cancelled)


def warm(address: str | None, cpus_per_task: int = 1) -> bool:
    """Start joining the Ray cluster at `address` (or $RAY_ADDRESS) and warming its workers
    in the background; False when there is nothing to warm (no running cluster named)."""
    global _thread
    target = address or os.environ.get("RAY_ADDRESS")
    if not target:
        return False
    with _lock:
        if _thread is not None:
            return True
        _thread = threading.Thread(
            target=_warm, args=(target, cpus_per_task), name="mergestore-ray-warm", daemon=True
        )
        _thread.start()
    return True


def wait() -> None:
    """Block until a warm-up started by `warm` has finished (successfully or not)."""
    with _lock:
        th = _thread
    if th is not None:
        th.join()


def _warm(address: str, cpus_per_task: int) -> None:
    with contextlib.suppress(Exception):  # connect() reports any failure when it retries
        import ray

        if not ray.is_initialized():
            quiet = logging.getLogger("ray._private.worker")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # "SIGTERM handler is not set": not the main thread
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            finally:
                quiet.setLevel(level)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(import_worker)
        for _ in range(max(1, cpus // max(1, cpus_per_task))):
            _pending.append(task.options(num_cpus=cpus_per_task).remote())


def import_worker() -> int:
    """What a worker imports before its first merge task (run on each warm worker)."""
    import mergestore.merge.pieces  # noqa: F401  (run_group imports it lazily)

    return os.getpid()


def warm_for(executor: Any, address: str | None) -> None:
    """`warm(address)` when `executor` names Ray (the hook the merge commands call before
    planning)."""
    if executor == "ray":
        warm(address)
