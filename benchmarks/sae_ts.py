"""SAE-TS vs CAA vs SAE decoder-row steering on Gemma-3-270M, with a reference SAELens SAE.

Steps (CPU-sized; every size is a flag and is written into the report):

1. The reference SAE: :func:`ssae_lens.saes.reference.train_reference_sae` at
   ``blocks.6.hook_resid_post`` (trained once, then loaded from the cache).
2. One steering scale for all unit directions: the median of :func:`calibrate_scales`
   (LM loss on reference sentences up by 0.5 nats) over a few random and decoder-row
   directions; calibrating each of hundreds of directions costs more than the rest together.
3. Effects (:func:`measure_effects`) of the training directions: decoder rows of the task
   features and of random features, random mixes of decoder rows, and random Gaussian
   directions, read from the rollouts' text by an unsteered pass (``--readout text``, the
   paper's y(s); ``steered`` keeps the vector in the readout); the
   :class:`EffectModel` is fitted by ridge with a 20 % held-out split (R^2 reported).
4. Five steering tasks (sentiment, formality, tense, voice from ``attribute_texts``, and
   French). Each task's target is a weighted feature set: ``--targets`` (a
   ``{task: {feature: weight}}`` mapping, chosen by reading the feature cards) or, for tasks
   it leaves out, the one SAE feature whose mean activation differs most (in pooled-std
   units) between the task's positive and negative texts. The report shows every target's
   feature card (top contexts on a held-out reference corpus, activation histogram, logit
   tokens). Vectors: CAA (mean last-token difference, normalised), the target's weighted
   decoder rows, and SAE-TS for the target. ``evaluate_methods`` sweeps multiples of each
   vector's own calibrated scale (and ``--abs-scales``, one absolute grid shared by all
   methods, as the reference evaluates) from neutral prompts, all methods on the same
   prompts and seeds. Behaviour (``--behavior offline``): VADER for sentiment, lingua's French
   confidence for French, textstat reading ease (complex) as a proxy for formality, and a
   ``ProbeScorer`` fitted on held-out labelled texts at ``blocks.9.hook_resid_post`` for tense
   and voice (``--behavior probe``: probes for all but French, as before); coherence is
   ``LikelihoodCoherenceScorer``, and the fraction of best-scale continuations lingua detects
   as English is reported beside it. The metric is the max over scales of mean(behaviour) x
   mean(coherence), with a bootstrap interval; methods are compared by paired bootstrap
   differences.
5. Side effects: for >= 20 features (the task targets, then the measured decoder-row features
   whose effect the effect model predicts best: highest per-feature R^2 on the effect data's
   own held-out split, never the rollouts of this step; ``--side-features random``: random
   ones), the effects of the decoder row and of the SAE-TS vector are measured on held-out
   rollouts (other prompts, other seed) and compared by ``side_effect_ratio`` (mean
   |non-target change| per unit target change; lower is better).

    python benchmarks/sae_ts.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from ssae_lens._core.io import save_figure, write_text_atomic
from ssae_lens.activations import harvest_activations
from ssae_lens.data.builtin import attribute_texts, language_pairs
from ssae_lens.models import cache_root, load_model
from ssae_lens.sae_ts import (
    EffectModel,
    calibrate_scales,
    decoder_row_vector,
    measure_effects,
    sae_ts_vector,
    side_effect_ratio,
)
from ssae_lens.saes import feature_cards, reference_corpus, train_reference_sae
from ssae_lens.steering import (
    KeywordScorer,
    LanguageScorer,
    LikelihoodCoherenceScorer,
    ProbeScorer,
    ReadingEaseScorer,
    SameLanguageScorer,
    VaderSentimentScorer,
    caa_vector,
    compare_evaluations,
    evaluate_methods,
)

HOOK = "blocks.6.hook_resid_post"
PROBE_HOOK = "blocks.9.hook_resid_post"
EFFECT_PROMPTS = ["I think that", "The story begins"]
HELD_OUT_PROMPTS = ["Last week,", "In my opinion"]
EVAL_PROMPTS = ["I think that", "My friend told me"]
FRENCH_FUNCTION_WORDS = [
    "le", "la", "les", "un", "une", "des", "et", "est", "je", "il", "elle", "nous", "vous",
    "dans", "pour", "avec", "sur", "pas", "qui", "que", "du", "au", "ce", "mais", "très",
]  # fmt: skip
METHODS = ("CAA", "SAE", "SAE-TS")
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def task_texts(task: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """``(negative, positive)`` texts of a task."""
    if task == "french":
        words = language_pairs()
        return list(words.sources)[:n], list(words.targets)[:n]
    return attribute_texts(task, n=n, seed=seed)


def task_target(sae, model, negative: list[str], positive: list[str], given) -> dict:
    """The task's weighted feature set and how well it separates positive from negative texts.

    ``given`` (``{feature: weight}``) is used as is; ``None`` picks the one feature whose mean
    activation differs most between the texts. Separation: the difference of the mean of
    ``sum_f w_f a_f`` over tokens, in pooled-std units.
    """
    with torch.no_grad():
        neg = sae.encode(harvest_activations(model, negative, HOOK, position="all"))
        pos = sae.encode(harvest_activations(model, positive, HOOK, position="all"))
    if given is None:
        pooled = torch.cat([neg, pos]).std(0).clamp_min(1e-6)
        best = int(((pos.mean(0) - neg.mean(0)) / pooled).argmax())
        weights, chosen = {best: 1.0}, "auto"
    else:
        weights, chosen = {int(f): float(w) for f, w in given.items()}, "given"
    t = torch.zeros(neg.shape[1])
    for f, w in weights.items():
        t[f] = w
    a, b = neg @ t, pos @ t
    separation = float((b.mean() - a.mean()) / torch.cat([a, b]).std().clamp_min(1e-6))
    return dict(features=weights, separation=separation, chosen=chosen)


def behaviour_scorer(task: str, kind: str, model, positive, negative):
    """The task's behaviour scorer and its name (see the module docstring)."""
    if task == "french":
        if kind == "offline":
            return LanguageScorer("french"), "lingua French confidence"
        words = list(language_pairs().targets) + FRENCH_FUNCTION_WORDS
        return KeywordScorer(words, saturation=2), "French keywords"
    if kind == "offline" and task == "sentiment":
        return VaderSentimentScorer("positive"), "VADER positive"
    if kind == "offline" and task == "formality":
        return ReadingEaseScorer("complex"), "textstat reading ease (complex; formality proxy)"
    probe = ProbeScorer.fit(model, positive, negative, PROBE_HOOK, position="mean")
    return probe, f"probe at {PROBE_HOOK}"


