"""Cost of drawing one token per row from next-token logits, against the textbook draw.

``ssae_lens.generation.sample_tokens`` inverts the CDF in two levels (block sums, then one
block) on unnormalised float32 weights, a chunk of rows at a time. The baseline is the same
inverse-CDF draw done the textbook way: ``softmax`` in float32, a cumulative sum over the
whole vocabulary, ``searchsorted``. ``torch.multinomial`` (other random numbers, so not
usable for common random numbers) is timed for scale. Logits are Gemma-3's vocabulary wide
(262,144), in float32 and bfloat16, at 8, 32 and 128 rows; draws are interleaved
(ours, textbook, multinomial, ...) and each ratio is textbook time / ours in the same round,
median [min-max] over rounds.

    python benchmarks/sampling.py [--rows 8,32,128] [--vocab 262144] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ssae_lens._core.io import write_text_atomic
from ssae_lens._core.threads import intra_op_threads
from ssae_lens.generation import sample_tokens


def textbook(logits: Tensor, uniform: Tensor) -> Tensor:
    """Inverse-CDF draw over the whole vocabulary: softmax, cumulative sum, search."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)
    index = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True)[:, 0]
    return index.clamp(max=logits.shape[-1] - 1)


def multinomial(logits: Tensor, uniform: Tensor) -> Tensor:
    return torch.multinomial(torch.softmax(logits.float(), dim=-1), 1)[:, 0]


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(rows: int, vocab: int, dtype: torch.dtype, rounds: int) -> dict:
    gen = torch.Generator().manual_seed(rows)
    logits = (3 * torch.randn(rows, vocab, generator=gen)).to(dtype)
    uniform = torch.rand(rows, generator=gen)
    draws = {
        "sample_tokens": lambda: sample_tokens(logits, uniform),
        "textbook": lambda: textbook(logits, uniform),
        "multinomial": lambda: multinomial(logits, uniform),
    }
    for fn in draws.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in draws}
    for _ in range(rounds):
        for name, fn in draws.items():
            times[name].append(_seconds(fn))
    ratios = {
        other: [b / a for a, b in zip(times["sample_tokens"], times[other], strict=True)]
        for other in ("textbook", "multinomial")
    }
    same = sample_tokens(logits, uniform) == textbook(logits, uniform)
    return {
        "rows": rows,
        "dtype": str(dtype).removeprefix("torch."),
        "ms": {name: 1e3 * statistics.median(t) for name, t in times.items()},
        "speed_up": {name: [statistics.median(r), min(r), max(r)] for name, r in ratios.items()},
        "same_draws_as_textbook": float(same.float().mean()),
    }


def render(args: argparse.Namespace, results: list[dict]) -> str:
    lines = [
        "# Drawing one token per row from 262k-wide logits (CPU)",
        "",
        f"Command: `python benchmarks/sampling.py --rows {args.rows} --vocab {args.vocab} "
        f"--rounds {args.rounds} --threads {args.threads}` ({args.threads} torch thread(s), "
        f"nice {os.nice(0)}, 1-minute load average {os.getloadavg()[0]:.1f} at the end, "
        f"{os.cpu_count()} cores). Milliseconds are medians over rounds; speed-ups are the "
        "other draw's time / `sample_tokens`'s in the same round, median [min-max].",
        "",
        "| rows | logits | `sample_tokens` ms | textbook ms | speed-up vs textbook "
        "| multinomial ms | speed-up vs multinomial | draws equal to textbook's |",
        "|---:|---|---:|---:|---|---:|---|---:|",
    ]
    for r in results:
        t, m = r["speed_up"]["textbook"], r["speed_up"]["multinomial"]
        lines.append(
            f"| {r['rows']} | {r['dtype']} | {r['ms']['sample_tokens']:.1f} | "
            f"{r['ms']['textbook']:.1f} | {t[0]:.2f}x [{t[1]:.2f}-{t[2]:.2f}] | "
            f"{r['ms']['multinomial']:.1f} | {m[0]:.2f}x [{m[1]:.2f}-{m[2]:.2f}] | "
            f"{r['same_draws_as_textbook']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="8,32,128")
    parser.add_argument("--vocab", type=int, default=262_144)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with intra_op_threads(args.threads):
        results = [
            measure(int(rows), args.vocab, dtype, args.rounds)
            for rows in args.rows.split(",")
            for dtype in (torch.float32, torch.bfloat16)
        ]
    text = render(args, results)
    write_text_atomic(args.out / "sampling.md", text)
    write_text_atomic(
        args.out / "sampling.json",
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=2),
    )
    print(text)


if __name__ == "__main__":
    main()
