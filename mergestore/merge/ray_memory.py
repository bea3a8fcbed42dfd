"""How much memory a Ray task may need, declared to Ray as the task's `memory` resource.

A task runs the streaming engine on its tensors one merge part after another. The engine keeps
the tensors in flight within the largest tensor's bytes (engine.py, `memory_limit`), so a task
holds at most (operands + 2) x its largest tensor at compute width: the inputs (and the base),
the output and the kernel's temporaries. Besides that it holds the spans its block reader has
in flight (the read-ahead), a sweep task's cache of stored blocks, and the worker process
itself. `task_memory` adds these up; the executor asks Ray for that much `memory` with each
task, so Ray runs on a node only as many tasks as its memory holds (requirement 3 of issue 17).
A task that no node can hold is refused before anything is submitted (`check_fits`), naming
its largest tensor, instead of waiting forever to be scheduled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mergestore.errors import MergeError
from mergestore.fast_dataclass import dataclass
from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.merge.engine import TensorTask
from mergestore.store.reader import MAX_SPAN

# The worker process itself: Python, Ray, numpy, mergestore, and torch for the methods off
# the C lane (a Ray worker that merged tiny tensors with slerp peaked at 0.30 GiB here).
WORKER_BASE = 384 << 20
READ_THREADS = 8  # threads.default_workers() is at most 8 on any node
# a compute dtype named in a config (`dtype:`), by its width
CONFIG_DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class Footprint:
    """A task's planned peak memory, and what it is made of."""

    tensors: int  # (operands + 2) x the largest tensor, at compute width
    read_ahead: int
    cache: int
    largest: str  # the tensor that sets `tensors`

    @property
    def total(self) -> int:
        return self.tensors + self.read_ahead + self.cache + WORKER_BASE


def operands(task: TensorTask) -> list[Any]:
    """The input tensors a task's kernel holds: its inputs, its base, and the reference that
    stands in for omitted blocks when it is not the base."""
    out = [r for r in (task.base, *task.inputs) if r is not None]
    if task.reference is not None and all(r is not task.reference for r in out):
        out.append(task.reference)
    return out


def tensor_memory(task: TensorTask, compute_dtype: str | None = None) -> int:
    """(operands + 2) x the tensor's bytes at the widest of its input dtypes and the compute
    dtype (a piece of a larger tensor counts as the whole tensor: an upper bound)."""
    ops = operands(task)
    if not ops:
        return 0
    elements = max(r.nbytes // DTYPE_SIZES[r.dtype] for r in ops)
    width = max(DTYPE_SIZES[r.dtype] for r in ops)
    width = max(width, CONFIG_DTYPE_SIZES.get(compute_dtype or "", 0))
    return (len(ops) + 2) * elements * width


def read_ahead(threads: int = READ_THREADS) -> int:
    """Spans a task's block reader holds at once: two per reading thread, MAX_SPAN each."""
    return max(2, 2 * threads) * MAX_SPAN


def footprint(
    parts: Iterable[tuple[Sequence[TensorTask], str | None]],
    *,
    cache_bytes: int = 0,
    threads: int = READ_THREADS,
) -> Footprint:
    """A task's footprint from its merge parts, each (tensors, compute dtype): the parts run
    one after another, so the largest tensor of any of them sets the bound."""
    most, name = 0, ""
    for tasks, dtype in parts:
        for t in tasks:
            m = tensor_memory(t, dtype)
            if m > most:
                most, name = m, t.plan.name
    return Footprint(most, read_ahead(threads), cache_bytes, name)


def largest_node_memory(nodes: Iterable[dict[str, Any]]) -> int | None:
    """The largest `memory` resource of the alive nodes in `ray.nodes()` (None: unknown)."""
    sizes = [int(n.get("Resources", {}).get("memory", 0)) for n in nodes if n.get("Alive", True)]
    return max(sizes) if sizes and max(sizes) > 0 else None


def check_fits(fp: Footprint, node_memory: int | None) -> Footprint:
    """The footprint to declare: as planned if a node can hold it, else with a smaller block
    cache (it only saves reads); a task no node can hold at all is a MergeError."""
    if node_memory is None or fp.total <= node_memory:
        return fp
    spare = node_memory - (fp.total - fp.cache)
    if spare >= 0:
        return Footprint(fp.tensors, fp.read_ahead, spare, fp.largest)
    raise MergeError(
        f"tensor {fp.largest!r} needs about {_gib(fp.total - fp.cache)} of memory on one Ray "
        f"worker ((inputs + 2) x its size, plus read-ahead), more than any node offers "
        f"({_gib(node_memory)})"
    )


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