def _read_config(path: Path, parser: argparse.ArgumentParser) -> dict:
    """Option values from a YAML file whose keys are the flags' names (``n_decoder``)."""
    if not path.is_file():
        parser.error(f"config file {str(path)!r} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    valid = [a.dest for a in parser._actions if a.dest not in ("help", "config")]
    for key in values:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parser.error(f"unknown key {key!r} in {path}{hint}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--sae-tokens", type=int, default=100_000)
    parser.add_argument("--corpus-generated", type=int, default=16, help="SAE corpus rollouts")
    parser.add_argument("--corpus-tokens", type=int, default=32, help="tokens per rollout")
    parser.add_argument("--corpus-sentences", type=int, default=1000)
    parser.add_argument("--sae-lr", type=float, default=1e-3, help="SAE Adam learning rate")
    parser.add_argument("--sae-batch", type=int, default=512, help="SAE batch size")
    parser.add_argument("--n-decoder", type=int, default=64, help="decoder-row directions")
    parser.add_argument("--n-mix", type=int, default=0, help="random mixes of 2-4 decoder rows")
    parser.add_argument("--n-random", type=int, default=32, help="random Gaussian directions")
    parser.add_argument("--samples", type=int, default=1, help="samples per effect prompt")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per effect rollout")
    parser.add_argument(
        "--readout",
        choices=("text", "steered"),
        default="text",
        help="read the rollouts' features unsteered (the paper's effect of the text) or steered",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="rollouts per batch")
    parser.add_argument("--n-side", type=int, default=20, help="features in the side-effect test")
    parser.add_argument(
        "--side-features",
        choices=("fit", "random"),
        default="fit",
        help="after the task targets: the features the effect model predicts best, or random ones",
    )
    parser.add_argument("--held-samples", type=int, default=None, help="default: --samples")
    parser.add_argument("--eval-tokens", type=int, default=8)
    parser.add_argument(
        "--eval-samples", type=int, default=1, help="continuations per prompt (1: greedy)"
    )
    parser.add_argument("--eval-top-k", type=int, default=50, help="top-k when sampling")
    parser.add_argument(
        "--abs-scales", default="", help="one absolute scale grid for all methods (comma list)"
    )
    parser.add_argument("--behavior", choices=("offline", "probe"), default="offline")
    parser.add_argument(
        "--targets",
        type=json.loads,
        default=None,
        help='weighted targets as JSON, {"sentiment": {"123": 0.5, "456": 0.5}}; others: auto',
    )
    parser.add_argument("--sweep", default="1,2", help="multiples of the calibrated scale")
    parser.add_argument("--effect-multiplier", type=float, default=1.0, help="effect scale")
    parser.add_argument("--tasks", default="sentiment,formality,tense,voice,french")
    parser.add_argument("--name", default="sae_ts", help="name of the written files")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML of these options (configs/benchmarks/sae_ts.yaml); flags win",
    )
    return parser


