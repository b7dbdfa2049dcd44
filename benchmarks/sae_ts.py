"""SAE-TS vs CAA vs SAE decoder-row steering on Gemma-3-270M, with a reference SAELens SAE.

Steps (CPU-sized; every size is a config key and is written into the report):

1. The reference SAE: :func:`ssae_lens.saes.reference.train_reference_sae` at
   ``blocks.6.hook_resid_post`` (trained once, then loaded from the cache).
2. Task targets: weighted feature sets per task (``targets``), chosen by meaning from the
   feature cards (``--set candidates=8`` writes the cards of each task's most separating
   features and stops); a task without one gets the single feature whose mean activation
   separates its positive from its negative texts most (pooled-std units). The report shows
   every target's card (top contexts on a held-out corpus, histogram, logit tokens).
3. Per-direction scales (:func:`calibrate_scales`): each direction's own scale, where the LM
   loss on reference sentences reaches ``target_loss`` (absolute) or rises by
   ``target_loss_increase`` (default +0.5 nats), swept over one grid and interpolated.
4. Effects (:func:`measure_effects`) of decoder rows (the targets' first), random mixes of
   2-4 rows and random Gaussian directions, each at its own calibrated scale, with the
   reference's protocol: ``EFFECT_PROMPTS`` (3 BOS-only + 11 short prompts) x ``samples``,
   ``total_tokens`` per rollout prompt included, top-``k`` sampling, features read
   unsteered from the text and averaged over all positions. The :class:`EffectModel` is
   fitted by ridge (weight decay by 5-fold CV) with a 20 % held-out split (R^2 reported).
5. Side effects: for ``n_side`` features (the task targets, then the features the effect
   model predicts best on its own held-out split, or random ones), the decoder row and the
   SAE-TS vector, each at its own calibrated scale, are measured on held-out rollouts (other
   prompts, other seed) and compared by ``side_effect_ratio``.
6. Five tasks (sentiment, formality, tense, voice, French): CAA, the target's weighted
   decoder rows and SAE-TS, evaluated by ``evaluate_methods`` on the same prompts and
   sampled continuations (common random numbers) over multiples of each vector's own
   calibrated scale and over one absolute grid shared by all methods. Behaviour: VADER
   (sentiment), lingua's French confidence (French), textstat reading ease (formality
   proxy), probes at ``blocks.9.hook_resid_post`` (tense, voice); coherence: LM likelihood,
   and the fraction of continuations lingua detects as the prompt's language (English).
   Metric: max over scales of mean(behaviour) x mean(coherence), with bootstrap intervals
   on every cell and paired differences between methods ("not distinguishable" where the
   interval covers zero).

    python benchmarks/sae_ts.py --config configs/benchmarks/sae_ts.yaml [--set n_decoder=256]
    python benchmarks/sae_ts.py --config configs/benchmarks/sae_ts.yaml --set candidates=8
    python benchmarks/sae_ts.py --set quick=true     # tiny sizes: a smoke run
    torchrun --nproc_per_node=2 benchmarks/sae_ts.py --config configs/benchmarks/sae_ts.yaml

Under ``torchrun`` the ranks share calibration, effects, harvesting and the evaluation
sweeps (:func:`ssae_lens.distributed.compute_chunks`); rank 0 trains or loads the reference
SAE and the card corpus first, and alone prints the laps and writes the outputs.

Writes ``<out_dir>/<name>.md``, ``<name>.json``, ``<name>.png`` and ``<name>_config.yaml``
(the config, to rerun with ``--config``); with ``candidates``, ``<name>_candidates.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ssae_lens._core.cache import dictionary_fingerprint, tensor_digest
from ssae_lens._core.io import save_figure, write_json_atomic, write_text_atomic
from ssae_lens._core.threads import intra_op_threads
from ssae_lens.activations import harvest_activations
from ssae_lens.config import ReferenceSAESection, RunConfig, parse_config_args, save_config
from ssae_lens.data.builtin import attribute_texts, language_pairs
from ssae_lens.distributed import DistributedContext, current, main_first, process_group
from ssae_lens.models import cache_root, load_model
from ssae_lens.sae_ts import (
    EFFECT_PROMPTS,
    EffectModel,
    calibrate_scales,
    decoder_row_vector,
    effect_directions,
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

PROBE_HOOK = "blocks.9.hook_resid_post"
FRENCH_FUNCTION_WORDS = [
    "le", "la", "les", "un", "une", "des", "et", "est", "je", "il", "elle", "nous", "vous",
    "dans", "pour", "avec", "sur", "pas", "qui", "que", "du", "au", "ce", "mais", "très",
]  # fmt: skip
METHODS = ("CAA", "SAE", "SAE-TS")
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# The reference's effect data (Chalnev, Siu & Conmy 2024; methods.md section 2): 896 rollouts
# x 32 tokens per direction, about 5e8 tokens in all.
REFERENCE_TOKENS_PER_DIRECTION = 896 * 32
REFERENCE_TOTAL_TOKENS = 5e8


def task_texts(task: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """``(negative, positive)`` texts of a task."""
    if task == "french":
        words = language_pairs()
        return list(words.sources)[:n], list(words.targets)[:n]
    return attribute_texts(task, n=n, seed=seed)


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
    # --- effect data
    n_decoder: int = 64  # decoder-row directions (the targets' first)
    n_mix: int = 0  # random mixes of 2-4 decoder rows
    n_random: int = 32  # random Gaussian directions
    effect_prompts: list[str] | None = None  # None: EFFECT_PROMPTS (3 BOS-only + 11 short)
    samples: int = 1  # rollouts per effect prompt
    total_tokens: int = 32  # tokens per rollout, prompt included
    positions: Literal["all", "generated"] = "all"  # positions the features are averaged over
    top_k: int | None = 50  # effect rollouts sample among the top-k tokens
    # read the rollouts' features unsteered (the paper's effect of the text) or steered
    readout: Literal["text", "steered"] = "text"
    # each direction's own calibrated scale (the reference), or the median of a few
    effect_scale: Literal["own", "median"] = "own"
    effect_multiplier: float = 1.0  # effect scale, x the calibrated scale
    batch_size: int = 128  # rollouts per batch
    # --- calibration: the LM loss on calibration_texts reference sentences
    calibration_texts: int = 4
    calibration_grid: list[float] | None = None  # None: geometric, 0.02 to 2 x mean |x|
    calibration_steps: int = 10  # points of the default grid
    target_loss: float | None = None  # absolute target loss (the reference: 4.0 for 2B)
    target_loss_increase: float | None = None  # over the unsteered loss (None: 0.5)
    # --- side effects on held-out rollouts
    n_side: int = 24  # features in the side-effect test
    # after the task targets: the features the effect model predicts best, or random ones
    side_features: Literal["fit", "random"] = "fit"
    held_prompts: list[str] = field(default_factory=lambda: ["", "Last week,", "In my opinion"])
    held_samples: int | None = None  # None: samples
    # --- tasks
    tasks: list[str] = field(
        default_factory=lambda: ["sentiment", "formality", "tense", "voice", "french"]
    )
    # {task: {feature: weight}} chosen from the cards; tasks left out: the most separating one
    targets: dict[str, Any] = field(default_factory=dict)
    targets_sae: str | None = None  # sha256 prefix of the SAE whose cards the targets read
    candidates: int = 0  # > 0: write the cards of each task's top features and stop
    # reference_corpus options of the cards' held-out corpus (None: the SAE's corpus options)
    card_corpus: dict[str, Any] | None = None
    behavior: Literal["offline", "probe"] = "offline"
    eval_prompts: list[str] = field(default_factory=lambda: ["I think", "My friend told me"])
    eval_samples: int = 16  # sampled continuations per prompt and scale
    eval_tokens: int = 30
    eval_top_k: int | None = 50
    sweep: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # x own scale
    abs_scales: list[float] = field(default_factory=list)  # one grid shared by all methods
    threads: int | None = None  # torch intra-op threads while it runs (None: unchanged)
    seed: int = 0

    def __post_init__(self) -> None:
        self.targets = {str(task): _weights(task, value) for task, value in self.targets.items()}

    def sizes(self) -> SaeTsConfig:
        """The sizes a run uses: with ``quick``, tiny ones; ``held_samples`` filled in."""
        cfg = self
        if cfg.quick:
            cfg = dataclasses.replace(
                cfg, n_decoder=8, n_mix=0, n_random=8, samples=1, n_side=3, total_tokens=8,
                eval_tokens=6, eval_samples=2, calibration_texts=2, calibration_steps=6,
            )  # fmt: skip
            cfg.sweep, cfg.tasks = [1.0], ["sentiment", "formality"]
            cfg.effect_prompts = ["", "I think"]
            cfg.held_prompts, cfg.eval_prompts = ["", "Last week,"], ["I think"]
            cfg.abs_scales = cfg.abs_scales[:1]
        if cfg.held_samples is None:
            cfg = dataclasses.replace(cfg, held_samples=cfg.samples)
        return cfg

    def stem(self) -> str:
        return f"{self.name}_quick" if self.quick else self.name

    def prompts(self) -> list[str]:
        return list(EFFECT_PROMPTS if self.effect_prompts is None else self.effect_prompts)


def _weights(task: Any, value: Any) -> dict[int, float]:
    """A target as ``{feature: weight}`` from a mapping or a list of features."""
    if isinstance(value, list | tuple):
        value = {f: 1.0 for f in value}
    if not isinstance(value, dict) or not value:
        raise ValueError(f"targets.{task} must be a mapping feature: weight or a list of features.")
    return {int(f): float(w) for f, w in value.items()}


def effect_cache_key(cfg: SaeTsConfig) -> str:
    """A key of the options that change the effect collection (a rerun with other held-out
    or task options reuses it)."""
    corpus = cfg.sae.corpus_options or {}
    sizes = {
        # 2: the reference protocol (per-direction scales, total length); 3: the library's
        # chunk stores record the precision, and calibrations are resumable chunk stores.
        "format": 3,
        "quick": cfg.quick,
        "sae": cfg.sae.kwargs(),
        "corpus": corpus,
        "prompts": cfg.prompts(),
        "targets": {t: sorted(w) for t, w in cfg.targets.items()},
        **{
            k: getattr(cfg, k)
            for k in (
                "model",
                "hook_name",
                "backend",
                "precision",
                "n_decoder",
                "n_mix",
                "n_random",
                "samples",
                "total_tokens",
                "positions",
                "top_k",
                "readout",
                "effect_scale",
                "effect_multiplier",
                "calibration_texts",
                "calibration_grid",
                "calibration_steps",
                "target_loss",
                "target_loss_increase",
                "seed",
            )
        },  # fmt: skip
    }
    return hashlib.sha256(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:12]


def separation(sae, model, hook: str, negative: list[str], positive: list[str]) -> torch.Tensor:
    """Per feature, (mean on positive - mean on negative tokens) / pooled std."""
    with torch.no_grad():
        neg = sae.encode(harvest_activations(model, negative, hook, position="all"))
        pos = sae.encode(harvest_activations(model, positive, hook, position="all"))
    return (pos.mean(0) - neg.mean(0)) / torch.cat([neg, pos]).std(0).clamp_min(1e-6)


def target_separation(sae, model, hook, negative, positive, weights: dict[int, float]) -> float:
    """Separation of the weighted sum ``sum_f w_f a_f`` over tokens, in pooled-std units."""
    with torch.no_grad():
        neg = sae.encode(harvest_activations(model, negative, hook, position="all"))
        pos = sae.encode(harvest_activations(model, positive, hook, position="all"))
    t = torch.zeros(neg.shape[1])
    for f, w in weights.items():
        t[f] = w
    a, b = neg @ t, pos @ t
    return float((b.mean() - a.mean()) / torch.cat([a, b]).std().clamp_min(1e-6))


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


def main(argv: Sequence[str] | None = None) -> None:
    given = parse_config_args(SaeTsConfig, argv, description=__doc__.split("\n")[0])
    with intra_op_threads(given.threads), process_group() as ctx:
        run(given, ctx)


class _Clock:
    """Named laps with the machine's load average at each (the machine is shared)."""

    def __init__(self, show: bool, world_size: int) -> None:
        self.show, self.world_size = show, world_size
        self.timings: dict[str, float] = {}
        self.loads: list[float] = []
        self.start = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self.last
        self.last = now
        self.loads.append(os.getloadavg()[0])
        if self.show:
            print(f"[{name}] {self.timings[name]:.0f} s (load {self.loads[-1]:.1f})", flush=True)


