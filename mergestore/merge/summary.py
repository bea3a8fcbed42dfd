"""The post-merge summary: what came out, against the base, with the warnings users missed.

mergekit users have shipped merges whose output dtype was not the one they asked for, or whose
parameter count silently differed from the base's; the summary says so after every merge.
"""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mergestore.formats.safetensors import DTYPE_SIZES
from mergestore.store.objects import TensorRecord

TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
FLOATS = frozenset(TORCH_NAMES)
ST_NAMES = {v: k for k, v in TORCH_NAMES.items()}


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def summarize(
    outputs: Sequence[Any],
    base_tensors: Mapping[str, TensorRecord] | None,
    *,
    asked_dtype: str | None,
    blocks_written: int,
) -> dict[str, Any]:
    """Counts and warnings for the output tensors (OutputTensor-like: name, dtype, shape).

    `asked_dtype` is the config's out_dtype, else its dtype ("bfloat16" or "BF16"), else None:
    then the base's float dtype is what a user expects back.
    """
    params = sum(_numel(o.shape) for o in outputs)
    out_bytes = sum(_numel(o.shape) * DTYPE_SIZES[o.dtype] for o in outputs)
    dtypes: dict[str, int] = {}
    for o in outputs:
        dtypes[o.dtype] = dtypes.get(o.dtype, 0) + 1
    out: dict[str, Any] = {
        "parameters": params,
        "output_dtypes": dict(sorted(dtypes.items())),
        "output_bytes": out_bytes,
        "blocks_written": blocks_written,
        "peak_rss_bytes": peak_rss_bytes(),
        "base_parameters": None,
        "base_bytes": None,
        "warnings": [],
    }
    warnings: list[str] = out["warnings"]
    base_float: set[str] = set()
    if base_tensors:
        out["base_parameters"] = sum(_numel(t.shape) for t in base_tensors.values())
        out["base_bytes"] = sum(t.nbytes for t in base_tensors.values())
        base_float = {t.dtype for t in base_tensors.values() if t.dtype in FLOATS}
    want = ST_NAMES.get(asked_dtype or "", asked_dtype)
    what = "asked for"
    if want is None and len(base_float) == 1:
        want, what = next(iter(base_float)), "the base is"
    out_float = {d for d in dtypes if d in FLOATS}
    if want is not None and out_float and out_float != {want}:
        got = ", ".join(TORCH_NAMES.get(d, d) for d in sorted(out_float))
        warnings.append(
            f"output dtype is {got} but {what} {TORCH_NAMES.get(want, want)}"
            + ("; set out_dtype: to choose it" if asked_dtype is None else "")
        )
    if out["base_parameters"] is not None and out["base_parameters"] != params:
        warnings.append(
            f"the output has {params:,} parameters but the base has "
            f"{out['base_parameters']:,} ({params - out['base_parameters']:+,})"
        )
    return out