def main() -> None:
    parser = build_parser()
    given, _ = parser.parse_known_args()
    if given.config is not None:
        parser.set_defaults(**_read_config(given.config, parser))
    args = parser.parse_args()
    if args.quick:
        args.n_decoder, args.n_random, args.samples, args.n_side = 8, 8, 1, 3
        args.tokens, args.eval_tokens, args.sweep = 4, 6, "1"
    if args.threads:
        torch.set_num_threads(args.threads)
    sweep = [float(x) for x in args.sweep.split(",")]
    tasks = ["sentiment", "formality"] if args.quick else [t for t in args.tasks.split(",") if t]
    if args.held_samples is None:
        args.held_samples = args.samples
    # The effect collection is cached under the options that change it (a rerun with other
    # held-out or task options reuses it); the held-out rollouts are keyed separately below.
    effect_options = (
        "quick", "d_sae", "sae_tokens", "corpus_generated", "corpus_tokens", "corpus_sentences",
        "sae_lr", "sae_batch", "n_decoder", "n_mix", "n_random", "samples", "tokens", "readout",
        "effect_multiplier", "seed",
    )  # fmt: skip
    sizes = {k: getattr(args, k) for k in effect_options}
    key = hashlib.sha256(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:12]
    cache = cache_root() / "benchmarks" / f"sae_ts-{key}"  # resumable effect collection
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now
        print(f"[{name}] {timings[name]:.0f} s", flush=True)

    model = load_model("gemma-3-270m", device=args.device)
    lap("load model")
    sae = train_reference_sae(
        model,
        HOOK,
        d_sae=args.d_sae,
        n_tokens=args.sae_tokens,
        batch_size=args.sae_batch,
        lr=args.sae_lr,
        corpus_options=dict(
            n_generated=args.corpus_generated,
            generated_tokens=args.corpus_tokens,
            n_sentences=args.corpus_sentences,
        ),
        device=args.device,
    )
    lap("reference SAE")

    # --- task targets, from texts disjoint from the probe/CAA texts (other seed), and their
    # feature cards on a held-out reference corpus (other seed than the SAE's)
    given = args.targets or {}
    targets: dict[str, dict] = {}
    for task in tasks:
        negative, positive = task_texts(task, 64, args.seed + 1)
        targets[task] = task_target(sae, model, negative, positive, given.get(task))
    card_corpus = reference_corpus(
        model,
        n_generated=args.corpus_generated,
        generated_tokens=args.corpus_tokens,
        n_sentences=args.corpus_sentences,
        seed=args.seed + 7,
    )
    target_features = list(dict.fromkeys(f for t in targets.values() for f in t["features"]))
    cards = feature_cards(model, sae, target_features, card_corpus, n_contexts=6, n_logits=8)
    lap("task targets and cards")

    # --- one scale for every unit direction: median of a small calibration
    gen = torch.Generator().manual_seed(args.seed)
    d_model, d_sae = model.cfg.d_model, sae.cfg.d_sae
    reference = attribute_texts("tense", n=4, seed=args.seed + 2)[0]
    picked = torch.randperm(d_sae, generator=gen)[:2]
    probes_dirs = torch.cat([torch.randn(2, d_model, generator=gen), sae.W_dec[picked]]).detach()
    probes_dirs = probes_dirs / probes_dirs.norm(dim=1, keepdim=True)
    acts = harvest_activations(model, reference, HOOK, position="all")
    act_norm = float(acts.norm(dim=1).mean())
    cal_grid = torch.logspace(math.log10(0.02 * act_norm), math.log10(2 * act_norm), 6)
    cal = calibrate_scales(model, probes_dirs, HOOK, reference_texts=reference, scales=cal_grid)
    scale = float(cal.median())
    lap("calibration")
    print(f"mean |x| at {HOOK}: {act_norm:.0f}; calibrated scale {scale:.0f}", flush=True)

    # --- effect data: decoder rows (task targets first), random mixes of 2-4 decoder rows
    # (random positive weights), random Gaussian directions
    forced = target_features
    others = [int(f) for f in torch.randperm(d_sae, generator=gen) if int(f) not in forced]
    features = list(dict.fromkeys(forced + others))[: max(args.n_decoder, len(forced))]
    decoder = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    rows = decoder[features]
    mixes = torch.zeros(args.n_mix, d_model)
    for i in range(args.n_mix):
        k = int(torch.randint(2, 5, (1,), generator=gen))
        picked = torch.randperm(d_sae, generator=gen)[:k]
        mixes[i] = torch.rand(k, generator=gen) @ decoder[picked]
    randoms = torch.randn(args.n_random, d_model, generator=gen)
    directions = torch.cat([rows, mixes, randoms])
    directions = directions / directions.norm(dim=1, keepdim=True)
    effects = measure_effects(
        model,
        sae,
        directions,
        scale * args.effect_multiplier,
        prompts=EFFECT_PROMPTS,
        n_samples=args.samples,
        max_new_tokens=args.tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        do_sample=args.samples > 1,
        steer_readout=args.readout == "steered",
        cache_dir=cache / "effects",
    )
    lap("effects")
    effect_model, report = EffectModel.fit(
        directions,
        effects,
        hook_name=HOOK,
        model_name=model.cfg.model_name,
        seed=args.seed,
        weight_decay=RIDGE_GRID,  # picked by 5-fold CV on the training split
    )
    wd = effect_model.provenance["weight_decay"]
    print(f"effect model: R^2 held-out {report.r2:.3f} (n_train {report.n_train})", flush=True)

    # --- side effects on held-out rollouts: decoder row vs SAE-TS for the same feature
    # Only features the effect data moved have a column of W (SAE-TS needs W t != 0). After
    # the task targets come the features whose effect the fit predicts best (per-feature R^2
    # on the effect data's held-out split): the features SAE-TS can be aimed at.
    fitted = [f for f in features if float(effect_model.W[:, f].norm()) > 0]
    print(f"{len(fitted)}/{len(features)} decoder-row features have effect data", flush=True)
    feature_r2 = report.r2_per_feature.nan_to_num(-math.inf)
    ranked = [f for f in fitted if f not in forced]  # random order
    if args.side_features == "fit":
        ranked.sort(key=lambda f: -float(feature_r2[f]))
    side_features = ([f for f in forced if f in fitted] + ranked)[: args.n_side]
    dec_vecs = [decoder_row_vector(sae, f, hook_name=HOOK).direction for f in side_features]
    ts_vecs = [sae_ts_vector(effect_model, [f]).direction for f in side_features]
    held_key = hashlib.sha256(str((side_features, args.held_samples)).encode()).hexdigest()[:8]
    held = measure_effects(
        model,
        sae,
        torch.stack(dec_vecs + ts_vecs).float(),
        scale * args.effect_multiplier,
        prompts=HELD_OUT_PROMPTS,
        n_samples=args.held_samples,
        max_new_tokens=args.tokens,
        batch_size=args.batch_size,
        seed=args.seed + 1000,
        do_sample=args.held_samples > 1,
        steer_readout=args.readout == "steered",
        cache_dir=cache / f"held_out-{held_key}",
    )
    n_side = len(side_features)
    side = []
    for i, f in enumerate(side_features):
        dec_y, ts_y = held[i], held[n_side + i]
        side.append(
            dict(
                feature=f,
                fit_r2=float(feature_r2[f]),
                dec_target=float(dec_y[f]),
                ts_target=float(ts_y[f]),
                dec_ratio=side_effect_ratio(dec_y, [f]),
                ts_ratio=side_effect_ratio(ts_y, [f]),
            )
        )
    lap("held-out side effects")
    scores: dict[str, dict[str, float]] = {}
    best_scales: dict[str, dict[str, float]] = {}
    own_scales: dict[str, dict[str, float]] = {}
    tables = (scores, best_scales, own_scales)
    state = dict(targets=targets, cards=cards, comparisons={}, scorers={}, in_language={})
    write_report(args, state, scale, act_norm, report, wd, side, tables, timings)

    # --- steering tasks
    coherence = LikelihoodCoherenceScorer(model)
    english = SameLanguageScorer("english")
    abs_scales = [float(x) for x in args.abs_scales.split(",") if x]
    sampling = (
        dict(n_samples=args.eval_samples, do_sample=True, top_k=args.eval_top_k)
        if args.eval_samples > 1
        else {}
    )
    for task in tqdm(tasks, desc="tasks"):
        negative, positive = task_texts(task, 64, args.seed)
        behaviour, state["scorers"][task] = behaviour_scorer(
            task, args.behavior, model, positive, negative
        )
        target = targets[task]["features"]
        vectors = {
            "CAA": caa_vector(model, positive, negative, HOOK, normalize=True),
            "SAE": decoder_row_vector(sae, target, hook_name=HOOK),
        }
        if any(f in fitted for f in target):
            vectors["SAE-TS"] = sae_ts_vector(effect_model, target)
        scores[task] = {"SAE-TS": (math.nan, (math.nan, math.nan))}
        best_scales[task] = {"SAE-TS": math.nan}
        own_scales[task] = {"SAE-TS": math.nan}
        # each vector's own calibrated scale (LM loss +0.5 nats), as in the paper
        own = calibrate_scales(
            model,
            torch.stack([v.direction for v in vectors.values()]).float(),
            HOOK,
            reference_texts=reference,
            scales=cal_grid,
        )
        own_scales[task].update(zip(vectors, own.tolist(), strict=True))
        grids = {"own": {m: [x * own_scales[task][m] for x in sweep] for m in vectors}}
        if abs_scales:
            grids["absolute"] = abs_scales
        for grid_name, grid in grids.items():
            results = evaluate_methods(
                model,
                vectors,
                scales=grid,
                prompts=EVAL_PROMPTS,
                behavior_scorer=behaviour,
                coherence_scorer=coherence,
                max_new_tokens=args.eval_tokens,
                seed=args.seed,
                **sampling,
            )
            if len(results) > 1:
                comparison = compare_evaluations(results, baseline=next(reversed(results)))
                state["comparisons"][task, grid_name] = comparison.to_markdown()
            if grid_name != "own":
                continue
            for method, result in results.items():
                scores[task][method] = (result.best_score, result.metric_ci)
                best_scales[task][method] = result.best_scale / own_scales[task][method]
                best = result.samples_at()
                in_english = english([s.text for s in best], [s.prompt for s in best])
                state["in_language"][task, method] = sum(in_english) / len(in_english)
        lap(f"task {task}")
        write_report(args, state, scale, act_norm, report, wd, side, tables, timings)


