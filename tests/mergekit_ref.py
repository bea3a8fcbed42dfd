"""mergekit 0.1.5, the numerical reference, run from its own venv in a subprocess.

mergekit is never installed into mergestore's environment (its pins would move ours). The
parity tests talk to one long-lived worker (tests/mergekit_worker.py) running under a Python
that has mergekit 0.1.5 and torch; tensors go back and forth as safetensors files.

Which Python:
- $MERGESTORE_MERGEKIT_PYTHON, when set;
- else a venv made once under $MERGESTORE_TEST_CACHE (default ~/.cache/mergestore-tests),
  `mergekit-0.1.5/`, with `pip install torch==2.13.0 mergekit==0.1.5` (a few minutes, once;
  reused by every later run; a lock file keeps concurrent runs from building it twice).

mergekit runs single-threaded (OMP_NUM_THREADS=1, torch.set_num_threads(1)): its own output
changes with torch's thread count (docs/methods.md, "Parity"). Under CI=true a mergekit that
cannot be had fails the tests that need it; elsewhere they skip.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from ci_gate import unavailable
from safetensors.torch import load_file, save_file

MERGEKIT_VERSION = "0.1.5"
TORCH_PIN = "torch==2.13.0"
WORKER = Path(__file__).with_name("mergekit_worker.py")
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def cache_dir() -> Path:
    env = os.environ.get("MERGESTORE_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mergestore-tests"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _works(python: Path) -> bool:
    probe = "import importlib.metadata as m, mergekit.merge_methods;print(m.version('mergekit'))"
    try:
        out = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == MERGEKIT_VERSION


def _build_venv(venv: Path) -> None:
    """python -m venv + pip install, in a scratch folder renamed into place when complete."""
    tmp = Path(tempfile.mkdtemp(prefix=venv.name + ".", dir=venv.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(tmp)], check=True)
        pip = [str(_venv_python(tmp)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, TORCH_PIN, f"mergekit=={MERGEKIT_VERSION}"], check=True, timeout=3600)
        _point_scripts_at(tmp, venv)
        if venv.exists():
            shutil.rmtree(venv)
        tmp.rename(venv)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _point_scripts_at(tmp: Path, venv: Path) -> None:
    """The venv's console scripts (mergekit-yaml) and activate scripts name the folder they
    were made in: name the one they are renamed to, so they run from there."""
    for script in (tmp / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if str(tmp).encode() in data:
            script.write_bytes(data.replace(str(tmp).encode(), str(venv).encode()))


def find_python() -> Path:
    """A Python with mergekit 0.1.5: the env var's, the cached venv's, or a new venv's."""
    env = os.environ.get("MERGESTORE_MERGEKIT_PYTHON")
    if env:
        if not _works(Path(env)):
            raise RuntimeError(
                f"MERGESTORE_MERGEKIT_PYTHON={env} has no mergekit {MERGEKIT_VERSION}"
            )
        return Path(env)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"mergekit-{MERGEKIT_VERSION}"
    with open(root / f"mergekit-{MERGEKIT_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building it right now
        if not _works(_venv_python(venv)):
            _build_venv(venv)
            if not _works(_venv_python(venv)):
                raise RuntimeError(f"built {venv}, but it has no working mergekit")
    return _venv_python(venv)


class MergekitWorker:
    """One mergekit process for the whole test session."""

    def __init__(self, python: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [str(python), str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.scratch = Path(tempfile.mkdtemp(prefix="mergekit-ref-"))
        atexit.register(self.close)
        hello = self.call({"op": "hello"})
        if hello["mergekit"] != MERGEKIT_VERSION or hello["threads"] != 1:
            raise RuntimeError(f"unexpected mergekit worker: {hello}")
        self.info = hello

    def call(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the mergekit worker died (exit {self.proc.wait()})")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise MergekitError(answer["error"])
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.scratch, ignore_errors=True)


class MergekitError(RuntimeError):
    """mergekit raised (its message is kept)."""


class Mergekit:
    """mergekit's entry points the tests use, started on first use."""

    def __init__(self) -> None:
        self._worker: MergekitWorker | None = None
        self._failure: str | None = None

    def worker(self) -> MergekitWorker:
        if self._worker is None and self._failure is None:
            try:
                self._worker = MergekitWorker(find_python())
            except Exception as e:  # reported once per test that needs it, below
                self._failure = f"mergekit {MERGEKIT_VERSION} is not available: {e}"
        if self._worker is None:
            unavailable(self._failure or "mergekit is not available")
        assert self._worker is not None
        return self._worker

    def merge_tensors(
        self,
        tensors: list[torch.Tensor],
        method: str,
        *,
        parameters: dict[str, Any],
        base_index: int | None = None,
        dtype: torch.dtype | None = None,
        out_dtype: torch.dtype | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """mergekit.merge_methods.merge_tensors, after torch.manual_seed(seed) if given."""
        w = self.worker()
        folder = Path(tempfile.mkdtemp(dir=w.scratch))
        try:
            # clone: safetensors refuses tensors that share memory
            save_file(
                {f"t{i}": t.contiguous().clone() for i, t in enumerate(tensors)},
                str(folder / "in.safetensors"),
            )
            w.call(
                {
                    "op": "merge",
                    "dir": str(folder),
                    "method": method,
                    "parameters": parameters,
                    "base_index": base_index,
                    "dtype": DTYPE_NAMES[dtype] if dtype is not None else None,
                    "out_dtype": DTYPE_NAMES[out_dtype] if out_dtype is not None else None,
                    "seed": seed,
                }
            )
            return load_file(str(folder / "out.safetensors"))["out"]
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def spec(self, method: str) -> dict[str, Any]:
        """A method's declaration in mergekit's registry, as plain data."""
        return self.worker().call({"op": "spec", "method": method})


mk = Mergekit()


def _mergekit_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return env


def mergekit_yaml(config: Path, out: Path) -> None:
    """mergekit-yaml CONFIG OUT (single-threaded, offline, no model card), as a user runs it.

    Beware: mergekit's MergeConfiguration.referenced_models() is list(set(...)), so the order
    in which a tokenizer union meets the input models changes from run to run; a parity test
    must use inputs whose union does not depend on it (tests/habits/tokmodels.py).
    """
    python = _python_or_unavailable()
    r = subprocess.run(
        [str(python), "-m", "mergekit.scripts.run_yaml", str(config), str(out),
         "--no-write-model-card"],
        capture_output=True, text=True, env=_mergekit_env(), timeout=1800,
    )  # fmt: skip
    if r.returncode != 0:
        raise MergekitError(r.stderr[-3000:])


def _python_or_unavailable() -> Path:
    try:
        return find_python()
    except Exception as e:
        unavailable(f"mergekit {MERGEKIT_VERSION} is not available: {e}")
        raise
