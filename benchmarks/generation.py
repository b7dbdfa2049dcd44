"""How close is the generation path to the hardware limit? Gemma-3-270M on CPU, one run.

Compares, for the same token count (``batch`` rows x (prompt + ``new_tokens``) tokens):

- ``generate_tokens`` (greedy, and sampled with top-k 50 as the SAE-TS effects are), the one
  generation path of ssae-lens (KV cache, logits for the last position only);
- a plain batched forward over the generated tokens (one ``model(tokens)`` pass with full
  logits): the same tokens through every layer in one go, the lower bound on the work of
  producing them;
- TransformerLens's ``model.generate`` (KV cache, greedy).

Methods run interleaved (``--repeats`` rounds of each) so load from other processes hits all
alike; the table gives medians of wall time and of this process's CPU time (steadier on a
shared machine) and the ratios, measured in this run. A decode step streams every weight
(1.07 GB in float32) for ``batch`` new tokens, so its cost per token falls with the batch:
``--sweep-batches`` repeats the forward-vs-generate_tokens comparison at larger batches.
Then a decode step is split into its parts (the blocks for one new token, the 262k-wide
unembedding of the last position, the sampling), and bfloat16 is tried two ways (the model
cast to bf16, and float32 weights under ``torch.autocast("cpu", dtype=torch.bfloat16)``):
speed, greedy token agreement with float32, and the max |logit| difference on the forward
pass.

    python benchmarks/generation.py [--batch 16] [--new-tokens 32] [--repeats 3]

``--precision-rows 8,32,128`` instead times float32 against bfloat16 generation alone (greedy
and top-k 50 sampled, ``--backend hooked`` or ``bridge``) at each number of rows, interleaved,
and writes ``generation_precision_<backend>.md``: how the bfloat16 speed-up grows with the
rows a decode step shares its weight reads among.
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

from ssae_lens._core.backend import backend
from ssae_lens._core.io import write_text_atomic
from ssae_lens.generation import generate_tokens, sample_tokens
from ssae_lens.models import load_model

PROMPTS = [
    "I think that the best way to",
    "The weather today is",
    "My favourite food is",
    "In the morning I usually",
    "The history of the city begins",
    "She opened the door and saw",
    "Scientists have recently discovered",
    "The most important thing about",
]


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Median wall and CPU seconds of each method, run in rounds (one warm-up call each)."""
    for fn in methods.values():
        timed(fn)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            times[name].append(timed(fn))
    return {
        name: {
            "wall_s": statistics.median(t[0] for t in ts),
            "cpu_s": statistics.median(t[1] for t in ts),
            "wall_runs": [t[0] for t in ts],
            "cpu_runs": [t[1] for t in ts],
        }
        for name, ts in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sweep-batches", default="64", help="more batch sizes (comma list)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--precision-rows", default="", help="only the float32-vs-bfloat16 sweep (comma list)"
    )
    parser.add_argument("--backend", default="hooked", choices=("hooked", "bridge"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.precision_rows:
        precision_by_rows(args)
        return
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    n_new = args.new_tokens

    model = load_model("gemma-3-270m")
    tokens, _ = generate_tokens(model, prompts, n_new, do_sample=False)
    mask = (torch.cumsum(tokens != model.tokenizer.pad_token_id, 1) > 0).long()
    n_tokens = tokens.numel()
    print(f"{args.batch} rows x {tokens.shape[1]} tokens = {n_tokens} tokens", flush=True)

    def forward(m=model) -> object:
        return m(tokens, attention_mask=mask)

    def greedy(m=model) -> object:
        return generate_tokens(m, prompts, n_new, do_sample=False)

    def sampled(m=model) -> object:
        return generate_tokens(m, prompts, n_new, top_k=50, seed=0)

    def tl_generate(m=model) -> object:
        return m.generate(
            prompts, max_new_tokens=n_new, do_sample=False, stop_at_eos=False,
            padding_side="left", verbose=False, return_type="tokens",
        )  # fmt: skip

    speed = interleaved(
        {
            "plain forward": forward,
            "generate_tokens (greedy)": greedy,
            "generate_tokens (top-k 50)": sampled,
            "model.generate (greedy)": tl_generate,
        },
        args.repeats,
    )
    for row in speed.values():
        row["tokens_per_s"] = n_tokens / row["wall_s"]
    print(json.dumps(speed, indent=2), flush=True)

    # --- the same comparison at larger batches
    sweep = {}
    for batch in [int(b) for b in args.sweep_batches.split(",") if b]:
        rows = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        out, _ = generate_tokens(model, rows, n_new, do_sample=False)
        out_mask = (torch.cumsum(out != model.tokenizer.pad_token_id, 1) > 0).long()
        timing = interleaved(
            {
                "plain forward": lambda out=out, out_mask=out_mask: model(
                    out, attention_mask=out_mask
                ),
                "generate_tokens (greedy)": lambda rows=rows: generate_tokens(
                    model, rows, n_new, do_sample=False
                ),
            },
            args.repeats,
        )
        sweep[batch] = {"n_tokens": out.numel(), **timing}
        print(batch, json.dumps(sweep[batch], indent=2), flush=True)

    # --- one decode step, part by part (batch rows, one new token each, KV cache of the prompt)
    steps = decode_step_parts(model, prompts, args.repeats)
    print(json.dumps(steps, indent=2), flush=True)

    # --- bfloat16
    reference_logits = forward().float()
    reference_tokens = tokens[:, -n_new:]
    bf16_model = load_model("gemma-3-270m", precision="bfloat16")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)

    def under_autocast(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with autocast:
                return fn()

        return run

    precision = {}
    variants = {
        "bf16 weights": (lambda fn: lambda: fn(bf16_model)),
        "fp32 weights, bf16 autocast": under_autocast,
    }
    for name, wrap in variants.items():
        timing = interleaved(
            {"fp32 forward": forward, "fp32 greedy": greedy}
            | {f"{name} forward": wrap(forward), f"{name} greedy": wrap(greedy)},
            args.repeats,
        )
        with torch.inference_mode():
            logits = wrap(forward)().float()
            generated = wrap(greedy)()[0][:, -n_new:]
        same = generated == reference_tokens
        first_diff = [
            int(row.logical_not().nonzero()[0]) if not bool(row.all()) else n_new for row in same
        ]
        ratio = {
            f"{part}_speedup_{clock}": timing[f"fp32 {part}"][f"{clock}_s"]
            / timing[f"{name} {part}"][f"{clock}_s"]
            for part in ("forward", "greedy")
            for clock in ("wall", "cpu")
        }
        precision[name] = {
            **ratio,
            "logit_max_abs_diff": float((logits - reference_logits).abs().max()),
            "logit_max_abs": float(reference_logits.abs().max()),
            "next_token_top1_agreement": float(
                (logits.argmax(-1) == reference_logits.argmax(-1))[mask.bool()].double().mean()
            ),
            "greedy_token_agreement": float(same.double().mean()),
            "greedy_rows_identical": int(same.all(1).sum()),
            "greedy_mean_first_divergence": statistics.mean(first_diff),
            "timing": timing,
        }
        print(name, json.dumps(precision[name], indent=2), flush=True)

    report = write_report(args, n_tokens, tokens.shape[1], speed, sweep, steps, precision)
    print(report)


def _paired_ratio(timing: dict, slow: str, fast: str, clock: str) -> list[float]:
    """Median, min and max over rounds of ``slow``'s time / ``fast``'s in the same round."""
    ratios = [
        a / b
        for a, b in zip(timing[slow][f"{clock}_runs"], timing[fast][f"{clock}_runs"], strict=True)
    ]
    return [statistics.median(ratios), min(ratios), max(ratios)]


def _ratio(r: list[float]) -> str:
    return f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


def _transformerlens_layout(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every weight contiguous again, as TransformerLens stores it (undoing
    ``ssae_lens.models.decoding_layout``), for the before/after comparison."""
    for weight in model.parameters():
        weight.data = weight.data.contiguous()
    return model


def precision_by_rows(args: argparse.Namespace) -> None:
    """float32 vs bfloat16 ``generate_tokens`` at each of ``--precision-rows`` rows; with the
    hooked backend also greedy decoding in TransformerLens's own weight layout."""
    models = {
        p: load_model("gemma-3-270m", backend=args.backend, precision=p)
        for p in ("float32", "bfloat16")
    }
    tl_layout = {}
    if args.backend == "hooked":
        tl_layout = {
            f"{p} TL layout": _transformerlens_layout(load_model("gemma-3-270m", precision=p))
            for p in ("float32", "bfloat16")
        }
    n_new, table, load_before = args.new_tokens, {}, os.getloadavg()[0]
    for rows in [int(b) for b in args.precision_rows.split(",")]:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(rows)]

        def run(model, sample: bool, prompts=prompts) -> Callable[[], object]:
            top_k = 50 if sample else None
            return lambda: generate_tokens(
                model, prompts, n_new, do_sample=sample, top_k=top_k, seed=0
            )

        methods = {
            f"{p} {mode}": run(m, mode == "top-k 50")
            for mode in ("greedy", "top-k 50")
            for p, m in models.items()
        } | {f"{name} greedy": run(m, False) for name, m in tl_layout.items()}
        timing = interleaved(methods, args.repeats)
        table[rows] = {
            "timing": timing,
            **{
                f"{mode} {clock}": _paired_ratio(
                    timing, f"float32 {mode}", f"bfloat16 {mode}", clock
                )
                for mode in ("greedy", "top-k 50")
                for clock in ("wall", "cpu")
            },
            **{
                f"layout {p} {clock}": _paired_ratio(
                    timing, f"{p} TL layout greedy", f"{p} greedy", clock
                )
                for p in ("float32", "bfloat16")
                for clock in ("wall", "cpu")
                if tl_layout
            },
            **{
                f"TL layout {clock}": _paired_ratio(
                    timing, "float32 TL layout greedy", "bfloat16 TL layout greedy", clock
                )
                for clock in ("wall", "cpu")
                if tl_layout
            },
        }
        print(rows, json.dumps(table[rows], indent=2), flush=True)
    lines = [
        f"# bfloat16 generation speed-up by rows, Gemma-3-270M ({args.backend} backend, CPU)",
        "",
        f"Command: `python benchmarks/generation.py --precision-rows {args.precision_rows} "
        f"--backend {args.backend} --new-tokens {n_new} --repeats {args.repeats} --threads "
        f"{args.threads}`; `generate_tokens` with the model loaded in float32 and in bfloat16 "
        f"(`load_model(precision=...)`), {n_new} new tokens after prompts of <= 8 tokens, "
        "interleaved runs (one warm-up each), measured in this run; speed-up = float32 time / "
        "bfloat16 time in the same round, median [min-max] over rounds. 1-minute load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores; CPU time, this "
        "process's, is the steadier clock on a loaded machine).",
        "",
        "| rows | float32 greedy s (wall) | greedy speed-up (wall / CPU) "
        "| top-k 50 speed-up (wall / CPU) |",
        "|---:|---:|---:|---:|",
    ]
    for rows, t in table.items():
        lines.append(
            f"| {rows} | {t['timing']['float32 greedy']['wall_s']:.1f} | "
            f"{_ratio(t['greedy wall'])} / {_ratio(t['greedy cpu'])} | "
            f"{_ratio(t['top-k 50 wall'])} / {_ratio(t['top-k 50 cpu'])} |"
        )
    if tl_layout:
        lines += [
            "",
            "Greedy decoding with the weights in `decoding_layout` (as `load_model` loads them) "
            "against TransformerLens's own layout, which copies every gated-MLP, attention and "
            "unembedding weight on each forward pass; speed-up = TransformerLens layout time / "
            "decoding layout time, same run:",
            "",
            "| rows | float32 (wall / CPU) | bfloat16 (wall / CPU) "
            "| bfloat16 vs float32 in TransformerLens's layout (wall / CPU) |",
            "|---:|---:|---:|---:|",
        ]
        for rows, t in table.items():
            lines.append(
                f"| {rows} | {_ratio(t['layout float32 wall'])} / "
                f"{_ratio(t['layout float32 cpu'])} | {_ratio(t['layout bfloat16 wall'])} / "
                f"{_ratio(t['layout bfloat16 cpu'])} | {_ratio(t['TL layout wall'])} / "
                f"{_ratio(t['TL layout cpu'])} |"
            )
    text = "\n".join([*lines, ""])
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"generation_precision_{args.backend}"
    stem += f"_threads{args.threads}" if args.threads != 1 else ""
    write_text_atomic(args.out / f"{stem}.md", text)
    payload = dict(args={k: str(v) for k, v in vars(args).items()}, rows=table)
    write_text_atomic(args.out / f"{stem}.json", json.dumps(payload, indent=2))


@torch.inference_mode()
def decode_step_parts(model, prompts: list[str], repeats: int) -> dict[str, float]:
    """Median seconds of the parts of one decode step for ``len(prompts)`` rows."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    n_layers = model.cfg.n_layers
    tokens = model.to_tokens(prompts, padding_side="left")
    mask = (torch.cumsum(tokens != model.tokenizer.pad_token_id, 1) > 0).long()
    ones = mask.new_ones(len(prompts), 1)
    u = torch.rand(len(prompts), generator=torch.Generator().manual_seed(0))
    parts: dict[str, list[float]] = {"blocks": [], "unembed": [], "top-k 50 sampling": []}
    for _ in range(repeats + 1):
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(prompts))
        resid = model(tokens, attention_mask=mask, past_kv_cache=cache, stop_at_layer=n_layers)
        clock = time.process_time()
        logits = backend(model).final_logits(resid[:, -1])
        parts["unembed"].append(time.process_time() - clock)
        clock = time.process_time()
        nxt = sample_tokens(logits, u, top_k=50)
        parts["top-k 50 sampling"].append(time.process_time() - clock)
        clock = time.process_time()
        model(nxt[:, None], attention_mask=ones, past_kv_cache=cache, stop_at_layer=n_layers)
        parts["blocks"].append(time.process_time() - clock)
    out = {name: statistics.median(ts[1:]) for name, ts in parts.items()}  # first: warm-up
    out["step"] = sum(out.values())
    return out


def write_report(args, n_tokens, width, speed, sweep, steps, precision) -> str:
    forward = speed["plain forward"]
    lines = [
        "# Generation speed on Gemma-3-270M (CPU)",
        "",
        f"Command: `python benchmarks/generation.py --batch {args.batch} "
        f"--new-tokens {args.new_tokens} --repeats {args.repeats} --threads {args.threads}` "
        f"({args.batch} rows x {width} tokens = {n_tokens} tokens: left-padded prompts of "
        f"<= {width - args.new_tokens} tokens + {args.new_tokens} new; {args.threads} torch "
        f"thread(s); run at nice {os.nice(0)}, 1-minute load average {os.getloadavg()[0]:.1f} "
        f"at the end ({os.cpu_count()} cores); medians of interleaved runs; CPU time is this "
        "process's).",
        "",
        "| method | wall s | CPU s | tokens/s (wall) | speed vs plain forward (wall) | (CPU) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in speed.items():
        lines.append(
            f"| {name} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['tokens_per_s']:.0f} | "
            f"{forward['wall_s'] / row['wall_s']:.2f}x | {forward['cpu_s'] / row['cpu_s']:.2f}x |"
        )
    gen = speed["generate_tokens (greedy)"]
    tl = speed["model.generate (greedy)"]
    lines += [
        "",
        f"generate_tokens (greedy) runs at {forward['cpu_s'] / gen['cpu_s']:.2f}x the plain "
        f"forward's tokens per CPU second ({forward['wall_s'] / gen['wall_s']:.2f}x wall) and "
        f"{tl['cpu_s'] / gen['cpu_s']:.2f}x model.generate's ({tl['wall_s'] / gen['wall_s']:.2f}x "
        "wall). Goal: >= 0.7x the plain forward.",
        "",
        "| batch | tokens | generate_tokens vs plain forward (CPU) | (wall) |",
        "|---:|---:|---:|---:|",
        f"| {args.batch} | {n_tokens} | {forward['cpu_s'] / gen['cpu_s']:.2f}x | "
        f"{forward['wall_s'] / gen['wall_s']:.2f}x |",
    ]
    for batch, t in sweep.items():
        fwd, g = t["plain forward"], t["generate_tokens (greedy)"]
        lines.append(
            f"| {batch} | {t['n_tokens']} | {fwd['cpu_s'] / g['cpu_s']:.2f}x | "
            f"{fwd['wall_s'] / g['wall_s']:.2f}x |"
        )
    lines += [
        "",
        f"## One decode step ({args.batch} rows, CPU seconds, medians)",
        "",
        "| part | s | share |",
        "|---|---:|---:|",
    ]
    for name, value in steps.items():
        if name != "step":
            lines.append(f"| {name} | {value:.4f} | {100 * value / steps['step']:.0f}% |")
    lines += [f"| total | {steps['step']:.4f} | |", "", "## bfloat16", ""]
    lines += [
        "| variant | forward speed-up (CPU / wall) | greedy speed-up (CPU / wall) | "
        "max abs logit diff (max abs logit) | next-token top-1 agreement | greedy tokens equal "
        "| rows identical | mean first divergence |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in precision.items():
        lines.append(
            f"| {name} | {p['forward_speedup_cpu']:.2f}x / {p['forward_speedup_wall']:.2f}x | "
            f"{p['greedy_speedup_cpu']:.2f}x / {p['greedy_speedup_wall']:.2f}x | "
            f"{p['logit_max_abs_diff']:.3g} ({p['logit_max_abs']:.3g}) | "
            f"{100 * p['next_token_top1_agreement']:.1f}% | "
            f"{100 * p['greedy_token_agreement']:.1f}% | {p['greedy_rows_identical']}/{args.batch} "
            f"| {p['greedy_mean_first_divergence']:.1f} of {args.new_tokens} |"
        )
    lines.append("")
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "generation.md", text)
    payload = dict(
        args={k: str(v) for k, v in vars(args).items()},
        n_tokens=n_tokens,
        speed=speed,
        batch_sweep=sweep,
        decode_step=steps,
        precision=precision,
    )
    write_text_atomic(args.out / "generation.json", json.dumps(payload, indent=2))
    return text


if __name__ == "__main__":
    main()