def write_report(args, state, scale, act_norm, report, wd, side, tables, timings):
    """Print the tables and write ``sae_ts.md``, ``sae_ts.json`` and ``sae_ts.png``."""
    scores, best_scales, own_scales = tables
    targets = state["targets"]
    evaluation = (
        f"{len(EVAL_PROMPTS)} prompts x {args.eval_samples} samples (top-k {args.eval_top_k}) x "
        if args.eval_samples > 1
        else f"{len(EVAL_PROMPTS)} greedy prompts x "
    ) + f"{args.eval_tokens} tokens"
    tasks = list(scores)
    lines = [
        "# SAE-TS vs CAA vs SAE decoder-row steering (Gemma-3-270M)",
        "",
        f"Command: `python benchmarks/sae_ts.py {' '.join(sys.argv[1:])}` "
        f"(d_sae {args.d_sae} TopK k=32 SAE trained on {args.sae_tokens} token samples of a corpus "
        f"of {args.corpus_generated} model rollouts x {args.corpus_tokens} tokens + "
        f"{args.corpus_sentences} sentence pairs + the en/fr word list; effects of "
        f"{args.n_decoder} decoder rows + {args.n_mix} random mixes of 2-4 rows + "
        f"{args.n_random} random Gaussian directions, "
        f"{len(EFFECT_PROMPTS)} prompts x {args.samples} samples x {args.tokens} tokens, "
        f"features read {'unsteered from the text' if args.readout == 'text' else 'steered'} "
        f"(held-out: {len(HELD_OUT_PROMPTS)} other prompts x {args.held_samples} samples, "
        "other seed); "
        f"task scale sweep {args.sweep} x each vector's calibrated scale; effects at the "
        f"median calibrated scale {scale:.0f} "
        f"(mean |x| at {HOOK} = {act_norm:.0f}); eval {evaluation}"
        + (f"; shared absolute grid {args.abs_scales}" if args.abs_scales else "")
        + ").",
        "",
        f"Effect model (ridge, weight decay {wd:g} by "
        f"5-fold CV on the training split): held-out R^2 = {report.r2:.3f} "
        f"(n_train {report.n_train}, n_test {report.n_test}).",
        "",
        "## Max over scales of mean(behaviour) x mean(coherence)",
        "",
        "| task | target {feature: weight} (separation) | behaviour scorer | "
        + " | ".join(METHODS)
        + " |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for task in tasks:
        target = targets[task]
        weights = ", ".join(f"{f}: {w:g}" for f, w in target["features"].items())
        cells = []
        for m in METHODS:
            value, (low, high) = scores[task][m]
            english = 100 * state["in_language"].get((task, m), math.nan)
            cells.append(
                f"{value:.3f} [{low:.3f}, {high:.3f}] (x{best_scales[task][m]:g} of "
                f"{own_scales[task][m]:.0f}; {english:.0f}% en)"
            )
        lines.append(
            f"| {task} | {{{weights}}} ({target['separation']:.2f}, {target['chosen']}) | "
            f"{state['scorers'].get(task, '')} | " + " | ".join(cells) + " |"
        )
    if tasks:
        means = {m: statistics.mean(scores[t][m][0] for t in tasks) for m in METHODS}
        lines.append("| **mean** | | | " + " | ".join(f"{means[m]:.3f}" for m in METHODS) + " |")
    lines += [
        "",
        "(95% bootstrap interval over the continuations; x: best scale in units of the vector's "
        "own calibrated scale, the scale at which it raises the LM loss on the reference "
        "sentences by 0.5 nats, x0 = unsteered; en: fraction of the best scale's continuations "
        "lingua detects as English.)",
        "",
        "### Paired differences",
        "",
    ]
    for (task, grid), table in state["comparisons"].items():
        lines += [f"{task}, {grid} scales:", "", table, ""]
    lines += [
        "",
        f"## Side effects on held-out rollouts (scale {args.effect_multiplier:g} x calibrated, "
        "same for both vectors)",
        "",
        "Features: the task targets, then "
        + (
            "those whose effect the effect model predicts best (per-feature R^2 on its own "
            "held-out split)."
            if args.side_features == "fit"
            else "random decoder-row features of the effect data."
        ),
        "",
        "Ratio = mean |change of non-target features| per unit target change (lower is better; "
        "inf = target did not rise).",
        "",
        "| feature | effect-model R^2 | decoder-row target change | decoder-row ratio | "
        "SAE-TS target change | SAE-TS ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in side:
        lines.append(
            f"| {row['feature']} | {row['fit_r2']:.2f} | {row['dec_target']:.3g} | "
            f"{row['dec_ratio']:.3g} | "
            f"{row['ts_target']:.3g} | {row['ts_ratio']:.3g} |"
        )
    # effect per side effect = 1 / ratio (0 where the target did not rise)
    dec_eff = [0.0 if math.isinf(r["dec_ratio"]) else 1 / r["dec_ratio"] for r in side]
    ts_eff = [0.0 if math.isinf(r["ts_ratio"]) else 1 / r["ts_ratio"] for r in side]
    wins = sum(t > d for t, d in zip(ts_eff, dec_eff, strict=True))
    losses = sum(t < d for t, d in zip(ts_eff, dec_eff, strict=True))
    lines += [
        "",
        f"Median target effect per unit side effect over {len(side)} features: decoder row "
        f"{statistics.median(dec_eff or [math.nan]):.3g}, SAE-TS "
        f"{statistics.median(ts_eff or [math.nan]):.3g}; SAE-TS higher on {wins}, decoder row "
        f"higher on {losses}, tied on {len(side) - wins - losses} of {len(side)} features "
        "(0 where the target did not rise).",
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + ".",
        "",
        "## Feature cards of the task targets",
        "",
        "On a held-out reference corpus (model rollouts and sentences, another seed than the "
        "SAE's corpus).",
        "",
    ]
    for card in state["cards"]:
        lines += ["```", card.summary(), "```", ""]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.name}_quick" if args.quick else args.name
    write_text_atomic(args.out / f"{name}.md", text)
    payload = dict(
        scale=scale,
        act_norm=act_norm,
        r2=report.r2,
        ridge_weight_decay=wd,
        targets=targets,
        cards=[card.to_dict() for card in state["cards"]],
        scores=scores,
        comparisons={f"{task} ({grid})": md for (task, grid), md in state["comparisons"].items()},
        in_english={f"{task} {m}": v for (task, m), v in state["in_language"].items()},
        behaviour_scorers=state["scorers"],
        best_scales=best_scales,
        own_scales=own_scales,
        side=side,
        timings=timings,
        args={k: str(v) for k, v in vars(args).items()},
    )
    write_text_atomic(args.out / f"{name}.json", json.dumps(payload, indent=2))
    plot(args.out / f"{name}.png", tasks, scores, dec_eff, ts_eff)


def plot(path: Path, tasks, scores, dec_eff, ts_eff) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.27
    for i, method in enumerate(METHODS):
        xs = [j + (i - 1) * width for j in range(len(tasks))]
        left.bar(xs, [scores[t][method][0] for t in tasks], width, label=method)
    left.set_xticks(range(len(tasks)), tasks)
    left.set_ylabel("max mean(behaviour) x mean(coherence)")
    left.legend()
    left.set_title("Steering tasks")
    right.scatter(dec_eff, ts_eff, s=18)
    top = max(dec_eff + ts_eff + [1e-9]) * 1.05
    right.plot([0, top], [0, top], color="grey", lw=0.8)
    right.set_xlabel("decoder row: target change / side effect")
    right.set_ylabel("SAE-TS: target change / side effect")
    right.set_title("Held-out rollouts, per feature")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
