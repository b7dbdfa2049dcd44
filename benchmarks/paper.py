"""Reproduce the SSAE paper's identifiability and steering-accuracy tables on Gemma-3-270M.

    python benchmarks/paper.py [--config configs/paper.yaml] [--set seeds=[0,1]]

Writes ``benchmarks/results/paper.md`` (tables beside the paper's numbers, the issue's
criteria), ``paper.json`` (every per-seed value), plots and the config used. The study
itself is :mod:`ssae_lens.paper` (also ``ssae-lens paper``).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ssae_lens.paper import main  # noqa: E402

if __name__ == "__main__":
    main()
