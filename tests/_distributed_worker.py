"""Work run by the tests through ``ssae_lens.distributed``, alone or under ``torchrun``.

    python tests/_distributed_worker.py STORE OUT LOG [--task TASK] [--n-items N]
        [--chunk-size K] [--tokenizer FOLDER] [--exit-rank R --exit-after C]
        [--raise-rank R] [--hang-rank R] [--cli JSON]

Tasks (the tiny test model is built from the tokenizer saved to ``FOLDER``):

- ``rows``: a deterministic computation per item (:func:`item_rows`) through ``run_sharded``;
  appends ``rank start stop`` to ``LOG`` for each chunk a rank computed.
- ``harvest``: activation shifts of the first ``N`` ``binary`` pairs, chunks through
  ``run_sharded`` (a library call inside a chunk), logged as for ``rows``.
- ``library``: the library's own data-parallel calls (:func:`library_results`: harvest,
  SAE-TS effects and calibration, a steering sweep) inside ``process_group``.
- ``harvest-cache``: ``harvest_shifts`` of ``N`` pairs with ``cache_dir=STORE`` and
  ``shard_size=K``; appends ``rank rows`` to ``LOG`` for each forward pass.
- ``cli``: the ``ssae-lens`` commands listed in ``JSON`` (argument lists), one after the
  other in this process, with ``load_model`` returning the tiny model.

Every rank saves its result to ``OUT.rank<r>.safetensors`` (not for ``cli``). The fault
options make rank ``R`` exit (``os._exit(1)``) when asked for its chunk (``harvest-cache``:
its forward pass) number ``C + 1``, raise on its first chunk, or sleep.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["The cat sat", "She walked to the market and", "The king"]


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


def tiny_sae():
    """A 32 -> 32 StandardSAE at ``HOOK`` with seeded weights (some features fire)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=32, d_sae=32)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=gen))
        sae.b_enc.fill_(0.1)
    return sae


def unit_directions(n: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def letter_scorer(texts: list[str], prompts: list[str]) -> list[float]:
    """A deterministic behaviour score: the fraction of letters that are vowels."""
    return [sum(c in "aeiou" for c in t) / max(1, sum(c.isalpha() for c in t)) for t in texts]


def library_results(model) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Harvest, effects, calibration and a steering sweep of the library on ``model``: the
    tensors, and the sweep's texts."""
    import warnings

    from ssae_lens import harvest_shifts, load_pairs
    from ssae_lens.sae_ts import calibrate_scales, measure_effects
    from ssae_lens.steering import LikelihoodCoherenceScorer, SteeringVector, evaluate_steering

    pairs = load_pairs("binary")
    shifts = harvest_shifts(
        model, (pairs.sources[:20], pairs.targets[:20]), HOOK, batch_size=4, progress=False
    )
    sae, dirs = tiny_sae(), unit_directions(6)
    effects = measure_effects(
        model, sae, dirs, 3.0, prompts=PROMPTS, n_samples=2, max_new_tokens=4, seed=5,
        batch_size=6, chunk_size=2,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # directions the sweep does not calibrate
        scales = calibrate_scales(
            model, dirs[:5], HOOK, reference_texts=["The cat sat on the mat.", "I love it."],
            scales=torch.linspace(0.1, 3.0, 8), batch_size=8, chunk_size=2,
        )  # fmt: skip
    sweep = evaluate_steering(
        model, SteeringVector(dirs[0], HOOK), prompts=PROMPTS, scales=[2.0, 6.0],
        behavior_scorer=letter_scorer, coherence_scorer=LikelihoodCoherenceScorer(model),
        max_new_tokens=4, n_samples=2, do_sample=True, seed=3, batch_size=4,
    )  # fmt: skip
    tensors = {
        "shifts": shifts,
        "effects": effects,
        "scales": scales,
        "behavior": torch.tensor([s.behavior for s in sweep.samples], dtype=torch.float64),
        "coherence": torch.tensor([s.coherence for s in sweep.samples], dtype=torch.float64),
        "table": torch.tensor(
            [
                [r.behavior, r.coherence, r.product_of_means, r.mean_of_products, *r.behavior_ci]
                for r in sweep.results
            ]
        ),
    }
    return tensors, [s.text for s in sweep.samples]


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
    parser.add_argument(
        "--task", choices=["rows", "harvest", "library", "harvest-cache", "cli"], default="rows"
    )
    parser.add_argument("--n-items", type=int, default=23)
    parser.add_argument("--chunk-size", type=int, default=3)
    parser.add_argument("--tokenizer")
    parser.add_argument("--exit-rank", type=int, default=-1)
    parser.add_argument("--exit-after", type=int, default=1)
    parser.add_argument("--raise-rank", type=int, default=-1)
    parser.add_argument("--hang-rank", type=int, default=-1)
    parser.add_argument("--cli", default="[]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.task == "rows":
        _import_without_package_init()
        work = item_rows
    elif args.task == "harvest":
        work = harvest_task(args.tokenizer, args.n_items)
    else:
        return other_task(args)
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


def other_task(args: argparse.Namespace) -> None:
    """The tasks ``library``, ``harvest-cache`` and ``cli`` on the tiny model."""
    from conftest import build_tiny_model
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from ssae_lens import harvest_shifts, load_pairs, models
    from ssae_lens.distributed import current, process_group

    model = build_tiny_model(AutoTokenizer.from_pretrained(args.tokenizer))
    rank = current().rank
    if args.task == "cli":
        from ssae_lens import cli

        models.load_model = lambda name, **kwargs: model
        with process_group():  # one group for all the commands (each enters it too)
            for argv in json.loads(args.cli):
                sys.argv = ["ssae-lens", *argv]
                try:
                    cli.main()
                except SystemExit as done:  # typer's exit after a command, without torchrun
                    if done.code not in (0, None):
                        raise
        return
    with process_group():
        if args.task == "library":
            tensors, texts = library_results(model)
            Path(f"{args.out}.rank{rank}.json").write_text(json.dumps(texts))
        else:  # harvest-cache
            forward, calls = model.forward, 0

            def counting_forward(tokens, *a, **kw):
                nonlocal calls
                if rank == args.exit_rank and calls == args.exit_after:
                    os._exit(1)
                calls += 1
                with open(args.log, "a") as log:
                    log.write(f"{rank} {tokens.shape[0]}\n")
                return forward(tokens, *a, **kw)

            model.forward = counting_forward
            pairs = load_pairs("binary")
            n = args.n_items
            shifts = harvest_shifts(
                model, (pairs.sources[:n], pairs.targets[:n]), HOOK, batch_size=4,
                cache_dir=args.store, shard_size=args.chunk_size, progress=False,
            )  # fmt: skip
            tensors = {"shifts": shifts}
    save_file(tensors, f"{args.out}.rank{rank}.safetensors")


if __name__ == "__main__":
    main()
