"""`mergestore saliency`: gradients or a Fisher diagonal of a stored checkpoint, for the planner.

The checkpoint is checked out to a temporary folder and loaded with transformers'
AutoModelForCausalLM (fp32) and its own tokenizer. The calibration text (a .jsonl of
{"text": ...} objects or strings, or a plain text file) is tokenized document by document,
an end-of-text token after each when the tokenizer has one, and cut into windows of `window`
tokens (at most `max_windows`, spread evenly over the text: deterministic). Then:

- gradient: the gradient of the mean next-token loss over all windows;
- fisher: the empirical Fisher diagonal, the mean over windows of the squared gradient of each
  window's loss (one backward pass per window).

The output is a safetensors file with tensors named as the checkpoint's and metadata
`saliency: gradient|fisher` (what `merge --saliency` reads). Optional extra:
`pip install "mergestore[saliency]"` (transformers).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergestore.errors import MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.store.repo import Repository

EXTRA_HINT = 'pip install "mergestore[saliency]"'


@dataclass
class SaliencyResult:
    """A saliency file written for a stored checkpoint, and what it was computed from."""

    path: str
    kind: str
    commit: str
    windows: int
    window: int
    tokens: int
    loss: float
    tensors: int
    bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_calibration(path: Path) -> list[str]:
    """Documents of a .jsonl ({"text": ...} or a string per line) or a plain text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MergestoreError(f"{path}: cannot read calibration text: {e}") from None
    if path.suffix.lower() != ".jsonl":
        return [text] if text.strip() else []
    docs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise MergestoreError(f"{path}:{n}: not a JSON line") from None
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            docs.append(obj["text"])
        elif isinstance(obj, str):
            docs.append(obj)
        else:
            raise MergestoreError(f'{path}:{n}: expected {{"text": "..."}} or a string')
    return docs


def calibration_windows(tokenizer: Any, docs: list[str], window: int, max_windows: int) -> Any:
    """Every whole window of the token stream, or `max_windows` of them spread evenly over it."""
    import torch

    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    for d in docs:
        ids.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(int(eos))
    total = len(ids) // window
    if total == 0:
        raise MergestoreError(
            f"the calibration text has {len(ids)} tokens: fewer than one window of {window}"
        )
    every = torch.tensor(ids[: total * window], dtype=torch.long).reshape(total, window)
    n = min(max_windows, total)
    return every[[i * total // n for i in range(n)]]


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise MergestoreError(f"mergestore saliency needs transformers: {EXTRA_HINT}") from None
    return transformers


def compute_saliency(
    repo: Repository,
    commit: bytes,
    calibration: Path,
    out: Path,
    *,
    fisher: bool = False,
    window: int = 128,
    max_windows: int = 64,
    batch: int = 8,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SaliencyResult:
    """Write the saliency of `commit` on `calibration` to `out` (see the module doc)."""
    from mergestore.checkout import checkout_commit

    if window < 2 or max_windows < 1 or batch < 1:
        raise MergestoreError("--window must be >= 2, --max-windows and --batch >= 1")
    out = out if out.suffix == ".safetensors" else out.with_name(out.name + ".safetensors")
    if out.exists() and not force:
        raise MergestoreError(f"{out} exists (--force overwrites it)")
    if not out.parent.is_dir():
        raise MergestoreError(f"{out.parent}: no such directory")
    transformers = _require_transformers()
    import torch
    from safetensors.torch import save_file

    docs = read_calibration(calibration)
    t0 = time.time()
    kind = "fisher" if fisher else "gradient"
    with tempfile.TemporaryDirectory(prefix="mergestore-saliency-") as tmp:
        folder = Path(tmp) / "model"
        checkout_commit(repo, commit, folder)
        transformers.utils.logging.disable_progress_bar()
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(folder))
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as e:
            msg = " ".join(str(e).split())[:300]
            raise MergestoreError(
                f"commit {commit.hex()[:12]}: transformers cannot load it as a causal LM "
                f"with its tokenizer: {msg}"
            ) from None
        names = _checkpoint_names(folder)
    x = calibration_windows(tok, docs, window, max_windows)
    model.eval()  # no dropout: the gradient of the model as it is used
    params = {n: p for n, p in model.named_parameters() if n in names}
    if not params:
        raise MergestoreError("no model parameter is named as a tensor of the checkpoint")
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    n = x.shape[0]
    total_loss = 0.0
    step = 1 if fisher else batch
    for i in range(0, n, step):
        xb = x[i : i + step]
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=xb, labels=xb).loss
        (loss * (xb.shape[0] / n) if not fisher else loss).backward()
        total_loss += float(loss.detach()) * xb.shape[0]
        for name, p in params.items():
            if p.grad is not None:
                g = p.grad.double()
                acc[name] += g * g / n if fisher else g
        if progress:
            progress(xb.shape[0])
    tensors = {name: a.float().contiguous() for name, a in acc.items()}
    meta = {
        "saliency": kind,
        "commit": commit.hex(),
        "windows": str(n),
        "window": str(window),
        "loss": f"{total_loss / n:.6g}",
    }
    tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp_out), metadata=meta)
    os.replace(tmp_out, out)
    return SaliencyResult(
        str(out),
        kind,
        commit.hex(),
        n,
        window,
        n * window,
        total_loss / n,
        len(tensors),
        out.stat().st_size,
        round(time.time() - t0, 3),
    )


def _checkpoint_names(folder: Path) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            names.update(h.keys())
    return names
