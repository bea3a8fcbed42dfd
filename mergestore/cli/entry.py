"""The `mergestore` console script: process-wide setup, then the command line (cli/main.py)."""

from __future__ import annotations

import os


def run() -> None:
    # numpy's OpenBLAS starts one thread per core when it loads, and they spin waiting for
    # work that never comes (mergestore makes no BLAS calls): 0.15-0.2 s of CPU taken from a
    # 2-core merge. Before numpy is imported, and only if the user has not chosen.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from mergestore.cli.main import run as run_cli

    run_cli()
