"""Issue 15 item 13: one meaning per word. "blocks" is a commit's tensor blocks by position in
commit, show, ls and diff; sizes in binary units with MiB/s rates; ratios are stored/raw;
no bare "unique"; "1 block", not "1 blocks"."""

from __future__ import annotations

import re

import torch
from safetensors.torch import save_file

SINGULAR_BUG = re.compile(r"\b1 (blocks|tensors|files|changed block pairs|stored blocks)\b")


def test_blocks_count_the_same_thing_in_commit_show_ls_and_diff(ms, tiny_family) -> None:
    folder = tiny_family.experts["lowrank_attn"]
    c = ms("commit", folder, "-b", "again", "--base", "main", "-m", "again", "--json").json()
    n = c["blocks"]
    assert n > c["tensors"]  # several blocks per tensor (4 KiB blocks): positions, not tensors
    show = ms("show", "again", "--json").json()
    ls = ms("ls", "again", "--tensors", "--json").json()
    diff = ms("diff", "main", "again", "--json").json()
    assert show["blocks"] == ls["blocks"] == sum(t["blocks"] for t in ls["tensors"]) == n
    assert diff["totals"]["blocks_total"] == n
    # the text forms print the same number
    t = ms("commit", folder, "-b", "again2", "--base", "main", "-m", "again")
    assert f", {n} blocks (0 new)," in t.err  # the stat cache read nothing: still n blocks
    assert f"tensors, {n} blocks\n" in ms("show", "again").out
    assert ms("ls", "again", "--tensors").out.splitlines()[-1].endswith(f", {n} blocks")
    assert re.search(rf"\d+ of {n} blocks changed", ms("diff", "main", "again").out)


def test_sizes_are_binary_with_binary_rates(ms, tiny_family) -> None:
    outs = [
        ms("commit", tiny_family.experts["frozen"], "-b", "f2", "-m", "f2").err,
        ms("analyze", "frozen", "--base", "main").out,
    ]
    for out in outs:
        assert "GB/s" not in out and " MB" not in out and " GB" not in out
        assert re.search(r"\((\d+ B|[\d.]+ [KMG]iB)/s\)", out), out


def test_ratios_are_stored_over_raw_and_unique_is_gone(ms) -> None:
    du = ms("du", "--json").json()
    assert du["stored_raw_ratio"] == du["stored_bytes"] / du["deduplicated_bytes"] < 1
    assert du["deduplicated_logical_ratio"] == du["deduplicated_bytes"] / du["logical_bytes"]
    assert not {"dedup_ratio", "compression_ratio", "total_ratio", "unique_bytes"} & set(du)
    text = ms("du").out
    assert "stored/raw" in text and "unique" not in text
    assert not re.search(r"\d\.\d+x\b", text.split("merge commits")[0])  # no raw/stored "4.80x"
    show = ms("show", "frozen", "--json").json()
    assert show["stored_raw_ratio"] == show["stored_bytes"] / show["deduplicated_bytes"]
    assert "unique_bytes" not in show
    out = ms("show", "frozen").out
    assert "unique" not in out and f"(stored/raw {show['stored_raw_ratio']:.3f})" in out


def test_one_block_is_singular(ms, tmp_path) -> None:
    path = tmp_path / "one" / "model.safetensors"
    path.parent.mkdir()
    save_file({"w": torch.ones(4, 4)}, str(path))
    c = ms("commit", path.parent, "-b", "one", "-m", "one")
    assert c.code == 0, c.err
    assert "1 file, 1 tensor, 1 block (1 new)" in c.err
    outs = [
        c.err,
        ms("show", "one").out,
        ms("ls", "one", "--tensors").out,
        ms("diff", "one", "one").out,
        ms("du").out,
        ms("checkout", "one", tmp_path / "co").out,
    ]
    for out in outs:
        assert not SINGULAR_BUG.search(out), out
    assert "(1 tensor)" in outs[1] and "1 file, 1 tensor, 1 block\n" in outs[1]
    assert outs[2].splitlines()[-1] == "1 tensor, 1 block"
    assert "0 of 1 block changed" in outs[3]
    assert ": 1 file, " in outs[5]


def test_store_wide_counts_say_stored_blocks(ms, tmp_path) -> None:
    """fsck, gc, repack, du, push, fetch and evict count distinct block objects: "stored
    blocks", never bare "blocks" (that is a commit's tensor blocks)."""
    assert ms("remote", "add", "origin", f"file://{tmp_path / 'remote'}").code == 0
    outs = {
        "fsck": ms("fsck").out,
        "gc": ms("gc", "--dry-run").out,
        "repack": ms("repack", "--dry-run").out,
        "du": ms("du").out,
        "push": ms("push", "origin", "main").out,
    }
    for name, out in outs.items():
        counts = re.findall(r"\d[\d,]* (\w+ )?blocks?\b", out)
        assert counts and all(w == "stored " for w in counts), (name, out)
        assert not SINGULAR_BUG.search(out), out


def test_progress_bars_show_binary_rates(fam_store, tmp_path) -> None:
    """The bar next to "0.2/1.2 MiB" says MiB/s, not rich's decimal MB/s (run as a user would,
    with the bar forced on as on a terminal)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MERGESTORE_PROGRESS": "1", "TTY_COMPATIBLE": "1", "COLUMNS": "160"}
    cmd = [sys.executable, "-c", "from mergestore.cli.entry import run; run()"]
    r = subprocess.run(
        [*cmd, "--store", str(fam_store), "checkout", "frozen", str(tmp_path / "co")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"\d B/s|[\d.]+ [KMG]iB/s", r.stderr), r.stderr[-500:]
    assert not re.search(r"[\d.]+ [kMG]B/s", r.stderr)
