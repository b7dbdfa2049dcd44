"""Where generation spends its CPU time in float32 and in bfloat16 (torch.profiler).

Explains the generation speed ratio of ``benchmarks/precision.py``: the operators whose time
bfloat16 shrinks (matrix products) against those it does not (copies, the float32 sampling over
the vocabulary). One process, one intra-op thread, Gemma-3-270M.

    python benchmarks/generation_profile.py [--rows 32] [--tokens 8]

Writes ``benchmarks/results/generation_profile.md``.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ssae_lens._core.io import write_text_atomic
from ssae_lens.generation import generate_tokens
from ssae_lens.models import load_model

MATMUL = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}
COPY = {"aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy"}


def profile_generation(model, prompts: list[str], tokens: int) -> dict[str, float]:
    """Seconds of CPU self time per kind of operator while generating ``tokens`` tokens."""
    generate_tokens(model, prompts, 2, seed=0)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate_tokens(model, prompts, tokens, seed=0)
    kinds: collections.Counter[str] = collections.Counter()
    for event in prof.key_averages():
        key = event.key
        kind = "matrix products" if key in MATMUL else "copies" if key in COPY else "other"
        kinds[kind] += event.self_cpu_time_total / 1e6
    return {k: kinds[k] for k in ("matrix products", "copies", "other")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/generation_profile.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a study script, not the library: one thread for clean profiles
    prompts = ["The story begins", "I think that"] * (args.rows // 2)
    seconds = {}
    for precision in ("float32", "bfloat16"):
        model = load_model("gemma-3-270m", precision=precision)
        seconds[precision] = profile_generation(model, prompts, args.tokens)
        del model
    lines = [
        "# Where generation spends its time, float32 vs bfloat16 (Gemma-3-270M, CPU)",
        "",
        f"Command: `python benchmarks/generation_profile.py --rows {args.rows} --tokens "
        f"{args.tokens}`; sampled generation (temperature 1, full vocabulary), one thread, "
        "seconds of CPU self time from torch.profiler, one run.",
        "",
        "| kind | float32 s | bfloat16 s | float32 / bfloat16 |",
        "| --- | --- | --- | --- |",
    ]
    for kind in ("matrix products", "copies", "other"):
        a, b = seconds["float32"][kind], seconds["bfloat16"][kind]
        lines.append(f"| {kind} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    total = {p: sum(s.values()) for p, s in seconds.items()}
    lines.append(
        f"| total | {total['float32']:.2f} | {total['bfloat16']:.2f} | "
        f"{total['float32'] / total['bfloat16']:.2f}x |"
    )
    write_text_atomic(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
