"""`mergestore demo`, the README's main job, end to end from the CLI."""

from __future__ import annotations

from pathlib import Path

from mergestore.api import Store


def test_demo_runs_every_step_and_proves_its_claims(cli, tmp_path: Path) -> None:
    work = tmp_path / "demo"
    r = cli("demo", "--preset", "tiny", "--keep", work, "--json")
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["checkout_identical"] is True
    assert rep["merge"]["replay_identical"] is True
    # the diff of the frozen expert was settled from kept statistics, reading nothing
    assert rep["diff"]["totals"]["unchanged"] > 0 and rep["diff"]["totals"]["changed"] > 0
    assert rep["diff"]["bytes_read"] == 0
    run = rep["merge"]["budget_run"]
    assert 0 < run["expert_bytes_read"] <= run["budget_bytes"] < run["expert_bytes_full"]
    assert rep["du"]["stored_bytes"] < rep["du"]["logical_bytes"]
    # the commits the report names are in the kept store, with their parents
    with Store.open(work / "store") as s:
        merged = s.get_commit(bytes.fromhex(rep["merge"]["ties"]))
        assert bytes.fromhex(rep["base"]) in merged.parents
        assert s.resolve("frozen") == bytes.fromhex(rep["frozen"])


def test_demo_prints_a_readable_report(cli, tmp_path: Path) -> None:
    r = cli("demo", "--preset", "tiny", "--keep", tmp_path / "demo")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert any(line.startswith("checkout frozen: byte-identical = True") for line in lines)
    assert any(line.startswith("replay ta25") and "identical = True" for line in lines)
