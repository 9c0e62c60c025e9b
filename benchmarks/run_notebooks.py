"""Execute the tutorial notebooks and time them.

Full mode (default) writes the executed copies, outputs included, to docs/notebooks/ for the
documentation site; `--fast` sets DDPMKIT_FAST=1 (what CI runs) and writes nothing.
Each notebook runs with notebooks/ as its working folder, like `jupyter lab` opened there.

    .venv/bin/python benchmarks/run_notebooks.py [--fast] [notebooks/01_points_dino.ipynb ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "docs" / "notebooks"


def execute(path: Path, fast: bool, timeout: int = 1200) -> tuple[nbformat.NotebookNode, float]:
    """Run every cell of `path` in a fresh kernel; raises nbclient's CellExecutionError on an error."""
    nb = nbformat.read(path, as_version=4)
    os.environ["DDPMKIT_FAST"] = "1" if fast else "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", type=Path)
    p.add_argument("--fast", action="store_true", help="DDPMKIT_FAST=1, nothing written")
    args = p.parse_args()
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    EXECUTED.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb, seconds = execute(Path(path).resolve(), args.fast)
        print(
            f"{Path(path).name}: {seconds / 60:.1f} min ({'fast' if args.fast else 'full'} mode)", flush=True
        )
        if not args.fast:
            nbformat.write(nb, EXECUTED / Path(path).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
