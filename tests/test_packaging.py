"""The install line the README gives (`pip install -e ".[dev]"`) installs everything the tests
use: every optional extra is part of `dev`, so .ci/run (which runs that line) cannot miss one."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_dev_extra_includes_every_other_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    dev = extras["dev"]
    dev_names = {_name(r) for r in dev}
    for extra, requirements in extras.items():
        if extra == "dev":
            continue
        self_ref = any(
            _name(r) == project["name"] and re.search(rf"\[[^\]]*\b{extra}\b", r) for r in dev
        )
        missing = {_name(r) for r in requirements} - dev_names
        assert self_ref or not missing, (
            f'extra "{extra}" is not in "dev" (add "{project["name"]}[{extra}]" to it): '
            f"the README's install line and CI would not install {sorted(missing)}"
        )


def test_ci_runs_the_readme_quick_start() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(commands) == 2  # what .ci/run expects to find
    assert 'pip install -e ".[dev]"' in commands[0]
    assert commands[1].startswith("python -m pytest")
    assert "README.md" in (ROOT / ".ci" / "run").read_text()
