"""The layers the docs promise (docs/CONTRIBUTING-internal.md, "Layout"), checked on the imports.

Every `import` / `from ... import` in mergestore/ is read with ast (lazy imports inside
functions included, TYPE_CHECKING ones too: a type is a dependency as well). A module may import
its own layer and the layers below it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mergestore

PKG = Path(mergestore.__file__).parent

# What each layer must never import (prefixes of module names).
FORBIDDEN = {
    "mergestore.threads": ["mergestore."],
    "mergestore.errors": ["mergestore."],
    "mergestore.fast_dataclass": ["mergestore."],
    "mergestore.formats": [
        "mergestore.store",
        "mergestore.ops",
        "mergestore.merge",
        "mergestore.api",
        "mergestore.cli",
    ],
    "mergestore.store": [
        "mergestore.formats",
        "mergestore.ops",
        "mergestore.merge",
        "mergestore.api",
        "mergestore.cli",
        "mergestore.ingest",
        "mergestore.checkout",
        "mergestore.diff",
        "mergestore.fsck",
        "mergestore.usage",
        "mergestore.remote",
    ],
    # Remote transport sits beside store/: it uses the store's interfaces, nothing above.
    "mergestore.remote": [
        "mergestore.formats",
        "mergestore.ops",
        "mergestore.merge",
        "mergestore.api",
        "mergestore.cli",
    ],
    "mergestore.ops": [
        "mergestore.store",
        "mergestore.formats",
        "mergestore.merge",
        "mergestore.api",
        "mergestore.cli",
    ],
    "mergestore.merge": ["mergestore.api", "mergestore.cli"],
    "mergestore.usage": ["mergestore.api", "mergestore.cli"],
    "mergestore.history": ["mergestore.api", "mergestore.cli"],
    "mergestore.fsck": ["mergestore.api", "mergestore.cli", "mergestore.merge"],
    "mergestore.ingest": ["mergestore.api", "mergestore.cli", "mergestore.merge"],
    "mergestore.checkout": ["mergestore.api", "mergestore.cli", "mergestore.merge"],
    "mergestore.diff": ["mergestore.api", "mergestore.cli", "mergestore.merge"],
    "mergestore.diff_retyped": ["mergestore.api", "mergestore.cli", "mergestore.merge"],
    "mergestore.api": ["mergestore.cli"],
    # The CLI goes through mergestore.Store, never around it to the storage layer.
    "mergestore.cli": ["mergestore.store"],
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # `from mergestore import native` imports the submodule mergestore.native
            out.extend((node.lineno, f"{mod}.{a.name}") for a in node.names if mod == "mergestore")
    return out


def _layer(module: str) -> str | None:
    best = None
    for layer in FORBIDDEN:
        if (module == layer or module.startswith(layer + ".")) and (
            best is None or len(layer) > len(best)
        ):
            best = layer
    return best


def _violations() -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = _module_name(path)
        layer = _layer(me)
        if layer is None:
            continue
        for lineno, mod in _imports(path):
            for prefix in FORBIDDEN[layer]:
                target = prefix.rstrip(".")
                if mod == target or mod.startswith(target + ".") or mod.startswith(prefix):
                    if prefix == "mergestore." and mod.startswith(layer):
                        continue
                    bad.append(f"{path.relative_to(PKG.parent)}:{lineno} imports {mod}")
    return bad


def test_no_module_imports_a_layer_above_it() -> None:
    assert _violations() == []


@pytest.mark.parametrize(
    "module",
    [
        "mergestore.ops.gta",
        "mergestore.ops.lane16",
        "mergestore.usage",
        "mergestore.cli.maintenance",
    ],
)
def test_the_checker_sees_these_modules(module: str) -> None:
    # Guards the checker itself: each of these once crossed a layer and has a layer rule now.
    assert _layer(module) is not None
    path = PKG.parent / (module.replace(".", "/") + ".py")
    assert _imports(path), f"no imports read from {path}"


# Pack files and the LMDB index belong to store/ (and to the remote transport beside it, which
# moves pack files): above them, code goes through the store's functions, never the formats.
PACK_FORMAT_NAMES = {"PACK_MAGIC", "ENTRY_MAGIC", "ENTRY_HEADER", "pack_path"}
OWNERS = ("mergestore.store", "mergestore.remote")


def _format_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [f"{node.lineno}: import {a.name}" for a in node.names if a.name == "lmdb"]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "lmdb":
                bad.append(f"{node.lineno}: from lmdb")
            if node.module == "mergestore.store.packs":
                names = {a.name for a in node.names} & PACK_FORMAT_NAMES
                bad += [f"{node.lineno}: {name}" for name in sorted(names)]
        elif isinstance(node, ast.Attribute) and node.attr in PACK_FORMAT_NAMES:
            bad.append(f"{node.lineno}: .{node.attr}")
    return bad


def test_only_the_store_touches_pack_files_and_the_index() -> None:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = _module_name(path)
        if any(me == o or me.startswith(o + ".") for o in OWNERS):
            continue
        bad += [f"{path.relative_to(PKG.parent)}:{use}" for use in _format_uses(path)]
    assert bad == []


def test_the_pack_format_check_sees_a_use(tmp_path: Path) -> None:
    # Guards the check itself: each form it looks for is found in a module that has it.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import lmdb\n"
        "from mergestore.store.packs import ENTRY_HEADER, ReadMeter\n"
        "from mergestore.store import packs\n"
        "n = packs.PACK_MAGIC\n"
    )
    assert _format_uses(sample) == ["1: import lmdb", "2: ENTRY_HEADER", "4: .PACK_MAGIC"]
