"""Overhead of steering hooks on greedy generation and on a batched forward pass.

Runs the same greedy ``generate`` (KV cache on) and the same batched forward with and
without ``steer(model, v)`` at one residual hook point, interleaved (plain, steered,
plain, ...) so load from other processes hits both alike, and prints the ratio of
medians (steered / plain), for wall time and for the process's CPU time (steadier
on a shared machine). The default model is a random HookedTransformer built from
a config (worst case: cheap layers, so the per-call Python cost of the hooks shows);
``--model gemma-3-270m`` measures the real model. Target: ratio <= 1.10.

    python benchmarks/steering.py [--model gemma-3-270m] [--repeats 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ssae_lens.steering import SteeringVector, steer


def random_model(seed: int) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=6,
        d_model=256,
        n_heads=8,
        d_head=32,
        d_mlp=1024,
        n_ctx=256,
        d_vocab=4096,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        seed=seed,
    )
    return HookedTransformer(cfg).eval()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="ssae_lens.models.load_model name")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    if args.model:
        from ssae_lens.models import load_model

        model = load_model(args.model)
    else:
        model = random_model(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, args.prompt_len), generator=generator)
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    vector = SteeringVector(torch.randn(model.cfg.d_model, generator=generator), hook)

    def run_generate() -> None:
        model.generate(
            tokens,
            max_new_tokens=args.new_tokens,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
        )

    def run_forward() -> None:
        model(tokens)

    results = {}
    for name, fn in (("generate", run_generate), ("forward", run_forward)):
        timed(fn)  # warm-up
        plain, steered = [], []
        for _ in range(args.repeats):
            plain.append(timed(fn))
            with steer(model, vector, scale=1.0):
                steered.append(timed(fn))
        results[name] = {}
        for i, clock in enumerate(("wall", "cpu")):
            base = statistics.median(t[i] for t in plain)
            hooked = statistics.median(t[i] for t in steered)
            results[name][clock] = {"plain_s": base, "steered_s": hooked, "ratio": hooked / base}
            print(
                f"{name:9s} {clock:4s} plain {base:.4f}s  steered {hooked:.4f}s  "
                f"ratio {hooked / base:.3f}"
            )
    if args.out:
        setup = {k: v for k, v in vars(args).items() if k != "out"}
        args.out.write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
