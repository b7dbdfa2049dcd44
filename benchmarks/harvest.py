"""Benchmark: paired activation harvesting on Gemma-3-270M.

Compares, over the same distinct texts and tokens, in one run:

1. ``PairedActivationStore`` (tokenisation, length-sorted batches, hooks, disk cache included);
2. a plain batched ``model(tokens, stop_at_layer=...)`` over the same length-sorted batches
   (what the store cannot beat; target: store >= 0.85x);
3. one full-model ``run_with_cache`` per prompt, timed on a random subset of the texts and
   extrapolated as tokens/s (target: store >= 30x).

Tokens are real tokens (BOS included, padding excluded). Each timing is the best of
``--repeats`` runs. Usage::

    HF_HUB_OFFLINE=1 python benchmarks/harvest.py [--n-pairs 1000] [--out results.json]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from ssae_lens._core.io import write_json_atomic
from ssae_lens.activations import PairedActivationStore
from ssae_lens.models import load_model


def sentence_pairs(n_pairs: int | None, seed: int) -> tuple[list[str], list[str]]:
    from ssae_lens.data import load_pairs

    pairs = load_pairs("sentences")
    indices = list(range(len(pairs)))
    if n_pairs is not None and n_pairs < len(pairs):
        indices = sorted(random.Random(seed).sample(indices, n_pairs))
    return [pairs.sources[i] for i in indices], [pairs.targets[i] for i in indices]


def time_store(model, pairs, hook: str, batch_size: int, use_cache: bool) -> tuple[float, object]:
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        store = PairedActivationStore(
            model,
            pairs,
            hook,
            "last",
            batch_size=batch_size,
            cache_dir=cache_dir if use_cache else None,
            progress=False,
        )
        shifts = store.harvest()[hook]
        elapsed = time.perf_counter() - start
    assert shifts.shape == (len(pairs[0]), model.cfg.d_model) and torch.isfinite(shifts).all()
    return elapsed, store


def time_plain(model, batches: list[list[str]], stop_at_layer: int | None) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for texts in batches:
            model(model.to_tokens(texts), stop_at_layer=stop_at_layer)
    return time.perf_counter() - start


def time_per_prompt(model, texts: list[str]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for text in texts:
            model.run_with_cache(text)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--hook", default="blocks.6.hook_resid_post")
    parser.add_argument("--n-pairs", type=int, default=None, help="subsample the pairs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--per-prompt", type=int, default=24, help="texts timed one by one")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-cache", action="store_true", help="time the store without disk cache")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - start
    pairs = sentence_pairs(args.n_pairs, args.seed)

    # The plain baseline gets the store's advantages for free: the distinct texts, sorted by
    # token length (longest first), in the same batches.
    lengths = {text: model.to_tokens(text).shape[1] for text in pairs[0] + pairs[1]}
    texts = sorted(lengths, key=lambda text: -lengths[text])
    n_tokens = sum(lengths.values())
    batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]

    # Warm-up (first-call allocations), then the timed runs, interleaved to share any load.
    time_store(model, (pairs[0][:4], pairs[1][:4]), args.hook, args.batch_size, False)
    store_s, plain_s = [], []
    for _ in range(args.repeats):
        elapsed, store = time_store(model, pairs, args.hook, args.batch_size, not args.no_cache)
        store_s.append(elapsed)
        plain_s.append(time_plain(model, batches, store.stop_at_layer))
    assert store.n_tokens == n_tokens

    subset = random.Random(args.seed).sample(texts, min(args.per_prompt, len(texts)))
    subset_tokens = sum(model.to_tokens(t).shape[1] for t in subset)
    per_prompt_s = time_per_prompt(model, subset)

    store_tps = n_tokens / min(store_s)
    plain_tps = n_tokens / min(plain_s)
    per_prompt_tps = subset_tokens / per_prompt_s
    results = {
        "model": args.model,
        "hook": args.hook,
        "stop_at_layer": store.stop_at_layer,
        "n_pairs": len(pairs[0]),
        "distinct_texts": len(texts),
        "tokens": n_tokens,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "disk_cache": not args.no_cache,
        "model_load_s": round(load_s, 1),
        "store_s": [round(s, 2) for s in store_s],
        "plain_batched_s": [round(s, 2) for s in plain_s],
        "per_prompt_texts": len(subset),
        "per_prompt_tokens": subset_tokens,
        "per_prompt_s": round(per_prompt_s, 2),
        "store_tokens_per_s": round(store_tps, 1),
        "plain_batched_tokens_per_s": round(plain_tps, 1),
        "per_prompt_tokens_per_s": round(per_prompt_tps, 2),
        "ratio_vs_plain_batched": round(store_tps / plain_tps, 3),
        "ratio_vs_per_prompt": round(store_tps / per_prompt_tps, 1),
    }
    print(
        f"model {args.model} loaded in {load_s:.1f}s; {len(pairs[0])} sentence pairs, "
        f"{len(texts)} distinct texts, {n_tokens} tokens, hook {args.hook}, "
        f"stop_at_layer={store.stop_at_layer}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"store (cache {'off' if args.no_cache else 'on'}):  {store_tps:10.1f} tokens/s")
    print(f"plain batched model(tokens, stop_at_layer): {plain_tps:10.1f} tokens/s")
    print(
        f"per-prompt run_with_cache (full model, {len(subset)} texts): "
        f"{per_prompt_tps:10.2f} tokens/s"
    )
    ratio_plain, ratio_prompt = results["ratio_vs_plain_batched"], results["ratio_vs_per_prompt"]
    print(
        f"ratio store / plain batched: {ratio_plain:.3f}x (target >= 0.85x) "
        f"{'PASS' if ratio_plain >= 0.85 else 'FAIL'}"
    )
    print(
        f"ratio store / per-prompt:    {ratio_prompt:.1f}x (target >= 30x) "
        f"{'PASS' if ratio_prompt >= 30 else 'FAIL'}"
    )
    if args.out is not None:
        write_json_atomic(args.out, results)


if __name__ == "__main__":
    main()
