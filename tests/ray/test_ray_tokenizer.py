"""A tokenizer merge (tokenizer_source: union) on Ray gives the local executor's tree: the
workers receive the merged vocabulary with their tasks."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "habits"))
from tokmodels import write_family  # noqa: E402

from mergestore.api import Store  # noqa: E402


def test_union_merge_on_ray_equals_local(ray_session, cli, tmp_path: Path) -> None:
    fam = write_family(tmp_path / "fam")
    s = tmp_path / "store"
    assert cli("--store", s, "init").code == 0
    for name, path in fam.items():
        assert cli("--store", s, "commit", path, "-b", name).code == 0
    trees = {}
    for executor in ("local", "ray"):
        r = cli(
            "--store", s, "merge", "--method", "task_arithmetic", "--base", "base", "chat", "tool",
            "-w", "0.5", "-w", "0.5", "--tokenizer-source", "union", "-b", executor,
            "--executor", executor, "--force", "--json",
        )  # fmt: skip
        assert r.code == 0, r.err
        with Store.open(s) as st:
            trees[executor] = st.get_commit(bytes.fromhex(r.json()["commit"])).tree
    assert trees["ray"] == trees["local"]
