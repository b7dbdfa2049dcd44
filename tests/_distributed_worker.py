"""Work run through ``run_sharded`` by the tests, alone or under ``torchrun``.

    python tests/_distributed_worker.py STORE OUT LOG [--task rows|harvest] [--n-items N]
        [--chunk-size K] [--tokenizer FOLDER] [--exit-rank R --exit-after C]
        [--raise-rank R] [--hang-rank R]

Task ``rows``: a deterministic computation per item (:func:`item_rows`). Task ``harvest``:
activation shifts of the first ``N`` ``binary`` pairs in the tests' tiny model, whose
tokenizer was saved to ``FOLDER``. Every rank saves its merged result to
``OUT.rank<r>.safetensors`` and appends ``rank start stop`` to ``LOG`` for each chunk it
computed. The fault options make rank ``R`` exit (``os._exit(1)``) when asked for its chunk
number ``C + 1``, raise on its first chunk, or sleep.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

HOOK = "blocks.1.hook_resid_post"


def item_rows(items: range) -> dict[str, torch.Tensor]:
    """Per item ``i``: the Gram matrix of a 3x4 Gaussian drawn from a generator seeded by ``i``."""
    rows = []
    for i in items:
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1000 + i))
        rows.append((x @ x.T).flatten())
    return {"rows": torch.stack(rows), "index": torch.tensor(list(items))}


def harvest_task(tokenizer_folder: str, n_items: int):
    """``compute`` for the first ``n_items`` ``binary`` pairs in the tiny test model."""
    from conftest import build_tiny_model
    from transformers import AutoTokenizer

    from ssae_lens import harvest_shifts, load_pairs

    model = build_tiny_model(AutoTokenizer.from_pretrained(tokenizer_folder))
    pairs = load_pairs("binary")
    sources, targets = pairs.sources[:n_items], pairs.targets[:n_items]

    def compute(items: range) -> dict[str, torch.Tensor]:
        chunk = (sources[items.start : items.stop], targets[items.start : items.stop])
        return {"shifts": harvest_shifts(model, chunk, HOOK, batch_size=4)}

    return compute


def _import_without_package_init() -> None:
    """Let ``import ssae_lens.distributed`` skip ``ssae_lens/__init__.py``.

    The package's ``__init__`` imports TransformerLens (about 6 s of CPU per process on the
    test machine); ``ssae_lens.distributed`` needs only torch, safetensors and ``_core.io``.
    """
    package = types.ModuleType("ssae_lens")
    package.__path__ = [str(Path(__file__).resolve().parents[1] / "ssae_lens")]
    sys.modules["ssae_lens"] = package


@record  # torchrun's failure summary then shows each rank's error
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("out")
    parser.add_argument("log")
    parser.add_argument("--task", choices=["rows", "harvest"], default="rows")
    parser.add_argument("--n-items", type=int, default=23)
    parser.add_argument("--chunk-size", type=int, default=3)
    parser.add_argument("--tokenizer")
    parser.add_argument("--exit-rank", type=int, default=-1)
    parser.add_argument("--exit-after", type=int, default=1)
    parser.add_argument("--raise-rank", type=int, default=-1)
    parser.add_argument("--hang-rank", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.task == "rows":
        _import_without_package_init()
        work = item_rows
    else:
        work = harvest_task(args.tokenizer, args.n_items)
    from safetensors.torch import save_file

    from ssae_lens.distributed import ChunkStore, process_group, run_sharded

    with process_group() as ctx:
        calls = 0

        def compute(items: range) -> dict[str, torch.Tensor]:
            nonlocal calls
            if ctx.rank == args.exit_rank and calls == args.exit_after:
                os._exit(1)
            if ctx.rank == args.raise_rank:
                raise ValueError(f"test failure on items {items.start}..{items.stop - 1}")
            if ctx.rank == args.hang_rank:
                time.sleep(3600)
            calls += 1
            out = work(items)
            with open(args.log, "a") as log:
                log.write(f"{ctx.rank} {items.start} {items.stop}\n")
            return out

        settings = {"task": args.task}
        store = ChunkStore(args.store, settings, args.n_items, args.chunk_size)
        result = run_sharded(compute, store, ctx=ctx)
        save_file(result, f"{args.out}.rank{ctx.rank}.safetensors")


if __name__ == "__main__":
    main()
