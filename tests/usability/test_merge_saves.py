"""A merge saves its session for a resume at every journal flush but the last: the publish
follows the last one at once (merge/journal.py, store/pending.py)."""

from __future__ import annotations

import pytest

from mergestore.store import pending

MERGE = ["merge", "--method", "task_arithmetic", "--base", "main", "dense_small", "frozen"]
MERGE += ["-w", "0.5", "-w", "0.3", "-b", "m", "--json"]


@pytest.mark.parametrize("chunk_bytes", ["1", str(1 << 40)])
def test_saved_after_every_chunk_but_the_last(ms, fam_store, monkeypatch, chunk_bytes: str) -> None:
    saves: list[int] = []
    real_save = pending.SessionFile.save

    def counting_save(self, note):
        saves.append(note["tensors_done"])
        real_save(self, note)

    monkeypatch.setattr(pending.SessionFile, "save", counting_save)
    monkeypatch.setenv("MERGESTORE_JOURNAL_BYTES", chunk_bytes)  # a chunk per tensor, or one
    r = ms(*MERGE)
    assert r.code == 0, r.err
    tensors = r.json()["tensors"]
    assert tensors > 2
    # a chunk per tensor: saved after each of the first n - 1; one chunk: never
    assert saves == (list(range(1, tensors)) if chunk_bytes == "1" else [])
    assert not (fam_store / pending.PENDING_DIR).exists()  # published: no saved session is left
