"""Runs inside mergekit's own venv (see tests/mergekit_ref.py); imports nothing of mergestore.

One request per stdin line (JSON), one answer per stdout line (JSON). Tensors travel as
safetensors files in the request's folder: `in.safetensors` (t0, t1, ...) in, `out.safetensors`
(out) back. torch runs on one thread: mergekit's own output changes with the thread count.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import traceback
import warnings

REPLY = sys.stdout  # answers only: whatever mergekit or torch print goes to stderr
sys.stdout = sys.stderr
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

import mergekit.merge_methods as mk  # noqa: E402
from mergekit.merge_methods import registry  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _merge(req: dict) -> dict:
    folder = req["dir"]
    loaded = load_file(os.path.join(folder, "in.safetensors"))
    tensors = [loaded[f"t{i}"] for i in range(len(loaded))]
    if req.get("seed") is not None:
        torch.manual_seed(req["seed"])
    out = mk.merge_tensors(
        tensors,
        req["method"],
        parameters=req["parameters"],
        base_index=req.get("base_index"),
        dtype=DTYPES[req["dtype"]] if req.get("dtype") else None,
        out_dtype=DTYPES[req["out_dtype"]] if req.get("out_dtype") else None,
    )
    save_file({"out": out.contiguous()}, os.path.join(folder, "out.safetensors"))
    return {}


def _spec(req: dict) -> dict:
    spec = registry.get(req["method"]).spec
    c = spec.contract
    return {
        "parameters": [
            {
                "name": p.name,
                "scope": p.scope.value,
                "required": p.required,
                "default": None if p.required else p.default,
            }
            for p in spec.parameters
        ],
        "base": c.base.value,
        "optional_tensor_policy": spec.optional_tensor_policy.value,
        "min_inputs": c.min_inputs,
        "max_inputs": c.max_inputs,
        "min_non_base": c.min_non_base,
        "max_non_base": c.max_non_base,
    }


def _hello(_req: dict) -> dict:
    return {
        "mergekit": importlib.metadata.version("mergekit"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


OPS = {"merge": _merge, "spec": _spec, "hello": _hello}


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = {"ok": True, **OPS[req["op"]](req)}
        except Exception as e:  # the caller decides what a mergekit error means
            trace = traceback.format_exc()
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": trace}
        REPLY.write(json.dumps(answer) + "\n")
        REPLY.flush()


if __name__ == "__main__":
    main()
