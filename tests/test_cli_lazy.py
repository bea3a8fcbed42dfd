"""The CLI imports only the invoked command's module, and numpy only when it is used.

A merge answered by the memo ("already merged as ...") or a `log` only reads the index; its
process time was mostly imports (docs/benchmarks.md, the memo hit).
"""

from __future__ import annotations

import importlib
import subprocess
import sys

from mergestore.cli import main as cli_main


def test_command_table_matches_the_modules() -> None:
    found = {}
    for module in sorted(set(cli_main.COMMAND_MODULES.values())):
        mod = importlib.import_module(f"mergestore.cli.{module}")
        for cmd in mod.COMMANDS:
            found[cmd.name] = module
    assert found == cli_main.COMMAND_MODULES
    # every module the group can load is in the table
    assert set(cli_main.COMMAND_MODULES.values()) == set(cli_main._CORE) | {
        f"commands_{m}" for m in cli_main._OPTIONAL
    }


def _modules_after(code: str) -> set[str]:
    r = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('MODULES', *sorted(sys.modules))"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return set(r.stdout.rsplit("MODULES", 1)[1].split())


def test_a_command_imports_its_module_only_and_help_lists_all(cli, tmp_path) -> None:
    mods = _modules_after(
        "from mergestore.cli.main import main\n"
        "try:\n"
        f"    main(['--store', {str(tmp_path / 's')!r}, 'merge', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    assert "mergestore.cli.commands_merge" in mods
    for other in ("commands_remote", "commands_diff", "commands_demo", "maintenance"):
        assert f"mergestore.cli.{other}" not in mods
    assert "numpy" not in mods and "torch" not in mods and "obstore" not in mods
    r = cli("--help")
    assert r.code == 0
    for name in cli_main.COMMAND_MODULES:
        assert name in r.out
    r = cli("no-such-command")
    assert r.code == 2 and r.err.startswith("error: ")


def test_memo_hit_imports_no_numpy_torch_or_remote_client(tiny_family, tmp_path) -> None:
    from fixtures.store import commit_family
    from mergestore.api import Store

    s = Store.init(tmp_path / "s", block_size=4096)
    commit_family(s, tiny_family)
    s.merge(
        method="task_arithmetic",
        base="main",
        models=["dense_small", "frozen"],
        weights=[0.5, 0.5],
        branch="m",
    )
    s.close()
    args = ["--store", str(tmp_path / "s"), "merge", "--method", "task_arithmetic"]
    args += ["--base", "main", "dense_small", "frozen", "-w", "0.5", "-w", "0.5"]
    args += ["-b", "again", "--json"]
    mods = _modules_after(
        "import json, io, contextlib\n"
        "from mergestore.cli.main import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "assert json.loads(buf.getvalue())['memo'] is True\n"
    )
    for heavy in ("numpy", "torch", "ray", "obstore", "transformers", "safetensors"):
        assert heavy not in mods, heavy


def test_merge_of_store_refs_loads_no_commit_path(tiny_family, tmp_path) -> None:
    """A merge --out of store refs runs no folder commit, LoRA, saliency, tokenizer-merge or gc
    code, so its serial start does not import them (modules and dataclasses cost start-up)."""
    from fixtures.store import commit_family
    from mergestore.api import Store

    s = Store.init(tmp_path / "s", block_size=4096)
    commit_family(s, tiny_family)
    s.close()
    args = ["--store", str(tmp_path / "s"), "merge", "--method", "ties", "--base", "main"]
    args += ["dense_small", "frozen", "-w", "0.5", "-w", "0.5", "--param", "density=0.5"]
    args += ["-b", "m", "--out", str(tmp_path / "out")]
    mods = _modules_after(
        "from mergestore.cli.main import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
    )
    assert (tmp_path / "out" / "config.json").is_file()
    for unused in (
        "mergestore.ingest",
        "mergestore.sources",
        "mergestore.formats.lora",
        "mergestore.merge.lora",
        "mergestore.merge.saliency",
        "mergestore.merge.vocab",
        "mergestore.store.gc",
        "socket",
        "fractions",
        "torch",
    ):
        assert unused not in mods, unused
