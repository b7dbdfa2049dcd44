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
   French). Each task's target is the SAE feature whose mean activation differs most (in
   pooled-std units) between the task's positive and negative texts. Vectors: CAA (mean
   last-token difference, normalised), the target's decoder row, and SAE-TS for the target.
   ``evaluate_steering`` sweeps scales (multiples of each vector's own calibrated scale,
   as in the paper) from neutral prompts; behaviour is a ``ProbeScorer`` fitted on held-out
   labelled texts at ``blocks.9.hook_resid_post`` (a ``KeywordScorer`` of French words for
   French); coherence is ``LikelihoodCoherenceScorer``. The metric is the max over scales of
   behaviour x coherence.
5. Side effects: for >= 20 features (the task targets, then the measured decoder-row features
   whose effect the effect model predicts best: highest per-feature R^2 on the effect data's
   own held-out split, never the rollouts of this step; ``--side-features random``: random
   ones), the effects of the decoder row and of the SAE-TS vector are measured on held-out
   rollouts (other prompts, other seed) and compared by ``side_effect_ratio`` (mean
   |non-target change| per unit target change; lower is better).

    python benchmarks/sae_ts.py --config configs/benchmarks/sae_ts.yaml [--set n_decoder=256]
    python benchmarks/sae_ts.py --set quick=true     # tiny sizes: a smoke run