def run(given: SaeTsConfig, ctx: DistributedContext | None = None) -> None:
    """The benchmark with config ``given`` (the sizes used: ``given.sizes()``), sharing the
    work with the other ranks of ``ctx`` (default: this process alone)."""
    ctx = ctx or current()
    if ctx.is_main:
        save_config(given, Path(given.out_dir) / f"{given.stem()}_config.yaml")
    cfg = given.sizes()
    hook = cfg.hook_name
    cache = cache_root() / "benchmarks" / f"sae_ts-{effect_cache_key(cfg)}"  # resumable
    clock = _Clock(show=ctx.is_main, world_size=ctx.world_size)

    model = load_model(cfg.model, backend=cfg.backend, device=cfg.device, precision=cfg.precision)
    clock.lap("load model")
    with main_first(ctx, "the reference SAE"):
        sae = train_reference_sae(model, hook, seed=cfg.seed, device=cfg.device, **cfg.sae.kwargs())
    sae_sha = dictionary_fingerprint(sae)
    clock.lap("reference SAE")
    if cfg.targets and cfg.targets_sae and not sae_sha.startswith(cfg.targets_sae):
        warnings.warn(
            f"The targets were read off the cards of SAE {cfg.targets_sae}..., not of this one "
            f"({sae_sha[:12]}...): their features may mean something else here. Rerun with "
            "--set candidates=8 and choose them again.",
            stacklevel=1,
        )
    with main_first(ctx, "the card corpus"):
        card_corpus = _card_corpus(model, cfg, cache)
    if cfg.candidates:
        if ctx.is_main:
            write_candidates(cfg, given, model, sae, sae_sha, card_corpus)
        return

    # --- task targets (from texts disjoint from the probe/CAA texts: another seed) and cards
    targets: dict[str, dict[str, Any]] = {}
    for task in cfg.tasks:
        negative, positive = task_texts(task, 64, cfg.seed + 1)
        weights = cfg.targets.get(task)
        chosen = "by meaning (cards)"
        if weights is None:
            sep = separation(sae, model, hook, negative, positive)
            weights, chosen = {int(sep.argmax()): 1.0}, "automatic (separation)"
        targets[task] = dict(
            features=weights,
            separation=target_separation(sae, model, hook, negative, positive, weights),
            chosen=chosen,
        )
    target_features = list(dict.fromkeys(f for t in targets.values() for f in t["features"]))
    cards = feature_cards(model, sae, target_features, card_corpus, n_contexts=8, n_logits=10)
    clock.lap("task targets and cards")

    # --- calibration texts and grid
    reference = attribute_texts("tense", n=cfg.calibration_texts, seed=cfg.seed + 2)[0]
    acts = harvest_activations(model, reference, hook, position="all")
    act_norm = float(acts.norm(dim=1).mean())
    if cfg.calibration_grid is not None:
        cal_grid = torch.tensor(cfg.calibration_grid, dtype=torch.float32)
    else:
        cal_grid = torch.logspace(
            math.log10(0.02 * act_norm), math.log10(2 * act_norm), cfg.calibration_steps
        )
    cal_target = dict(target_loss=cfg.target_loss, target_loss_increase=cfg.target_loss_increase)

    def calibrated(directions: torch.Tensor, name: str | None) -> torch.Tensor:
        """Each direction's own scale; under ``name``, in resumable chunks in the benchmark's
        cache (one folder per set of directions)."""
        folder = None
        if name is not None:
            folder = cache / "calibration" / f"{name}-{tensor_digest(directions.float())[:16]}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scales = calibrate_scales(
                model, directions.float(), hook, reference_texts=reference, scales=cal_grid,
                batch_size=cfg.batch_size, cache_dir=folder, **cal_target,
            )  # fmt: skip
        for w in caught:
            print(f"calibration ({name}): {w.message}", flush=True)
        return scales

    # --- effect data: decoder rows (the targets' first), random mixes of 2-4 decoder rows
    # (random positive weights), random Gaussian directions
    gen = torch.Generator().manual_seed(cfg.seed)
    directions, features = effect_directions(
        sae,
        n_decoder=cfg.n_decoder,
        n_mix=cfg.n_mix,
        n_random=cfg.n_random,
        first=target_features,
        generator=gen,
    )
    if cfg.effect_scale == "own":
        scales = calibrated(directions, "scales")
    else:  # the median of 8 directions' scales for all of them
        picked = torch.randperm(len(directions), generator=gen)[:8]
        scales = calibrated(directions[picked], "median_scales").median().expand(len(directions))
    clock.lap(f"calibration of {len(directions)} directions")
    calibration_seconds = clock.timings[f"calibration of {len(directions)} directions"]
    print(
        f"mean |x| at {hook}: {act_norm:.0f}; effect scales: median {float(scales.median()):.0f}"
        f", range {float(scales.min()):.0f}-{float(scales.max()):.0f}",
        flush=True,
    )
    rollout = dict(
        total_tokens=cfg.total_tokens,
        positions=cfg.positions,
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
        steer_readout=cfg.readout == "steered",
    )
    effects = measure_effects(
        model,
        sae,
        directions,
        scales * cfg.effect_multiplier,
        prompts=cfg.prompts(),
        n_samples=cfg.samples,
        seed=cfg.seed,
        do_sample=True,
        cache_dir=cache / "effects",
        **rollout,
    )
    clock.lap("effects")
    effect_tokens = _token_counts(model, cfg, len(directions), 0)["per_direction"] * (
        len(directions) + 1
    )
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

    # --- side effects on held-out rollouts: decoder row vs SAE-TS for the same feature, each
    # at its own calibrated scale. Only features the effect data moved have a column of W
    # (SAE-TS needs W t != 0). After the task targets come the features whose effect the fit
    # predicts best (per-feature R^2 on the effect data's held-out split), or random ones.
    fitted = [f for f in features if float(effect_model.W[:, f].norm()) > 0]
    print(f"{len(fitted)}/{len(features)} decoder-row features have effect data", flush=True)
    feature_r2 = report.r2_per_feature.nan_to_num(-math.inf)
    ranked = [f for f in fitted if f not in target_features]  # random order
    if cfg.side_features == "fit":
        ranked.sort(key=lambda f: -float(feature_r2[f]))
    side_features = ([f for f in target_features if f in fitted] + ranked)[: cfg.n_side]
    dec_vecs = [decoder_row_vector(sae, f, hook_name=hook).direction for f in side_features]
    ts_vecs = [sae_ts_vector(effect_model, [f]).direction for f in side_features]
    side_dirs = torch.stack(dec_vecs + ts_vecs).float()
    held_key = hashlib.sha256(
        str((side_features, cfg.held_samples, cfg.held_prompts)).encode()
    ).hexdigest()[:8]
    side_scales = calibrated(side_dirs, f"side_scales-{held_key}")
    held = measure_effects(
        model,
        sae,
        side_dirs,
        side_scales * cfg.effect_multiplier,
        prompts=cfg.held_prompts,
        n_samples=cfg.held_samples,
        seed=cfg.seed + 1000,
        do_sample=True,
        cache_dir=cache / f"held_out-{held_key}",
        **rollout,
    )
    n_side = len(side_features)
    side = []
    for i, f in enumerate(side_features):
        dec_y, ts_y = held[i], held[n_side + i]
        side.append(
            dict(
                feature=f,
                fit_r2=float(feature_r2[f]),
                dec_scale=float(side_scales[i]),
                ts_scale=float(side_scales[n_side + i]),
                dec_target=float(dec_y[f]),
                ts_target=float(ts_y[f]),
                dec_ratio=side_effect_ratio(dec_y, [f]),
                ts_ratio=side_effect_ratio(ts_y, [f]),
            )
        )
    clock.lap("held-out side effects")
    state: dict[str, Any] = dict(
        sae_sha=sae_sha,
        targets=targets,
        cards=cards,
        act_norm=act_norm,
        cal_grid=cal_grid.tolist(),
        scales=scales.tolist(),
        n_directions=dict(decoder=len(features), mix=cfg.n_mix, random=cfg.n_random),
        report=report,
        weight_decay=wd,
        target_r2={f: float(feature_r2[f]) for f in target_features},
        side=side,
        tokens=_token_counts(model, cfg, len(directions), 2 * n_side),
        rates=dict(
            # the effect rollouts: every direction's and one unsteered set
            effect_s_per_token=clock.timings["effects"] / effect_tokens,
            calibration_s_per_direction=calibration_seconds / len(directions),
        ),
        tasks={},
        clock=clock,
    )
    if ctx.is_main:
        write_report(given, cfg, state)

    # --- steering tasks
    coherence = LikelihoodCoherenceScorer(model)
    english = SameLanguageScorer("english")
    sampling = dict(
        n_samples=cfg.eval_samples,
        do_sample=True,
        top_k=cfg.eval_top_k,
        max_new_tokens=cfg.eval_tokens,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    for task in tqdm(cfg.tasks, desc="tasks"):
        negative, positive = task_texts(task, 64, cfg.seed)
        behaviour, scorer_name = behaviour_scorer(task, cfg.behavior, model, positive, negative)
        target = targets[task]["features"]
        vectors = {
            "CAA": caa_vector(model, positive, negative, hook, normalize=True),
            "SAE": decoder_row_vector(sae, target, hook_name=hook),
        }
        if any(f in fitted for f in target):
            vectors["SAE-TS"] = sae_ts_vector(effect_model, target)
        # each vector's own calibrated scale, as for the effect directions
        own = calibrated(torch.stack([v.direction for v in vectors.values()]), None)
        own_scales = dict(zip(vectors, own.tolist(), strict=True))
        grids: dict[str, Any] = {
            "own": {m: [x * own_scales[m] for x in cfg.sweep] for m in vectors}
        }
        if cfg.abs_scales:
            grids["absolute"] = list(cfg.abs_scales)
        entry: dict[str, Any] = dict(scorer=scorer_name, own_scales=own_scales, grids={})
        for grid_name, grid in grids.items():
            results = evaluate_methods(
                model,
                vectors,
                scales=grid,
                prompts=cfg.eval_prompts,
                behavior_scorer=behaviour,
                coherence_scorer=coherence,
                **sampling,
            )
            comparison = compare_evaluations(results) if len(results) > 1 else None
            in_english = {}
            for method, result in results.items():
                best = result.samples_at()
                found = english([s.text for s in best], [s.prompt for s in best])
                in_english[method] = sum(found) / len(found)
            base = next(iter(results.values())).samples_at(0.0)
            found = english([s.text for s in base], [s.prompt for s in base])
            in_english["unsteered"] = sum(found) / len(found)
            entry["grids"][grid_name] = dict(
                results=results, comparison=comparison, in_english=in_english
            )
        state["tasks"][task] = entry
        clock.lap(f"task {task}")
        if ctx.is_main:
            write_report(given, cfg, state)


def _card_corpus(model, cfg: SaeTsConfig, cache: Path) -> list[str]:
    """A held-out reference corpus for the cards (another seed than the SAE's), cached."""
    corpus = dict(cfg.sae.corpus_options if cfg.card_corpus is None else cfg.card_corpus)
    key = hashlib.sha256(str((corpus, cfg.seed)).encode()).hexdigest()[:8]
    path = cache.parent / f"card_corpus-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    texts = reference_corpus(model, **corpus, seed=cfg.seed + 7)
    write_json_atomic(path, texts)
    return texts


def _token_counts(model, cfg: SaeTsConfig, n_directions: int, n_held: int) -> dict[str, float]:
    """Tokens of the effect rollouts (prompt included) per direction and in all."""
    prompts = cfg.prompts()
    generated = sum(cfg.total_tokens - model.to_tokens(p).shape[1] for p in prompts)
    held = cfg.held_samples * len(cfg.held_prompts) * cfg.total_tokens
    per = cfg.samples * len(prompts) * cfg.total_tokens
    return dict(
        rollouts_per_direction=cfg.samples * len(prompts),
        per_direction=per,
        generated_per_direction=cfg.samples * generated,
        total=per * (n_directions + 1) + held * (n_held + 1),
    )


def write_candidates(cfg, given, model, sae, sae_sha, corpus) -> None:
    """The cards of each task's most separating features, to choose targets by meaning."""
    lines = [
        f"# Candidate target features (SAE sha256 {sae_sha[:12]}...)",
        "",
        f"Per task, the {cfg.candidates} features whose mean activation at {cfg.hook_name} "
        "separates the task's positive from its negative texts most (pooled-std units), with "
        "their cards on a held-out reference corpus. Pick targets whose cards read as the "
        "concept and record them in the config's `targets` (and `targets_sae`).",
        "",
    ]
    tops = {}
    for task in cfg.tasks:
        negative, positive = task_texts(task, 64, cfg.seed + 1)
        top = separation(sae, model, cfg.hook_name, negative, positive).topk(cfg.candidates)
        tops[task] = dict(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    features = list(dict.fromkeys(f for top in tops.values() for f in top))
    cards = feature_cards(model, sae, features, corpus, n_contexts=8, n_logits=10)  # one harvest
    by_feature = dict(zip(features, cards, strict=True))
    for task, top in tops.items():
        lines += [f"## {task}", ""]
        for f, value in top.items():
            lines += [f"separation {value:.2f}", "```", by_feature[f].summary(), "```", ""]
    text = "\n".join(lines)
    print(text)
    write_text_atomic(Path(cfg.out_dir) / f"{given.stem()}_candidates.md", text)


def write_report(given: SaeTsConfig, cfg: SaeTsConfig, state: dict[str, Any]) -> None:
    """Print the tables and write ``<stem>.md``, ``<stem>.json`` and ``<stem>.png``
    (``given``: the config as given, ``cfg``: the sizes used)."""
    out, stem = Path(cfg.out_dir), given.stem()
    report, tokens, clock = state["report"], state["tokens"], state["clock"]
    n_dir = state["n_directions"]
    n_total = n_dir["decoder"] + n_dir["mix"] + n_dir["random"]
    corpus = cfg.sae.corpus_options or {}
    target = (
        f"the absolute loss {cfg.target_loss:g}"
        if cfg.target_loss is not None
        else f"the unsteered loss + {cfg.target_loss_increase or 0.5:g} nats"
    )
    prompts = cfg.prompts()
    n_bos = sum(p == "" for p in prompts)
    scales = torch.tensor(state["scales"])
    world = state["clock"].world_size
    launcher = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
    lines = [
        f"# SAE-TS vs CAA vs SAE decoder-row steering ({cfg.model})",
        "",
        f"Command: `{launcher} benchmarks/sae_ts.py --config {out / f'{stem}_config.yaml'}`.",
        "",
        "## Protocol",
        "",
        f"- SAE: d_sae {cfg.sae.d_sae} {cfg.sae.architecture} at {cfg.hook_name}, trained on "
        f"{cfg.sae.n_tokens} token samples of a corpus of {corpus.get('n_generated')} model "
        f"rollouts x {corpus.get('generated_tokens')} tokens + {corpus.get('n_sentences')} "
        f"sentence pairs + the en/fr word list (sha256 {state['sae_sha'][:12]}...).",
        f"- Scales: each direction's own, where the LM loss on {cfg.calibration_texts} "
        f"reference sentences reaches {target}, linearly interpolated on a grid of "
        f"{len(state['cal_grid'])} scales "
        f"({state['cal_grid'][0]:.0f}-{state['cal_grid'][-1]:.0f}; mean |x| at the hook = "
        f"{state['act_norm']:.0f}). Effect directions: median scale "
        f"{float(scales.median()):.0f}, 10-90 % range {float(scales.quantile(0.1)):.0f}-"
        f"{float(scales.quantile(0.9)):.0f}"
        + (
            ""
            if cfg.effect_scale == "own"
            else " (here one shared scale: the median of 8 directions')"
        )
        + f", x {cfg.effect_multiplier:g}.",
        f"- Effects of {n_total} directions ({n_dir['decoder']} decoder rows, {n_dir['mix']} "
        f"random mixes of 2-4 rows, {n_dir['random']} Gaussian): {len(prompts)} prompts "
        f"({n_bos} BOS-only) x {cfg.samples} samples = {tokens['rollouts_per_direction']} "
        f"rollouts of {cfg.total_tokens} tokens in total (prompt included), top-"
        f"{cfg.top_k} sampling with common random numbers, features read "
        f"{'unsteered from the text' if cfg.readout == 'text' else 'steered'} and averaged "
        f"over {'all positions' if cfg.positions == 'all' else 'the generated positions'}.",
        f"- Held-out rollouts (side effects): prompts {cfg.held_prompts} x {cfg.held_samples} "
        "samples, another seed.",
        f"- Evaluation: prompts {cfg.eval_prompts} x {cfg.eval_samples} sampled continuations "
        f"(top-{cfg.eval_top_k}) x {cfg.eval_tokens} tokens per scale, the same continuations "
        "for every method (common random numbers); scales: "
        f"{', '.join(f'{m:g}' for m in cfg.sweep)} x each vector's own calibrated scale, and "
        + (
            f"the absolute grid {', '.join(f'{a:g}' for a in cfg.abs_scales)} shared by all methods"
            if cfg.abs_scales
            else "no shared absolute grid"
        )
        + "; scale 0 (unsteered) is in every sweep. Coherence: LM likelihood "
        "(`LikelihoodCoherenceScorer`); en: fraction of continuations lingua detects as "
        "English (the prompts' language).",
        "",
        "## Data scale",
        "",
        "| | this run | reference (Gemma-2-2B) |",
        "|---|---:|---:|",
        f"| directions | {n_total} | >= 16,384 |",
        f"| rollouts per direction | {tokens['rollouts_per_direction']} | 896 |",
        f"| tokens per direction (prompt included) | {tokens['per_direction']:,} | "
        f"{REFERENCE_TOKENS_PER_DIRECTION:,} |",
        f"| tokens in all (effects + held-out + baselines) | {tokens['total']:,.0f} | "
        f"~{REFERENCE_TOTAL_TOKENS:.0e} |",
        "",
        f"This run measured {tokens['total'] / REFERENCE_TOTAL_TOKENS:.1e} of the reference's "
        "effect tokens.",
        "",
        "## Effect model",
        "",
        f"Ridge (weight decay {state['weight_decay']:g} by 5-fold CV on the training split): "
        f"held-out R^2 = {report.r2:.3f} over all {cfg.sae.d_sae} features pooled (n_train "
        f"{report.n_train}, n_test {report.n_test}). Per-feature held-out R^2 of the targets: "
        + ", ".join(
            f"{f}: {r:.2f}" if math.isfinite(r) else f"{f}: n/a"
            for f, r in state["target_r2"].items()
        )
        + ".",
        "",
    ]
    lines += _task_lines(cfg, state)
    lines += _side_lines(cfg, state)
    load = statistics.mean(clock.loads) if clock.loads else math.nan
    lines += [
        "## Timing",
        "",
        f"{cfg.threads or torch.get_num_threads()} torch thread(s) in each of "
        f"{clock.world_size} process(es) (torchrun ranks sharing the work), on a machine "
        f"with {os.cpu_count()} cores shared with other workers: mean 1-minute load average "
        f"{load:.1f} at the laps (max {max(clock.loads, default=math.nan):.1f}).",
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in clock.timings.items()) + ".",
        "",
        f"Rates: effects {1e3 * state['rates']['effect_s_per_token']:.2f} ms per direction x "
        "rollout x token (generation, steered, and the unsteered readout; 0 when the effects "
        f"came from the cache); calibration {state['rates']['calibration_s_per_direction']:.2f}"
        f" s per direction ({cfg.calibration_texts} texts x up to {len(state['cal_grid'])} "
        "scales, stopping at the first crossing).",
        "",
        "## Feature cards of the task targets",
        "",
        "On a held-out reference corpus (`reference_corpus` with "
        f"{cfg.sae.corpus_options if cfg.card_corpus is None else cfg.card_corpus}, another "
        "seed than the SAE's corpus).",
        "",
    ]
    for card in state["cards"]:
        lines += ["```", card.summary(), "```", ""]
    text = "\n".join(lines)
    print(text)
    write_text_atomic(out / f"{stem}.md", text)
    payload = dict(
        sae_sha256=state["sae_sha"],
        act_norm=state["act_norm"],
        calibration_grid=state["cal_grid"],
        effect_scales=state["scales"],
        r2=report.r2,
        ridge_weight_decay=state["weight_decay"],
        target_r2=state["target_r2"],
        targets=state["targets"],
        tokens=tokens,
        rates=state["rates"],
        cards=[card.to_dict() for card in state["cards"]],
        tasks={
            task: dict(
                scorer=entry["scorer"],
                own_scales=entry["own_scales"],
                grids={
                    name: dict(
                        results={m: r.to_dict() for m, r in g["results"].items()},
                        comparison=None if g["comparison"] is None else g["comparison"].to_dict(),
                        in_english=g["in_english"],
                    )
                    for name, g in entry["grids"].items()
                },
            )
            for task, entry in state["tasks"].items()
        },
        side=state["side"],
        timings=clock.timings,
        load_averages=clock.loads,
        config=given.to_dict(),
    )
    write_text_atomic(out / f"{stem}.json", json.dumps(payload, indent=1))
    save_figure(plot(state), out / f"{stem}.png", dpi=120)


def _fmt(value: float, interval: Sequence[float]) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _task_lines(cfg: SaeTsConfig, state: dict[str, Any]) -> list[str]:
    """The task tables: metric per method and grid, paired differences, every cell."""
    tasks = state["tasks"]
    if not tasks:
        return []
    lines = [
        "## Tasks: max over scales of mean(behaviour) x mean(coherence)",
        "",
        "Cells: metric [95% bootstrap interval over the continuations] (best scale; en = "
        "fraction of the best scale's continuations in English). Own: best scale in units of "
        "the vector's own calibrated scale (x0 = unsteered).",
        "",
        "| task | target {feature: weight} (separation) | behaviour scorer | grid | "
        + " | ".join(METHODS)
        + " |",
        "|---|---|---|---|" + "---|" * len(METHODS),
    ]
    for task, entry in tasks.items():
        target = state["targets"][task]
        weights = ", ".join(f"{f}: {w:g}" for f, w in target["features"].items())
        for grid_name, grid in entry["grids"].items():
            cells = []
            for m in METHODS:
                result = grid["results"].get(m)
                if result is None:
                    cells.append("n/a (no effect data)")
                    continue
                where = (
                    f"x{result.best_scale / entry['own_scales'][m]:.2g}"
                    if grid_name == "own"
                    else f"{result.best_scale:g}"
                )
                english = 100 * grid["in_english"][m]
                cells.append(
                    f"{_fmt(result.best_score, result.metric_ci)} ({where}; {english:.0f}% en)"
                )
            lines.append(
                f"| {task} | {{{weights}}} ({target['separation']:.2f}, {target['chosen']}) | "
                f"{entry['scorer']} | {grid_name} | " + " | ".join(cells) + " |"
            )
    lines += [
        "",
        "Own calibrated scales: "
        + "; ".join(
            f"{task} " + ", ".join(f"{m} {s:.0f}" for m, s in entry["own_scales"].items())
            for task, entry in tasks.items()
        )
        + ".",
        "",
        "### Paired differences between methods",
        "",
        "Each replicate resamples the (prompt, sample) units once for all methods and recomputes "
        'every method\'s max over scales; "not distinguishable" where the interval covers 0.',
        "",
    ]
    for task, entry in tasks.items():
        for grid_name, grid in entry["grids"].items():
            if grid["comparison"] is not None:
                lines += [
                    f"**{task}, {grid_name} scales**",
                    "",
                    grid["comparison"].to_markdown(),
                    "",
                ]
    lines += ["### Every cell", ""]
    for task, entry in tasks.items():
        for grid_name, grid in entry["grids"].items():
            for method, result in grid["results"].items():
                lines += [
                    f"**{task}, {method}, {grid_name} scales** ({entry['scorer']}; "
                    f"{100 * grid['in_english']['unsteered']:.0f}% of the unsteered "
                    "continuations in English)",
                    "",
                    result.to_markdown(examples=2),
                    "",
                ]
    return lines


def _side_lines(cfg: SaeTsConfig, state: dict[str, Any]) -> list[str]:
    side = state["side"]
    lines = [
        "## Side effects on held-out rollouts",
        "",
        "Each vector at its own calibrated scale. Features: the task targets, then "
        + (
            "those whose effect the effect model predicts best (per-feature R^2 on its own "
            "held-out split)."
            if cfg.side_features == "fit"
            else "random decoder-row features of the effect data."
        ),
        "Ratio = mean |change of non-target features| per unit target change (lower is "
        "better; inf = the target did not rise).",
        "",
        "| feature | effect-model R^2 | decoder row: scale | target change | ratio | "
        "SAE-TS: scale | target change | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in side:
        lines.append(
            f"| {row['feature']} | "
            + (f"{row['fit_r2']:.2f}" if math.isfinite(row["fit_r2"]) else "n/a")
            + f" | {row['dec_scale']:.0f} | "
            f"{row['dec_target']:.3g} | {row['dec_ratio']:.3g} | {row['ts_scale']:.0f} | "
            f"{row['ts_target']:.3g} | {row['ts_ratio']:.3g} |"
        )
    dec_eff, ts_eff = _efficiencies(side)
    wins = sum(t > d for t, d in zip(ts_eff, dec_eff, strict=True))
    losses = sum(t < d for t, d in zip(ts_eff, dec_eff, strict=True))
    lines += [
        "",
        f"Median target change per unit side effect over {len(side)} features: decoder row "
        f"{statistics.median(dec_eff or [math.nan]):.3g}, SAE-TS "
        f"{statistics.median(ts_eff or [math.nan]):.3g}; SAE-TS higher on {wins}, decoder row "
        f"higher on {losses}, tied on {len(side) - wins - losses} (0 where the target did not "
        f"rise). Two-sided sign test over the untied features: p = {_sign_test(wins, losses):.3g}.",
        "",
    ]
    return lines


def _efficiencies(side: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Per feature, target change per unit side effect (1 / ratio; 0 where it did not rise)."""
    dec = [0.0 if math.isinf(r["dec_ratio"]) else 1 / r["dec_ratio"] for r in side]
    ts = [0.0 if math.isinf(r["ts_ratio"]) else 1 / r["ts_ratio"] for r in side]
    return dec, ts


def _sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial (p = 1/2) test of ``wins`` against ``losses``."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def plot(state: dict[str, Any]) -> Figure:
    """Task metrics (own scales) with intervals by method, and per feature the two vectors'
    target change per side effect."""
    fig = Figure(figsize=(11, 4), layout="tight")
    left, right = fig.subplots(1, 2)
    tasks = list(state["tasks"])
    width = 0.27
    for i, method in enumerate(METHODS):
        xs, ys, errs = [], [], [[], []]
        for j, task in enumerate(tasks):
            result = state["tasks"][task]["grids"]["own"]["results"].get(method)
            if result is None:
                continue
            xs.append(j + (i - 1) * width)
            ys.append(result.best_score)
            errs[0].append(result.best_score - result.metric_ci[0])
            errs[1].append(result.metric_ci[1] - result.best_score)
        left.bar(xs, ys, width, yerr=errs, capsize=2, label=method)
    left.set_xticks(range(len(tasks)), tasks)
    left.set_ylabel("max mean(behaviour) x mean(coherence)")
    left.legend()
    left.set_title("Steering tasks (own scales, 95% intervals)")
    dec_eff, ts_eff = _efficiencies(state["side"])
    right.scatter(dec_eff, ts_eff, s=18)
    top = max(dec_eff + ts_eff + [1e-9]) * 1.05
    right.plot([0, top], [0, top], color="grey", lw=0.8)
    right.set_xlabel("decoder row: target change / side effect")
    right.set_ylabel("SAE-TS: target change / side effect")
    right.set_title("Held-out rollouts, per feature")
    return fig


if __name__ == "__main__":
    main()
