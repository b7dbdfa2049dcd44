"""Overhead of steering hooks on greedy generation and on a batched forward pass.

Runs the same greedy ``generate`` (KV cache on) and the same batched forward with and
without ``steer(model, v)`` at one residual hook point, interleaved (plain, steered,
plain, ...) so load from other processes hits both alike, and prints the ratio of
medians (steered / plain), for wall time and for the process's CPU time (steadier
on a shared machine). The default model is a random model built from a config
(worst case: cheap layers, so the per-call Python cost of the hooks shows);
``--model gemma-3-270m`` measures the real model. ``--backend bridge`` runs the model
through TransformerLens's ``TransformerBridge`` (the random model is then a Hugging Face
Llama of the same shape), so the ratio is the steered bridge against the same unsteered
bridge. Target: ratio <= 1.10.

    python benchmarks/steering.py [--model gemma-3-270m] [--backend bridge] [--repeats 5]
        [--out benchmarks/results/steering_bridge]   # writes .json and .md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ssae_lens._core.backend import Model
from ssae_lens._core.io import write_json_atomic, write_text_atomic
from ssae_lens._core.threads import intra_op_threads
from ssae_lens.steering import SteeringVector, steer


def random_model(seed: int, backend: str) -> Model:
    if backend == "bridge":
        return random_bridge(seed)
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


def random_bridge(seed: int) -> Model:
    """A random Hugging Face Llama of the random HookedTransformer's shape, through the bridge."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    from ssae_lens.testing import bpe_tokenizer

    folder = tempfile.mkdtemp(prefix="steering-bench-tokenizer-")
    tokenizer = bpe_tokenizer(folder, ["a random model reads random tokens"], vocab_size=300)
    config = transformers.LlamaConfig(
        vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = transformers.LlamaForCausalLM(config).eval()
    bridge = TransformerBridge.boot_transformers(
        "random-llama", hf_model=hf_model, tokenizer=tokenizer, device="cpu"
    )
    return bridge.eval()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="ssae_lens.models.load_model name")
    parser.add_argument("--backend", choices=["hooked", "bridge"], default="hooked")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="results path, without suffix")
    args = parser.parse_args()
    with intra_op_threads(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    if args.model:
        from ssae_lens.models import load_model

        model = load_model(args.model, backend=args.backend)
    else:
        model = random_model(args.seed, args.backend)
    generator = torch.Generator().manual_seed(args.seed)
    # Token ids from 4 up: no special token (padding) among them.
    shape = (args.batch, args.prompt_len)
    tokens = torch.randint(4, model.cfg.d_vocab, shape, generator=generator)
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

    _check_steering_acts(model, tokens, vector)

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
        setup.update(model_class=type(model).__name__, torch_threads=torch.get_num_threads())
        write_json_atomic(args.out.with_suffix(".json"), {"setup": setup, "results": results})
        lines = [
            f"# Steering overhead: {type(model).__name__}, {args.model or 'random model'}",
            "",
            f"Command: `python benchmarks/steering.py {_command_args(args)}`",
            "",
            "Ratio of medians, steered / the same model unsteered (interleaved runs):",
            "",
            "| call | clock | plain (s) | steered (s) | ratio |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, clocks in results.items():
            for clock, r in clocks.items():
                lines.append(
                    f"| {name} | {clock} | {r['plain_s']:.4f} | {r['steered_s']:.4f} | "
                    f"{r['ratio']:.3f} |"
                )
        write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")


def _command_args(args: argparse.Namespace) -> str:
    parts = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None]
    return " ".join(parts)


def _check_steering_acts(model: Model, tokens: torch.Tensor, vector: SteeringVector) -> None:
    """The measured steering is real: it moves the activation at the hook by the vector."""
    hook = vector.hook_name
    _, plain = model.run_with_cache(tokens, names_filter=hook)
    with steer(model, vector, scale=1.0):
        _, steered = model.run_with_cache(tokens, names_filter=hook)
    moved = steered[hook] - plain[hook]
    torch.testing.assert_close(moved, vector.direction.expand_as(moved), atol=1e-3, rtol=1e-3)


if __name__ == "__main__":
    main()
