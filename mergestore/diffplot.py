"""`diff --plot`: a heatmap of relative change, layers down, modules across (matplotlib, Agg)."""

from __future__ import annotations

import math
import os

from mergestore.diff import MODULES, DiffResult, layer_of, module_of


def heat_grid(res: DiffResult) -> tuple[list[str], list[list[float | None]]]:
    """Row labels and a rows x MODULES grid of relative change (None: no such tensor).

    Tensors outside the layers (embeddings, final norm, head) go in a first row, "model".
    A cell holding several tensors (q, k, v fused or two norms) shows ‖ΔB‖/‖A‖ over them all.
    Unchanged tensors count as 0; added/removed/retyped ones are left out.
    """
    cells: dict[tuple[int, int], list[float]] = {}  # (row key, col) -> [Σ‖Δ‖², Σ‖A‖²]
    layers: set[int] = set()
    for t in res.tensors:
        mod = module_of(t.name)
        if mod is None or t.status not in ("changed", "unchanged"):
            continue
        layer = layer_of(t.name)
        key = -1 if layer is None else layer
        if layer is not None:
            layers.add(layer)
        acc = cells.setdefault((key, MODULES.index(mod)), [0.0, 0.0, 0.0])
        acc[2] += 1
        if t.status == "changed" and t.delta_l2 is not None and t.l2_a:
            acc[0] += t.delta_l2**2
            acc[1] += t.l2_a**2
    rows = ([-1] if any(k == -1 for k, _ in cells) else []) + sorted(layers)
    grid: list[list[float | None]] = []
    for r in rows:
        line: list[float | None] = []
        for c in range(len(MODULES)):
            acc = cells.get((r, c))
            if acc is None:
                line.append(None)
            else:
                line.append(math.sqrt(acc[0]) / math.sqrt(acc[1]) if acc[1] > 0 else 0.0)
        grid.append(line)
    return ["model" if r == -1 else str(r) for r in rows], grid


def plot_diff(res: DiffResult, path: str | os.PathLike[str], *, title: str = "") -> None:
    """Write the heatmap as a PNG: log colour scale, grey for unchanged, blank for absent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    labels, grid = heat_grid(res)
    if not labels:
        labels, grid = ["-"], [[None] * len(MODULES)]
    data = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    positive = data[np.isfinite(data) & (data > 0)]
    hi = float(positive.max()) if positive.size else 1.0
    lo = float(positive.min()) if positive.size else hi / 10
    lo = min(lo, hi / 10)  # at least one decade, so the colour bar has readable ticks
    masked = np.ma.masked_where(~np.isfinite(data) | (data <= 0), data)
    height = min(30.0, 2.4 + 0.34 * len(labels))
    fig, ax = plt.subplots(figsize=(10.0, height), dpi=110)
    # unchanged cells (0) in light grey under the colour layer
    zero = np.where(np.isfinite(data) & (data <= 0), 1.0, np.nan)
    ax.imshow(zero, cmap="Greys", vmin=0, vmax=6, aspect="auto", interpolation="nearest")
    im = ax.imshow(
        masked, cmap="viridis", norm=LogNorm(vmin=lo, vmax=hi), aspect="auto", interpolation="none"
    )
    ax.set_xticks(range(len(MODULES)), MODULES)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("module    (grey: unchanged, blank: no such tensor)")
    ax.set_ylabel("layer")
    ax.set_xticks(np.arange(-0.5, len(MODULES)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(labels)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("||B - A|| / ||A||")
    if len(labels) <= 40:
        mid = math.sqrt(lo * hi)
        for (r, c), v in np.ndenumerate(data):
            if np.isfinite(v):
                txt = "0" if v <= 0 else f"{v:.1e}"
                colour = "black" if v <= 0 or v > mid else "white"
                ax.text(c, r, txt, ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(("relative change: " + title) if title else "relative change", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    plt.close(fig)
