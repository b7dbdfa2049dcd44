"""Query-code prototype steering on Gemma-3-270M (issue 5, item 7).

1. Train a SAELens SAE on the flattened attention queries ``blocks.L.attn.hook_q``
   (``ssae_lens.saes.reference.train_reference_sae``, cached).
2. For each target (the positive pole of a sentence attribute: formal, positive
   sentiment), fit class prototypes from the package's labelled sentences.
3. Sweep the number of gradient steps (the "scale") with the evaluation harness:
   behaviour from a linear probe on residual activations of held-out labelled
   texts, coherence from the unsteered model's likelihood.

Writes ``benchmarks/results/query_steering.md`` and one sweep plot per target.

    python benchmarks/query_steering.py [--layer 6 --d-sae 1024 --n-tokens 40000]
"""

import argparse
import time
from pathlib import Path

import torch

from ssae_lens._core.io import write_text_atomic
from ssae_lens.data import load_pairs
from ssae_lens.data.builtin import attribute_texts
from ssae_lens.models import load_model
from ssae_lens.saes.reference import train_reference_sae
from ssae_lens.steering import ProbeScorer, QueryPrototypes, evaluate_steering, steer_queries

RESULTS = Path(__file__).parent / "results"
TARGETS = {"formality": "formal", "sentiment": "positive"}
PROMPTS = ["I went to the shop and", "My neighbour told me that", "Yesterday the weather was"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--n-tokens", type=int, default=40_000)
    parser.add_argument("--steps", default="0,2,5,10", help="comma-separated step counts")
    parser.add_argument("--step-size", type=float, default=0.5)
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="prototype-classifier temperature (default: mean squared prototype distance)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    start = time.perf_counter()
    model = load_model("gemma-3-270m")
    hook = f"blocks.{args.layer}.attn.hook_q"
    # Corpus: the package's templated sentences (every attribute, both poles); generating
    # text with the model first is too slow for a CPU benchmark.
    sentences = load_pairs("sentences")
    sae = train_reference_sae(
        model,
        hook,
        d_sae=args.d_sae,
        architecture="standard",
        n_tokens=args.n_tokens,
        texts=sorted(set(sentences.sources) | set(sentences.targets)),
    )
    probe_hook = f"blocks.{args.layer}.hook_resid_post"
    steps = [float(s) for s in args.steps.split(",")]
    lines = [
        "# Query-code prototype steering on Gemma-3-270M",
        "",
        f"`python benchmarks/query_steering.py --layer {args.layer} --d-sae {args.d_sae} "
        f"--n-tokens {args.n_tokens} --steps {args.steps} --step-size {args.step_size}"
        + (f" --temperature {args.temperature:g}`" if args.temperature else "`"),
        "",
        f"SAE on `{hook}` (standard ReLU, width {args.d_sae}, trained on the package's "
        "sentences); prototype loss, step size "
        f"{args.step_size}, temperature {args.temperature or 'mean squared prototype distance'}"
        f"; greedy, {args.max_new_tokens} new tokens, prompts {PROMPTS}. "
        "Behaviour: logistic probe on held-out attribute sentences at "
        f"`{probe_hook}` (mean over tokens); coherence: unsteered likelihood x distinct bigrams.",
        "",
    ]
    for attribute, target in TARGETS.items():
        negative, positive = attribute_texts(attribute, n=120, seed=0)
        fit_neg, fit_pos = negative[:60], positive[:60]
        probe = ProbeScorer.fit(model, positive[60:], negative[60:], probe_hook, position="mean")
        names = (f"not-{target}", target)
        protos = QueryPrototypes.fit(model, sae, {names[0]: fit_neg, names[1]: fit_pos})
        result = evaluate_steering(
            model,
            lambda n, protos=protos, target=target: steer_queries(
                model,
                sae,
                protos,
                target,
                steps=int(n),
                step_size=args.step_size,
                temperature=args.temperature,
            ),
            prompts=PROMPTS,
            scales=steps,
            behavior_scorer=probe,
            max_new_tokens=args.max_new_tokens,
        )
        plot = result.plot(RESULTS / f"query_steering_{attribute}.png")
        lines += [f"## Target: {target} ({attribute})", "", result.to_markdown(), ""]
        for s in result.samples_at(result.best_scale):
            lines.append(f"- `{s.prompt}` -> unsteered: {s.unsteered!r}; steered: {s.text!r}")
        lines += ["", f"Plot: `{plot.name}`", ""]
        print("\n".join(lines[-8:]), flush=True)
    lines.append(f"Total time: {time.perf_counter() - start:.0f} s on CPU.")
    out = write_text_atomic(RESULTS / "query_steering.md", "\n".join(lines) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
