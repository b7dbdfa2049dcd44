"""Does a steering vector work? Sweep scales, generate, score behaviour and coherence.

``evaluate_steering`` generates continuations of neutral prompts under ``steer`` at each scale
(scale 0 is the unsteered baseline and is always included), scores every continuation for
behaviour (does it show the target concept) and coherence (is it fluent), both in ``[0, 1]``,
and reports per scale four cells, each with a bootstrap interval over the continuations:

- ``behavior`` and ``coherence``: the means;
- ``product_of_means``: ``mean(behaviour) x mean(coherence)``;
- ``mean_of_products``: ``mean(behaviour x coherence)``.

The metric is the max over scales of one of the two products (``metric``). The default,
``product_of_means``, is the one of the SAE-targeted steering reference code (Chalnev, Siu &
Conmy 2024, arXiv 2411.02193); ``mean_of_products`` asks each text to be on-target and fluent
at once. Its interval bootstraps the whole max (:mod:`~ssae_lens.steering.bootstrap`).

``evaluate_methods`` runs several methods on one scale grid (or one grid each) with the same
prompts and seeds, sharing the unsteered baseline; ``compare_evaluations`` then gives paired
differences with intervals::

    results = evaluate_methods(
        model, {"CAA": caa, "SAE-TS": ts}, prompts=["I think"], scales=[20, 40, 80],
        behavior_scorer=VaderSentimentScorer(), n_samples=32, do_sample=True,
    )
    print(compare_evaluations(results).to_markdown())
    print(results["SAE-TS"].to_markdown(examples=2))
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from ssae_lens._core.backend import Model
from ssae_lens._core.io import save_figure
from ssae_lens._core.precision import Precision, resolve_precision
from ssae_lens.distributed import compute_chunks
from ssae_lens.generation import generate_texts
from ssae_lens.steering.apply import POSITION_NAMES, steer
from ssae_lens.steering.bootstrap import (
    CELL_LABELS,
    CELLS,
    METRICS,
    cell_means,
    format_interval,
    percentile_interval,
    resample_counts,
)
from ssae_lens.steering.scorers import LikelihoodCoherenceScorer, Scorer
from ssae_lens.steering.vector import SteeringVector

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PAIRING_SETTINGS",
    "ScaleResult",
    "SteeringEvaluation",
    "SteeringSample",
    "evaluate_methods",
    "evaluate_steering",
]

Interval = tuple[float, float]
Intervention = SteeringVector | Sequence[SteeringVector] | Callable[[float], Any]

PAIRING_SETTINGS = (
    "prompts",
    "n_samples",
    "seed",
    "batch_size",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
)
"""Settings that fix which continuation each (prompt, sample) unit is: sweeps that agree on
them are paired unit by unit."""


@dataclass(frozen=True)
class ScaleResult:
    """The cells at one scale over all prompts and samples, with bootstrap intervals.

    Attributes:
        scale: the steering scale (0 = unsteered).
        behavior: mean behaviour score.
        coherence: mean coherence score.
        product_of_means: ``behavior * coherence`` (the reference's cell).
        mean_of_products: mean over texts of ``behaviour * coherence``.
        n_texts: number of continuations scored.
        behavior_ci, coherence_ci, product_of_means_ci, mean_of_products_ci: the percentile
            bootstrap intervals (``settings["level"]``) of each cell.
    """

    scale: float
    behavior: float
    coherence: float
    product_of_means: float
    mean_of_products: float
    n_texts: int
    behavior_ci: Interval
    coherence_ci: Interval
    product_of_means_ci: Interval
    mean_of_products_ci: Interval

    def value(self, cell: str) -> float:
        """The value of a cell (:data:`~ssae_lens.steering.bootstrap.CELLS`) by name."""
        return float(getattr(self, _check_cell(cell)))

    def interval(self, cell: str) -> Interval:
        """The bootstrap interval of a cell by name."""
        return getattr(self, _check_cell(cell) + "_ci")


@dataclass(frozen=True)
class SteeringSample:
    """One steered continuation next to the unsteered one for the same prompt and sample."""

    scale: float
    prompt_index: int
    prompt: str
    sample: int
    text: str
    unsteered: str
    behavior: float
    coherence: float


@dataclass
class SteeringEvaluation:
    """The result of ``evaluate_steering``.

    Attributes:
        results: one ``ScaleResult`` per scale, in increasing scale order (includes 0).
        samples: every continuation, with the unsteered one for the same prompt and sample.
        hook_names: the hook points steered.
        settings: the generation and bootstrap settings (prompts, max_new_tokens, n_samples,
            seed, n_bootstrap, level, ...).
        metric: the cell whose max over scales is the metric (``"product_of_means"`` or
            ``"mean_of_products"``).
        metric_ci: the bootstrap interval of that max (every scale recomputed per replicate).
    """

    results: list[ScaleResult]
    samples: list[SteeringSample]
    hook_names: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    metric: str = "product_of_means"
    metric_ci: Interval = (math.nan, math.nan)

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[SteeringSample],
        *,
        settings: Mapping[str, Any],
        hook_names: Sequence[str] = (),
    ) -> SteeringEvaluation:
        """Every cell with its interval and the metric's interval, from scored samples.

        Every (prompt_index, sample) unit must have a sample at every scale. ``settings``
        supplies ``metric``, ``n_bootstrap``, ``bootstrap_seed`` and ``level`` (defaults of
        ``evaluate_steering`` for those missing) and is kept as the result's settings.
        """
        settings = {**{k: _DEFAULTS[k] for k in _BOOTSTRAP}, **settings}
        metric = _check_cell(settings["metric"], METRICS)
        grid = sorted({s.scale for s in samples})
        evaluation = cls([], list(samples), list(hook_names), settings, metric)
        behavior, coherence = evaluation.scores()
        if bool(behavior.isnan().any()):
            raise ValueError("Every (prompt_index, sample) unit needs a sample at every scale.")
        n = behavior.shape[0]
        point = cell_means(torch.ones(1, n, dtype=torch.float64), behavior, coherence)
        generator = torch.Generator().manual_seed(settings["bootstrap_seed"])
        replicates = cell_means(
            resample_counts(n, settings["n_bootstrap"], generator), behavior, coherence
        )
        level = settings["level"]
        for k, scale in enumerate(grid):
            values = {cell: float(point[cell][0, k]) for cell in CELLS}
            intervals = {
                f"{cell}_ci": percentile_interval(replicates[cell][:, k], level) for cell in CELLS
            }
            evaluation.results.append(ScaleResult(scale, **values, n_texts=n, **intervals))
        evaluation.metric_ci = percentile_interval(replicates[metric].max(1).values, level)
        return evaluation

    @property
    def best(self) -> ScaleResult:
        """The scale with the highest metric cell (the first on ties)."""
        return max(self.results, key=lambda r: r.value(self.metric))

    @property
    def best_scale(self) -> float:
        return self.best.scale

    @property
    def best_score(self) -> float:
        """The metric: max over scales of the ``metric`` cell."""
        return self.best.value(self.metric)

    @property
    def baseline(self) -> ScaleResult:
        """The unsteered row (scale 0)."""
        return next(r for r in self.results if r.scale == 0.0)

    @property
    def units(self) -> list[tuple[int, int]]:
        """The resampling units, ``(prompt_index, sample)``, in the order of :meth:`scores`."""
        return sorted({(s.prompt_index, s.sample) for s in self.samples})

    def scores(self) -> tuple[Float[Tensor, "units scales"], Float[Tensor, "units scales"]]:
        """Behaviour and coherence of every unit (rows, :attr:`units`) at every scale
        (columns, increasing scale: the order of :attr:`results`)."""
        row = {u: k for k, u in enumerate(self.units)}
        column = {a: k for k, a in enumerate(sorted({s.scale for s in self.samples}))}
        behavior = torch.full((len(row), len(column)), math.nan, dtype=torch.float64)
        coherence = behavior.clone()
        for s in self.samples:
            k, j = row[s.prompt_index, s.sample], column[s.scale]
            behavior[k, j], coherence[k, j] = s.behavior, s.coherence
        return behavior, coherence

    def samples_at(self, scale: float | None = None) -> list[SteeringSample]:
        """The continuations at ``scale`` (default: the best scale), steered vs unsteered."""
        scale = self.best_scale if scale is None else float(scale)
        found = [s for s in self.samples if s.scale == scale]
        if not found:
            raise ValueError(
                f"No samples at scale {scale:g}; evaluated scales: "
                f"{[r.scale for r in self.results]}."
            )
        return found

    def table(self) -> list[dict[str, Any]]:
        """The per-scale table as a list of rows."""
        return [asdict(r) for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: table, metric, best scale and score with its interval, samples, settings."""
        return {
            "hook_names": list(self.hook_names),
            "settings": dict(self.settings),
            "metric": self.metric,
            "results": self.table(),
            "best_scale": self.best_scale,
            "best_score": self.best_score,
            "metric_ci": list(self.metric_ci),
            "samples": [asdict(s) for s in self.samples],
        }

    def to_markdown(self, examples: int = 0) -> str:
        """The sweep as a Markdown table with intervals; ``examples`` > 0 adds that many
        steered vs unsteered continuations at the best scale."""
        best = self.best
        level = self.settings.get("level", 0.95)
        lines = [
            f"| scale | behaviour | coherence | {CELL_LABELS['product_of_means']} | "
            f"{CELL_LABELS['mean_of_products']} |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in self.results:
            label = f"{r.scale:g}" + (" (unsteered)" if r.scale == 0 else "")
            cells = [format_interval(r.value(c), r.interval(c)) for c in CELLS]
            if r is best:
                label = f"**{label}**"
                k = CELLS.index(self.metric)
                cells[k] = f"**{cells[k]}**"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"max over scales of {CELL_LABELS[self.metric]} = "
            f"{format_interval(self.best_score, self.metric_ci)} at scale {best.scale:g} "
            f"(unsteered: {self.baseline.value(self.metric):.3f}); [{100 * level:g}% bootstrap "
            f"intervals over {len(self.units)} continuations per scale]"
            + (f"; hook: {', '.join(self.hook_names)}." if self.hook_names else "."),
        ]
        if examples > 0:
            lines += [
                "",
                f"| prompt | unsteered | steered (scale {best.scale:g}) |",
                "|---|---|---|",
            ]
            for s in self.samples_at(best.scale)[:examples]:
                cells = (_md_cell(s.prompt), _md_cell(s.unsteered), _md_cell(s.text))
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def figure(self) -> Figure:
        """Behaviour, coherence and the metric cell against scale, with their intervals (not
        attached to pyplot)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.subplots()
        scales = [r.scale for r in self.results]
        for cell, marker in (("behavior", "o-"), ("coherence", "s-"), (self.metric, "D-")):
            low, high = zip(*(r.interval(cell) for r in self.results), strict=True)
            line = ax.plot(scales, [r.value(cell) for r in self.results], marker)[0]
            line.set_label(CELL_LABELS[cell])
            ax.fill_between(scales, low, high, color=line.get_color(), alpha=0.15)
        ax.axvline(
            self.best_scale,
            color="0.5",
            ls=":",
            label=f"best scale {self.best_scale:g} ({self.best_score:.3f})",
        )
        ax.set(
            xlabel="steering scale (0 = unsteered)",
            ylabel="score",
            ylim=(-0.02, 1.02),
            title=f"steering sweep at {', '.join(self.hook_names)}",
        )
        ax.legend()
        return fig

    def plot(self, path: str | os.PathLike) -> Path:
        """Save ``figure()`` to ``path`` (format from the suffix, e.g. ``.png``); returns it."""
        return save_figure(self.figure(), path)


def evaluate_steering(
    model: Model,
    vector: Intervention,
    *,
    prompts: Sequence[str],
    scales: Sequence[float],
    behavior_scorer: Scorer,
    coherence_scorer: Scorer | None = None,
    max_new_tokens: int = 32,
    n_samples: int = 1,
    seed: int = 0,
    positions: str = "all",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 16,
    metric: str = "product_of_means",
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    level: float = 0.95,
    precision: Precision | None = None,
) -> SteeringEvaluation:
    """Sweep steering scales and score the generations.

    For each scale ``a`` (0 added if missing) and prompt, generates ``n_samples``
    continuations of ``max_new_tokens`` tokens with ``vector`` applied as ``x + a * direction``
    (``steer(model, vector, scale=a, positions=positions)``) on every forward pass, prompt and
    decode steps. Scale 0 runs without any hook: it is the unsteered baseline each steered
    continuation is paired with. The rows (each prompt repeated ``n_samples`` times) are
    generated by :func:`~ssae_lens.generation.generate_texts` in left-padded batches of
    ``batch_size``; batch ``c`` draws its tokens from the uniform numbers of seed ``seed + c``
    at every scale, so scales share their sampling noise (common random numbers; the global
    RNG is not used). Continuations are cut at the first EOS. Each batch is scored as soon
    as it is generated.

    Under ``torchrun``, inside :func:`ssae_lens.distributed.process_group`, the batches of the
    scale x prompt grid (and their scoring) are shared by the ranks
    (:func:`~ssae_lens.distributed.compute_chunks`) and every rank returns the full result,
    the same as one process's: batch ``c``'s random numbers do not depend on the rank.

    Args:
        model: the model to steer.
        vector: a ``SteeringVector`` or a list of them (all scaled by the same ``a``), or any
            intervention as a function ``a -> context manager`` (e.g. query steering with
            ``a`` steps); ``positions`` then applies only to vectors.
        prompts: neutral prompts to continue.
        scales: the scales to sweep.
        behavior_scorer: scores whether a continuation shows the target behaviour.
        coherence_scorer: scores fluency; default ``LikelihoodCoherenceScorer(model)``.
        max_new_tokens: tokens generated per continuation.
        n_samples: continuations per prompt and scale (> 1 needs ``do_sample=True``).
        seed: base seed of the sampling.
        positions: ``"all"``, ``"prompt"`` or ``"generated"`` (see ``steer``).
        do_sample: sample (``True``) or decode greedily (``False``).
        temperature: sampling temperature.
        top_k: sample among the ``top_k`` most likely tokens, or ``None`` for all.
        top_p: nucleus sampling mass, or ``None`` for the full distribution.
        batch_size: continuations generated per batch.
        metric: ``"product_of_means"`` (the reference's) or ``"mean_of_products"``.
        n_bootstrap: bootstrap replicates (resampling the prompt x sample continuations).
        bootstrap_seed: seeds the bootstrap's own ``torch.Generator``.
        level: coverage of the percentile intervals.
        precision: the precision of generation and of the default coherence scorer
            (``None``: the model's).

    Returns:
        A ``SteeringEvaluation`` with the per-scale table, the metric and every sample.
    """
    sweep = _Sweep(
        model,
        prompts,
        behavior_scorer,
        coherence_scorer,
        dict(
            max_new_tokens=max_new_tokens,
            n_samples=n_samples,
            seed=seed,
            positions=positions,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            batch_size=batch_size,
            metric=metric,
            n_bootstrap=n_bootstrap,
            bootstrap_seed=bootstrap_seed,
            level=level,
            precision=precision,
        ),
    )
    return sweep.evaluate(vector, scales)


def evaluate_methods(
    model: Model,
    methods: Mapping[str, Intervention],
    *,
    scales: Sequence[float] | Mapping[str, Sequence[float]],
    prompts: Sequence[str],
    behavior_scorer: Scorer,
    coherence_scorer: Scorer | None = None,
    **options: Any,
) -> dict[str, SteeringEvaluation]:
    """``evaluate_steering`` for several methods on the same prompts and seeds.

    ``scales`` is one absolute grid shared by every method (as the reference evaluates), or
    a grid per method name (e.g. multiples of each vector's own calibrated scale). The
    unsteered baseline is generated and scored once and shared, and every method's
    continuations are paired with the others' by prompt and sample, ready for
    :func:`~ssae_lens.steering.comparison.compare_evaluations`. ``options`` are those of
    :func:`evaluate_steering`.
    """
    if not methods:
        raise ValueError("No methods to evaluate: pass {name: vector, ...}.")
    if isinstance(scales, Mapping):
        missing = [name for name in methods if name not in scales]
        if missing:
            raise ValueError(f"No scales for {missing}: give a grid per method or one shared list.")
    sweep = _Sweep(model, prompts, behavior_scorer, coherence_scorer, options)
    return {
        name: sweep.evaluate(vector, scales[name] if isinstance(scales, Mapping) else scales)
        for name, vector in methods.items()
    }


_DEFAULTS: dict[str, Any] = {
    name: p.default
    for name, p in inspect.signature(evaluate_steering).parameters.items()
    if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and name != "coherence_scorer"
}
"""The options of a sweep and their defaults, as ``evaluate_steering`` declares them."""
_BOOTSTRAP = ("metric", "n_bootstrap", "bootstrap_seed", "level")
_GENERATION = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "precision")


class _Sweep:
    """Validated settings of a sweep, and its unsteered baseline generated and scored once."""

    def __init__(
        self,
        model: Model,
        prompts: Sequence[str],
        behavior_scorer: Scorer,
        coherence_scorer: Scorer | None,
        options: Mapping[str, Any],
    ):
        unknown = sorted(set(options) - set(_DEFAULTS))
        if unknown:
            raise TypeError(f"Unknown evaluation options {unknown}; valid: {sorted(_DEFAULTS)}.")
        settings = {**_DEFAULTS, **options}
        self.model = model
        self.prompts = _check_prompts(prompts)
        _check_settings(settings)
        settings["precision"] = resolve_precision(model, settings["precision"])
        self.settings = settings
        self.behavior_scorer = behavior_scorer
        self.coherence_scorer = coherence_scorer or LikelihoodCoherenceScorer(
            model, precision=settings["precision"]
        )
        n_samples, batch_size = settings["n_samples"], settings["batch_size"]
        self.units = [(i, j) for i in range(len(self.prompts)) for j in range(n_samples)]
        self.chunks = [
            self.units[k : k + batch_size] for k in range(0, len(self.units), batch_size)
        ]
        self._baseline: list[tuple[str, float, float]] | None = None

    def evaluate(self, vector: Intervention, scales: Sequence[float]) -> SteeringEvaluation:
        intervene, hook_names = self._intervention(vector)
        grid = _check_scales(scales)
        scored = self._run(intervene, [a for a in grid if a != 0.0])
        scored[0.0] = self.baseline()
        unsteered = [text for text, _, _ in scored[0.0]]
        samples = [
            SteeringSample(
                scale=a,
                prompt_index=i,
                prompt=self.prompts[i],
                sample=j,
                text=text,
                unsteered=unsteered[k],
                behavior=b,
                coherence=c,
            )
            for a in grid
            for k, ((i, j), (text, b, c)) in enumerate(zip(self.units, scored[a], strict=True))
        ]
        settings = {"prompts": list(self.prompts), **self.settings}
        return SteeringEvaluation.from_samples(samples, settings=settings, hook_names=hook_names)

    def baseline(self) -> list[tuple[str, float, float]]:
        """``(text, behaviour, coherence)`` of every unsteered unit, in unit order."""
        if self._baseline is None:
            self._baseline = self._run(None, [0.0])[0.0]
        return self._baseline

    def _intervention(
        self, vector: Intervention
    ) -> tuple[Callable[[float], contextlib.AbstractContextManager], list[str]]:
        if callable(vector):
            return vector, []
        vectors = [vector] if isinstance(vector, SteeringVector) else list(vector)
        if not vectors or not all(isinstance(v, SteeringVector) for v in vectors):
            raise TypeError(
                "vector must be a SteeringVector, a non-empty list of them, or a function "
                "scale -> context manager."
            )
        positions = self.settings["positions"]

        def intervene(scale: float) -> contextlib.AbstractContextManager:
            return steer(self.model, vectors, scale=scale, positions=positions)

        return intervene, [v.hook_name for v in vectors]

    def _run(
        self, intervene: Callable | None, scales: list[float]
    ) -> dict[float, list[tuple[str, float, float]]]:
        """``(text, behaviour, coherence)`` of every unit at each scale (``intervene=None``:
        unsteered), in unit order.

        The work is one job per scale and batch: batch ``c`` is generated with the seed
        ``seed + c`` and scored at once. The jobs go through
        :func:`~ssae_lens.distributed.compute_chunks`, so under ``torchrun`` (inside
        :func:`ssae_lens.distributed.process_group`) the ranks share them, scorers included,
        and every rank gets what one process computes.
        """
        if not scales:
            return {}
        options = {k: self.settings[k] for k in _GENERATION}
        jobs = [(a, c) for a in scales for c in range(len(self.chunks))]

        def run_jobs(items: range) -> dict[str, Tensor]:
            """The jobs ``jobs[items]``: texts as UTF-8 bytes and lengths, and scores."""
            out: dict[str, list[Tensor]] = {
                "text": [],
                "length": [],
                "behavior": [],
                "coherence": [],
            }
            for scale, c in jobs[items.start : items.stop]:
                prompts = [self.prompts[i] for i, _ in self.chunks[c]]
                hooks = contextlib.nullcontext() if intervene is None else intervene(scale)
                with hooks:
                    texts = generate_texts(
                        self.model, prompts, seed=self.settings["seed"] + c, **options
                    )
                encoded = [text.encode("utf-8") for text in texts]
                out["text"].append(torch.tensor(list(b"".join(encoded)), dtype=torch.uint8))
                out["length"].append(torch.tensor([len(b) for b in encoded], dtype=torch.long))
                for name in ("behavior", "coherence"):
                    scorer = getattr(self, f"{name}_scorer")
                    scores = _run_scorer(scorer, f"{name}_scorer", texts, prompts)
                    out[name].append(torch.tensor(scores, dtype=torch.float64))
            return {name: torch.cat(parts) for name, parts in out.items()}

        done, _ = compute_chunks(run_jobs, len(jobs), 1, desc="steering sweep")
        payload = bytes(done["text"].tolist())
        ends = done["length"].cumsum(0).tolist()
        texts = [
            payload[end - n : end].decode("utf-8")
            for end, n in zip(ends, done["length"].tolist(), strict=True)
        ]
        rows = list(zip(texts, done["behavior"].tolist(), done["coherence"].tolist(), strict=True))
        n = len(self.units)
        return {a: rows[k * n : (k + 1) * n] for k, a in enumerate(scales)}


def _check_settings(settings: Mapping[str, Any]) -> None:
    if settings["positions"] not in POSITION_NAMES:
        raise ValueError(
            f"positions must be one of {POSITION_NAMES} in a sweep over several prompts, got "
            f"{settings['positions']!r}; for per-token selections call steer() directly."
        )
    n_samples = settings["n_samples"]
    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples}.")
    if n_samples > 1 and not settings["do_sample"]:
        raise ValueError(
            f"Greedy decoding makes all {n_samples} samples identical: pass do_sample=True "
            "or n_samples=1."
        )
    for key in ("batch_size", "max_new_tokens", "n_bootstrap"):
        if settings[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {settings[key]}.")
    _check_cell(settings["metric"], METRICS)
    if not 0 < settings["level"] < 1:
        raise ValueError(f"level must be in (0, 1), got {settings['level']}.")


def _check_cell(cell: str, valid: Sequence[str] = CELLS) -> str:
    if cell not in valid:
        raise ValueError(f"Unknown {cell!r}; use one of {list(valid)}.")
    return cell


def _run_scorer(scorer: Scorer, name: str, texts: list[str], prompts: list[str]) -> list[float]:
    scores = [float(s) for s in scorer(texts, prompts)]
    if len(scores) != len(texts):
        raise ValueError(f"{name} returned {len(scores)} scores for {len(texts)} texts.")
    for k, s in enumerate(scores):
        if not (math.isfinite(s) and 0.0 <= s <= 1.0):
            raise ValueError(
                f"{name} returned {s!r} for text {k} ({texts[k][:60]!r}); scorers must return "
                "values in [0, 1]."
            )
    return scores


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string; wrap it: [p].")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings.")
    return prompts


def _check_scales(scales: Sequence[float]) -> list[float]:
    values = [float(s) for s in scales]
    bad = [s for s in values if not math.isfinite(s)]
    if bad:
        raise ValueError(f"scales must be finite numbers, got {bad}.")
    return sorted({0.0, *values})


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(empty)"
