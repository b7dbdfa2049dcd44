"""Drop the run-specific metadata of executed notebooks (``make tutorials``), keeping outputs.

Removed: per-cell execution timings (``metadata.execution``), widget state
(``metadata.widgets``) and progress-widget outputs. What is kept reads on GitHub: text, tables
and PNG plots.

    python tutorials/strip_metadata.py tutorials/*.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from ssae_lens._core.io import write_text_atomic

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_VIEW not in o.get("data", {})]
    write_text_atomic(path, nbformat.writes(nb) + "\n")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        strip(Path(name))
