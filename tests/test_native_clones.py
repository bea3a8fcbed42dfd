"""Every compiled clone of the C kernels gives the twins' bits, not only the one this CPU picks.

The hot kernels are compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and baseline
x86-64, and the loader runs the best one the CPU has; the rest of the suite checks only that
one. Here the kernels are built once per lower target, without clones (MERGESTORE_NO_CLONES,
mergestore/csrc/native.h), with setup.py's flags, and the kernel-versus-twin tests run in a
child process that loads that build in place of the installed one. The baseline build also
runs with the F16C paths off (MERGESTORE_NO_F16C), as a CPU without them would.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from ci_gate import unavailable

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "mergestore" / "csrc"
# The test modules that compare kernels with their twins (tests/test_native.py and the lanes').
TWIN_TESTS = [
    "tests/test_native.py",
    "tests/ops/test_lane16.py",
    "tests/ops/test_lanes.py",
    "tests/ops/test_lane_sphere.py",
    "tests/ops/test_lane_math.py",
    "tests/ops/test_lane_karcher.py",
    "tests/ops/test_lane_karcher16.py",
    "tests/ops/test_lane_sce.py",
    "tests/ops/test_lane_random.py",
    "tests/ops/test_keep_rescale.py",
    "tests/ops/test_cuts.py",
    "tests/codecs/test_huffman_literals.py",
    "tests/codecs/test_huffman_encode.py",
    "tests/codecs/test_codecs_internals.py",  # byte planes: split, join, whole-block decode
]
# Loads the build given as argv[1] as mergestore._native, then runs pytest on the rest.
_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("mergestore._native", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["mergestore._native"] = mod
from mergestore import native
assert native.kernels is mod, native.kernels
print("kernels from", mod.__file__, flush=True)
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


def _compile_args() -> list[str]:
    """setup.py's COMPILE_ARGS, read from its source (running it would run setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILE_ARGS":
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no COMPILE_ARGS")


def _build(march: str, out_dir: Path) -> Path:
    """The kernels compiled once, for `march`, as setuptools would (Python's CFLAGS first)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    cflags = (sysconfig.get_config_var("CFLAGS") or "").split()
    flags = [*cflags, "-fPIC", *_compile_args(), f"-march={march}", "-DMERGESTORE_NO_CLONES"]
    flags.append("-Wno-psabi")  # a note on 32-byte vector arguments (GCC 4.6 ABI), no problem
    includes = [f"-I{CSRC}", f"-I{sysconfig.get_paths()['include']}"]
    sources = sorted(CSRC.glob("*.c"))

    def compile_one(src: Path) -> Path:
        obj = out_dir / (src.stem + ".o")
        subprocess.run([*cc, *flags, *includes, "-c", str(src), "-o", str(obj)], check=True)
        return obj

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_one, sources))
    so = out_dir / ("_native" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([*cc, "-shared", *map(str, objects), "-o", str(so), "-lm"], check=True)
    return so


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


TARGETS = [
    # (march, the CPU flags it needs, extra environment of the child)
    pytest.param("x86-64-v3", {"avx2", "fma", "f16c", "bmi2"}, {}, id="x86-64-v3"),
    pytest.param("x86-64", set(), {"MERGESTORE_NO_F16C": "1"}, id="x86-64"),
]


@pytest.mark.skipif(
    sys.platform != "linux" or os.uname().machine != "x86_64",
    reason="the clones are made for x86-64 (elsewhere the code is compiled once)",
)
@pytest.mark.parametrize("march, needs, env", TARGETS)
def test_each_clone_gives_the_twins_bits(
    tmp_path: Path, march: str, needs: set[str], env: dict[str, str]
) -> None:
    if shutil.which("gcc") is None:
        unavailable("no gcc: the clones are GCC's target_clones")
    missing = needs - _cpu_flags()
    if missing:
        pytest.skip(f"this CPU cannot run {march} code (no {', '.join(sorted(missing))})")
    so = _build(march, tmp_path)
    # One build, one target: no clone of a higher target was compiled in.
    assert b"arch_x86_64_v4" not in so.read_bytes()
    assert b"arch_x86_64_v3" not in so.read_bytes()
    args = [sys.executable, "-c", _CHILD, str(so), "-q", "-x", "-p", "no:cacheprovider"]
    child = subprocess.run(
        [*args, *TWIN_TESTS],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    tail = "\n".join((child.stdout + child.stderr).splitlines()[-30:])
    assert child.returncode == 0, tail
    assert f"kernels from {so}" in child.stdout, tail
    assert " passed" in child.stdout and " failed" not in child.stdout, tail