Writes ``<out_dir>/<name>.md``, ``<name>.json``, ``<name>.png`` and ``<name>_config.yaml``
(the config, to rerun with ``--config``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ssae_lens._core.io import save_figure, write_text_atomic
from ssae_lens._core.threads import intra_op_threads
from ssae_lens.activations import harvest_activations
from ssae_lens.config import ReferenceSAESection, RunConfig, parse_config_args, save_config
from ssae_lens.data.builtin import attribute_texts, language_pairs
from ssae_lens.models import cache_root, load_model
from ssae_lens.sae_ts import (
    EffectModel,
    calibrate_scales,
    decoder_row_vector,
    effect_directions,
    measure_effects,
    sae_ts_vector,
    side_effect_ratio,
)
from ssae_lens.saes.reference import train_reference_sae
from ssae_lens.steering import (
    KeywordScorer,
    LikelihoodCoherenceScorer,
    ProbeScorer,
    caa_vector,
    evaluate_steering,
)

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


def target_feature(
    sae, model, hook: str, negative: list[str], positive: list[str]
) -> tuple[int, float]:
    """The feature whose mean activation separates positive from negative texts the most."""
    with torch.no_grad():
        neg = sae.encode(harvest_activations(model, negative, hook, position="all"))
        pos = sae.encode(harvest_activations(model, positive, hook, position="all"))
    pooled = torch.cat([neg, pos]).std(0).clamp_min(1e-6)
    separation = (pos.mean(0) - neg.mean(0)) / pooled
    best = int(separation.argmax())
    return best, float(separation[best])


@dataclass
class SaeTsConfig(RunConfig):
    """Every size of the benchmark (saved next to its results as ``<name>_config.yaml``)."""

    hook_name: str = "blocks.6.hook_resid_post"
    out_dir: str = "benchmarks/results"
    name: str = "sae_ts"  # stem of the written files (``<name>_quick`` with quick)
    quick: bool = False  # tiny sizes: a smoke run
    sae: ReferenceSAESection = field(
        default_factory=lambda: ReferenceSAESection(
            n_tokens=100_000,
            corpus_options={"n_generated": 16, "generated_tokens": 32, "n_sentences": 1000},
        )
    )
    n_decoder: int = 64  # decoder-row directions
    n_mix: int = 0  # random mixes of 2-4 decoder rows
    n_random: int = 32  # random Gaussian directions
    samples: int = 1  # samples per effect prompt
    tokens: int = 8  # tokens per effect rollout
    # read the rollouts' features unsteered (the paper's effect of the text) or steered
    readout: Literal["text", "steered"] = "text"
    batch_size: int = 128  # rollouts per batch
    n_side: int = 20  # features in the side-effect test
    # after the task targets: the features the effect model predicts best, or random ones
    side_features: Literal["fit", "random"] = "fit"
    held_samples: int | None = None  # None: samples
    eval_tokens: int = 8
    sweep: list[float] = field(default_factory=lambda: [1.0, 2.0])  # x the calibrated scale
    effect_multiplier: float = 1.0  # effect scale, x the calibrated scale
    tasks: list[str] = field(
        default_factory=lambda: ["sentiment", "formality", "tense", "voice", "french"]
    )
    threads: int | None = None  # torch intra-op threads while it runs (None: unchanged)
    seed: int = 0

    def sizes(self) -> SaeTsConfig:
        """The sizes a run uses: with ``quick``, tiny ones; ``held_samples`` filled in."""
        cfg = self
        if cfg.quick:
            cfg = dataclasses.replace(
                cfg, n_decoder=8, n_random=8, samples=1, n_side=3, tokens=4, eval_tokens=6
            )
            cfg.sweep, cfg.tasks = [1.0], ["sentiment", "formality"]
        if cfg.held_samples is None:
            cfg = dataclasses.replace(cfg, held_samples=cfg.samples)
        return cfg

    def stem(self) -> str:
        return f"{self.name}_quick" if self.quick else self.name


def effect_cache_key(cfg: SaeTsConfig) -> str:
    """A key of the options that change the effect collection (a rerun with other held-out
    or task options reuses it); the names are those of the benchmark's first version, so
    caches written then stay valid."""
    corpus = cfg.sae.corpus_options or {}
    sizes = {
        "quick": cfg.quick,
        "d_sae": cfg.sae.d_sae,
        "sae_tokens": cfg.sae.n_tokens,
        "corpus_generated": corpus.get("n_generated"),
        "corpus_tokens": corpus.get("generated_tokens"),
        "corpus_sentences": corpus.get("n_sentences"),
        "sae_lr": cfg.sae.lr,
        "sae_batch": cfg.sae.batch_size,
        **{
            k: getattr(cfg, k)
            for k in ("n_decoder", "n_mix", "n_random", "samples", "tokens", "readout")
        },
        "effect_multiplier": cfg.effect_multiplier,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:12]


def main(argv: Sequence[str] | None = None) -> None:
    given = parse_config_args(SaeTsConfig, argv, description=__doc__.split("\n")[0])
    with intra_op_threads(given.threads):
        run(given)


def run(given: SaeTsConfig) -> None:
    """The benchmark with config ``given`` (the sizes used: ``given.sizes()``)."""
    save_config(given, Path(given.out_dir) / f"{given.stem()}_config.yaml")
    cfg = given.sizes()
    hook = cfg.hook_name
    cache = cache_root() / "benchmarks" / f"sae_ts-{effect_cache_key(cfg)}"  # resumable
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now
        print(f"[{name}] {timings[name]:.0f} s", flush=True)

    model = load_model(cfg.model, backend=cfg.backend, device=cfg.device, precision=cfg.precision)
    lap("load model")
    sae = train_reference_sae(model, hook, seed=cfg.seed, device=cfg.device, **cfg.sae.kwargs())
    lap("reference SAE")

    # --- task targets, from texts disjoint from the probe/CAA texts (other seed)
    targets: dict[str, tuple[int, float]] = {}
    for task in cfg.tasks:
        negative, positive = task_texts(task, 64, cfg.seed + 1)
        targets[task] = target_feature(sae, model, hook, negative, positive)
    lap("task features")

    # --- one scale for every unit direction: median of a small calibration
    gen = torch.Generator().manual_seed(cfg.seed)
    d_model, d_sae = model.cfg.d_model, sae.cfg.d_sae
    reference = attribute_texts("tense", n=4, seed=cfg.seed + 2)[0]
    picked = torch.randperm(d_sae, generator=gen)[:2]
    probes_dirs = torch.cat([torch.randn(2, d_model, generator=gen), sae.W_dec[picked]]).detach()
    probes_dirs = probes_dirs / probes_dirs.norm(dim=1, keepdim=True)
    acts = harvest_activations(model, reference, hook, position="all")
    act_norm = float(acts.norm(dim=1).mean())
    cal_grid = torch.logspace(math.log10(0.02 * act_norm), math.log10(2 * act_norm), 6)
    cal = calibrate_scales(model, probes_dirs, hook, reference_texts=reference, scales=cal_grid)
    scale = float(cal.median())
    lap("calibration")
    print(f"mean |x| at {hook}: {act_norm:.0f}; calibrated scale {scale:.0f}", flush=True)

    # --- effect data: decoder rows (task targets first), random mixes of 2-4 decoder rows
    # (random positive weights), random Gaussian directions
    forced = [f for f, _ in targets.values()]
    directions, features = effect_directions(
        sae,
        n_decoder=cfg.n_decoder,
        n_mix=cfg.n_mix,
        n_random=cfg.n_random,
        first=forced,
        generator=gen,
    )
    effects = measure_effects(
        model,
        sae,
        directions,
        scale * cfg.effect_multiplier,
        prompts=EFFECT_PROMPTS,
        n_samples=cfg.samples,
        max_new_tokens=cfg.tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        do_sample=cfg.samples > 1,
        steer_readout=cfg.readout == "steered",
        cache_dir=cache / "effects",
    )
    lap("effects")
    effect_model, report = EffectModel.fit(
        directions,
        effects,
        hook_name=hook,
        model_name=model.cfg.model_name,
        seed=cfg.seed,
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
    if cfg.side_features == "fit":
        ranked.sort(key=lambda f: -float(feature_r2[f]))
    side_features = ([f for f in forced if f in fitted] + ranked)[: cfg.n_side]
    dec_vecs = [decoder_row_vector(sae, f, hook_name=hook).direction for f in side_features]
    ts_vecs = [sae_ts_vector(effect_model, [f]).direction for f in side_features]
    held_key = hashlib.sha256(str((side_features, cfg.held_samples)).encode()).hexdigest()[:8]
    held = measure_effects(
        model,
        sae,
        torch.stack(dec_vecs + ts_vecs).float(),
        scale * cfg.effect_multiplier,
        prompts=HELD_OUT_PROMPTS,
        n_samples=cfg.held_samples,
        max_new_tokens=cfg.tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed + 1000,
        do_sample=cfg.held_samples > 1,
        steer_readout=cfg.readout == "steered",
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
    write_report(given, cfg, targets, scale, act_norm, report, wd, side, tables, timings)

    # --- steering tasks
    coherence = LikelihoodCoherenceScorer(model)
    for task in tqdm(cfg.tasks, desc="tasks"):
        negative, positive = task_texts(task, 64, cfg.seed)
        if task == "french":
            words = list(language_pairs().targets) + FRENCH_FUNCTION_WORDS
            behaviour = KeywordScorer(words, saturation=2)
        else:
            behaviour = ProbeScorer.fit(model, positive, negative, PROBE_HOOK, position="mean")
        feature = targets[task][0]
        vectors = {
            "CAA": caa_vector(model, positive, negative, hook, normalize=True),
            "SAE": decoder_row_vector(sae, feature, hook_name=hook),
        }
        if feature in fitted:
            vectors["SAE-TS"] = sae_ts_vector(effect_model, [feature])
        scores[task] = {"SAE-TS": math.nan}
        best_scales[task] = {"SAE-TS": math.nan}
        own_scales[task] = {"SAE-TS": math.nan}
        # each vector's own calibrated scale (LM loss +0.5 nats), as in the paper
        own = calibrate_scales(
            model,
            torch.stack([v.direction for v in vectors.values()]).float(),
            hook,
            reference_texts=reference,
            scales=cal_grid,
        )
        for (method, vector), own_scale in zip(vectors.items(), own.tolist(), strict=True):
            own_scales[task][method] = own_scale
            result = evaluate_steering(
                model,
                vector,
                prompts=EVAL_PROMPTS,
                scales=[m * own_scale for m in cfg.sweep],
                behavior_scorer=behaviour,
                coherence_scorer=coherence,
                max_new_tokens=cfg.eval_tokens,
                seed=cfg.seed,
            )
            scores[task][method] = result.best_score
            best_scales[task][method] = result.best_scale / own_scale
        lap(f"task {task}")
        write_report(given, cfg, targets, scale, act_norm, report, wd, side, tables, timings)


def write_report(given, cfg, targets, scale, act_norm, report, wd, side, tables, timings):
    """Print the tables and write ``<stem>.md``, ``<stem>.json`` and ``<stem>.png``
    (``given``: the config as given, ``cfg``: the sizes used)."""
    scores, best_scales, own_scales = tables
    tasks = list(scores)
    out, stem = Path(cfg.out_dir), given.stem()
    corpus = cfg.sae.corpus_options or {}
    lines = [
        f"# SAE-TS vs CAA vs SAE decoder-row steering ({cfg.model})",
        "",
        f"Command: `python benchmarks/sae_ts.py --config {out / f'{stem}_config.yaml'}` "
        f"(d_sae {cfg.sae.d_sae} {cfg.sae.architecture} SAE trained on {cfg.sae.n_tokens} token "
        f"samples of a corpus of {corpus.get('n_generated', 'the default')} model rollouts x "
        f"{corpus.get('generated_tokens', 'the default')} tokens + "
        f"{corpus.get('n_sentences', 'the default')} sentence pairs + the en/fr word list; "
        "effects of "
        f"{cfg.n_decoder} decoder rows + {cfg.n_mix} random mixes of 2-4 rows + "
        f"{cfg.n_random} random Gaussian directions, "
        f"{len(EFFECT_PROMPTS)} prompts x {cfg.samples} samples x {cfg.tokens} tokens, "
        f"features read {'unsteered from the text' if cfg.readout == 'text' else 'steered'} "
        f"(held-out: {len(HELD_OUT_PROMPTS)} other prompts x {cfg.held_samples} samples, "
        "other seed); "
        f"task scale sweep {','.join(f'{m:g}' for m in cfg.sweep)} x each vector's calibrated "
        "scale; effects at the "
        f"median calibrated scale {scale:.0f} "
        f"(mean |x| at {cfg.hook_name} = {act_norm:.0f}); eval {len(EVAL_PROMPTS)} greedy "
        f"prompts x {cfg.eval_tokens} tokens).",
        "",
        f"Effect model (ridge, weight decay {wd:g} by "
        f"5-fold CV on the training split): held-out R^2 = {report.r2:.3f} "
        f"(n_train {report.n_train}, n_test {report.n_test}).",
        "",
        "## Max over scales of behaviour x coherence",
        "",
        "| task | target feature (separation) | " + " | ".join(METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for task in tasks:
        f, sep = targets[task]
        cells = [
            f"{scores[task][m]:.3f} (x{best_scales[task][m]:g} of {own_scales[task][m]:.0f})"
            for m in METHODS
        ]
        lines.append(f"| {task} | {f} ({sep:.2f}) | " + " | ".join(cells) + " |")
    if tasks:
        means = {m: statistics.mean(scores[t][m] for t in tasks) for m in METHODS}
        lines.append("| **mean** | | " + " | ".join(f"{means[m]:.3f}" for m in METHODS) + " |")
    lines += [
        "",
        "(x: best scale in units of the vector's own calibrated scale, the scale at which it "
        "raises the LM loss on the reference sentences by 0.5 nats; x0 = unsteered.)",
        "",
        f"## Side effects on held-out rollouts (scale {cfg.effect_multiplier:g} x calibrated, "
        "same for both vectors)",
        "",
        "Features: the task targets, then "
        + (
            "those whose effect the effect model predicts best (per-feature R^2 on its own "
            "held-out split)."
            if cfg.side_features == "fit"
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
    ]
    text = "\n".join(lines)
    print(text)
    write_text_atomic(out / f"{stem}.md", text)
    payload = dict(
        scale=scale,
        act_norm=act_norm,
        r2=report.r2,
        ridge_weight_decay=wd,
        targets=targets,
        scores=scores,
        best_scales=best_scales,
        own_scales=own_scales,
        side=side,
        timings=timings,
        config=given.to_dict(),
    )
    write_text_atomic(out / f"{stem}.json", json.dumps(payload, indent=2))
    save_figure(plot(tasks, scores, dec_eff, ts_eff), out / f"{stem}.png", dpi=120)


def plot(tasks, scores, dec_eff, ts_eff) -> Figure:
    """Task scores by method, and per feature the two vectors' target change per side effect."""
    fig = Figure(figsize=(11, 4), layout="tight")
    left, right = fig.subplots(1, 2)
    width = 0.27
    for i, method in enumerate(METHODS):
        xs = [j + (i - 1) * width for j in range(len(tasks))]
        left.bar(xs, [scores[t][method] for t in tasks], width, label=method)
    left.set_xticks(range(len(tasks)), tasks)
    left.set_ylabel("max behaviour x coherence")
    left.legend()
    left.set_title("Steering tasks")
    right.scatter(dec_eff, ts_eff, s=18)
    top = max(dec_eff + ts_eff + [1e-9]) * 1.05
    right.plot([0, top], [0, top], color="grey", lw=0.8)
    right.set_xlabel("decoder row: target change / side effect")
    right.set_ylabel("SAE-TS: target change / side effect")
    right.set_title("Held-out rollouts, per feature")
    return fig


if __name__ == "__main__":
    main()
