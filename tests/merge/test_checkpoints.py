"""Engine checkpoints (journal flushes inside one pipeline pass): each sees exactly the outputs
of the tasks before it, with their blocks kept and no later task's."""

from __future__ import annotations

import threading

import pytest

from fixtures.family import FamilySpec
from fixtures.store import family_store
from mergestore.api import Store
from mergestore.merge.engine import Engine, HashSink, OutputTensor
from mergestore.merge.pieces import run_tasks

EXPERTS = ["uneven0", "uneven1"]


class KeepingSink(HashSink):
    """HashSink that remembers which blocks were kept, and on which thread."""

    def __init__(self) -> None:
        self.kept: list[bytes] = []
        self.threads: set[int] = set()

    def commit_blocks(self, prepared):  # type: ignore[no-untyped-def]
        self.threads.add(threading.get_ident())
        ids = super().commit_blocks(prepared)
        self.kept.extend(ids)
        return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    spec = FamilySpec(
        n_layers=3, hidden=64, intermediate=128, vocab=256, experts=tuple(EXPERTS), seed=3
    )
    s, _fam = family_store(tmp_path_factory.mktemp("ckpt"), spec)
    yield s
    s.close()


@pytest.mark.parametrize("threads", ["1", "2"])
def test_checkpoints_see_each_prefix_with_its_blocks_kept(
    store: Store, threads: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergestore.merge.config import config_from_cli

    monkeypatch.setenv("MERGESTORE_THREADS", threads)
    cfg = config_from_cli("task_arithmetic", "main", EXPERTS, [0.5, 0.3], {}, None, None, None)
    prep = store.prepare_merge(cfg)
    tasks = prep.tasks
    n = len(tasks)
    ends = [0, 1, n // 3, n // 3, n // 2, n - 1, n]
    sink = KeepingSink()
    seen: list[tuple[int, list[OutputTensor], list[bytes], int]] = []

    def at(end: int):  # type: ignore[no-untyped-def]
        def fn(outs: list[OutputTensor]) -> None:
            seen.append((end, list(outs), list(sink.kept), threading.get_ident()))

        return fn

    engine = Engine(store.repo, method="task_arithmetic", dtype=None, out_dtype=None, seed=0)
    outs, _stats, _taken = run_tasks(
        engine, tasks, sink, len(prep.models), checkpoints=[(e, at(e)) for e in ends]
    )
    plain, _s, _t = run_tasks(
        Engine(store.repo, method="task_arithmetic", dtype=None, out_dtype=None, seed=0),
        tasks,
        HashSink(),
        len(prep.models),
    )
    assert outs == plain  # checkpoints change nothing in the outputs
    assert [e for e, *_ in seen] == ends  # each once, in order
    for end, prefix, kept, thread in seen:
        assert prefix == outs[:end]
        # every block of the prefix is kept, and no block of a later task yet
        assert kept == [b for o in outs[:end] for b in o.blocks]
        if 0 < end < n and threads == "2":
            assert thread in sink.threads  # on the writer, between two tasks' blocks


def test_a_failing_checkpoint_fails_the_run(store: Store) -> None:
    from mergestore.merge.config import config_from_cli

    cfg = config_from_cli("task_arithmetic", "main", EXPERTS, [0.5, 0.3], {}, None, None, None)
    prep = store.prepare_merge(cfg)

    def boom(outs: list[OutputTensor]) -> None:
        raise RuntimeError("flush failed")

    engine = Engine(store.repo, method="task_arithmetic", dtype=None, out_dtype=None, seed=0)
    with pytest.raises(RuntimeError, match="flush failed"):
        run_tasks(engine, prep.tasks, HashSink(), len(prep.models), checkpoints=[(2, boom)])
