"""Execute chapters in place with nbclient, keeping their outputs and widget state.

``make notebooks`` runs this after a chapter changes; the outputs are committed, the book renders
them, and nbval (in ``make test``) checks that re-running a chapter reproduces them. nbclient
stores the state of every widget in the notebook's metadata, which is what lets the built HTML
book show the widgets.

Usage: ``python tools/execute_notebooks.py chapters/01_anchors.ipynb [...]``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int = 1800) -> float:
    """Run one notebook top to bottom in its own directory; returns the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
        store_widget_state=True,
        coalesce_streams=True,  # one output per stream, progress bars reduced to their last state
    )
    start = time.perf_counter()
    client.execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(paths: list[str]) -> int:
    for name in paths:
        seconds = execute(Path(name))
        print(f"{name}: executed in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
