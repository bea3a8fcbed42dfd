"""docs/search.md's evolutionary loop runs as written: lazy candidates, scored, losers evicted."""

from __future__ import annotations

import re
from pathlib import Path

from fixtures.store import commit_family
from mergestore.api import Store

DOC = Path(__file__).resolve().parents[2] / "docs" / "search.md"


def test_the_search_loop_in_the_docs_runs(tiny_family, store: Store) -> None:
    commit_family(store, tiny_family)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2
    ns: dict = {"store": store}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - our own documentation
    best = ns["best_branch"]
    assert best.startswith("search/") and store.merge_state(best) == "materialized"
    usage = store.disk_usage()["merges"]
    assert usage["evicted"] > 0 and usage["evicted_stored_bytes"] > 0
    losers = [b for b in store.branches() if store.merge_state(b) == "evicted"]
    assert losers
    assert store.replay(losers[0])["identical"]  # an evicted loser replays to the same bits
    assert store.read_tensor(losers[0], "model.embed_tokens.weight").numel() > 0
    assert store.fsck(full=True).ok
