"""Speed of SAE-TS effect collection: many steering vectors per ``generate`` batch vs one.

Runs ``measure_effects`` for the same directions, prompts and rollouts twice: with
``batch_size`` rows per ``generate`` call (rows of many vectors, steered per row by
``steer_rows``), and with ``batch_size`` equal to the rollouts of one vector (one vector
per call). Both runs are repeated interleaved, so load from other processes hits both
alike, and the ratios of median wall times and of median process CPU times (one-at-a-time
/ batched) are printed; with one torch thread the CPU time does not count time the process
waited for a core another process held, so it is the steadier of the two on a shared
machine. The model is a
random ``HookedTransformer`` with a small BPE tokenizer trained here, and the dictionary a
random SAELens ``StandardSAE``. Target: ratio >= 4.

    python benchmarks/effects_batching.py [--d-model 64] [--vectors 32] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from ssae_lens.sae_ts import measure_effects
from ssae_lens.testing import bpe_tokenizer

CORPUS = [
    "The weather today is calm and the river runs slowly past the old mill.",
    "Our team reviewed the report and found three errors in the budget table.",
    "She played the piano every evening while the children read their books.",
    "A small boat crossed the lake at dawn, carrying bread, fish and letters.",
]
PROMPTS = ["The weather today", "Our team reviewed", "She played the", "A small boat"]


def random_model(
    tokenizer: PreTrainedTokenizerFast, d_model: int, device: str, seed: int
) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=4,
        d_model=d_model,
        n_heads=4,
        d_head=d_model // 4,
        d_mlp=4 * d_model,
        n_ctx=128,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        device=device,
        default_prepend_bos=True,
    )
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--vectors", type=int, default=32)
    parser.add_argument("--n-samples", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = bpe_tokenizer(folder, CORPUS, vocab_size=300)
        model = random_model(tokenizer, args.d_model, args.device, args.seed)
    hook = "blocks.2.hook_resid_post"
    sae_cfg = StandardSAEConfig(
        d_in=model.cfg.d_model, d_sae=8 * model.cfg.d_model, device=args.device
    )
    sae_cfg.metadata.hook_name = hook
    torch.manual_seed(args.seed)
    sae = StandardSAE(sae_cfg)
    generator = torch.Generator().manual_seed(args.seed)
    directions = torch.randn(args.vectors, model.cfg.d_model, generator=generator)
    directions = directions / directions.norm(dim=1, keepdim=True)
    rollouts = len(PROMPTS) * args.n_samples

    def run(batch_size: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        measure_effects(
            model,
            sae,
            directions,
            4.0,
            prompts=PROMPTS,
            n_samples=args.n_samples,
            max_new_tokens=args.new_tokens,
            batch_size=batch_size,
            seed=args.seed,
        )
        return time.perf_counter() - start, time.process_time() - cpu

    run(rollouts)  # warm-up
    batched, single = [], []
    for _ in range(args.repeats):
        batched.append(run(args.batch_size))
        single.append(run(rollouts))
    b, s = (statistics.median(t[0] for t in batched), statistics.median(t[0] for t in single))
    bc, sc = (statistics.median(t[1] for t in batched), statistics.median(t[1] for t in single))
    print(
        f"{args.vectors} vectors x {rollouts} rollouts x {args.new_tokens} tokens, d_model "
        f"{args.d_model}, on {args.device}: batched ({args.batch_size} rows/call) {b:.3f}s "
        f"wall / {bc:.3f}s CPU, one vector per call ({rollouts} rows/call) {s:.3f}s wall / "
        f"{sc:.3f}s CPU; speed ratio {s / b:.2f}x wall, {sc / bc:.2f}x CPU"
    )
    if args.out:
        setup = {k: v for k, v in vars(args).items() if k != "out"}
        result = dict(
            batched_s=b,
            single_s=s,
            ratio=s / b,
            batched_cpu_s=bc,
            single_cpu_s=sc,
            cpu_ratio=sc / bc,
        )
        args.out.write_text(json.dumps({"setup": setup, "results": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
