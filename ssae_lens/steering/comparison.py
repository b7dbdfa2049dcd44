"""Paired comparison of steering methods evaluated on the same prompts and seeds.

Sweeps from :func:`~ssae_lens.steering.evaluation.evaluate_methods` (or separate
``evaluate_steering`` calls with the same :data:`~ssae_lens.steering.results.PAIRING_SETTINGS`)
hold, for every (prompt, sample) unit, one continuation per method and scale, all drawn with
the same random numbers. The bootstrap resamples these units once per replicate for all
methods together and recomputes each method's metric (max over its scales), so the
difference between two methods keeps only the noise that does not cancel between them.
An interval that covers zero is reported as "not distinguishable".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ssae_lens.steering.bootstrap import (
    CELL_LABELS,
    METRICS,
    cell_means,
    format_interval,
    percentile_interval,
    resample_counts,
)
from ssae_lens.steering.results import PAIRING_SETTINGS, SteeringEvaluation

__all__ = ["MethodComparison", "MethodScore", "PairedDifference", "compare_evaluations"]


@dataclass(frozen=True)
class MethodScore:
    """One method's metric (max over its scales) with its bootstrap interval."""

    name: str
    value: float
    interval: tuple[float, float]
    best_scale: float


@dataclass(frozen=True)
class PairedDifference:
    """``first - second`` of the metric, with the interval of the paired bootstrap."""

    first: str
    second: str
    difference: float
    interval: tuple[float, float]

    @property
    def distinguishable(self) -> bool:
        """False where the interval covers zero."""
        low, high = self.interval
        return not low <= 0.0 <= high

    @property
    def verdict(self) -> str:
        if not self.distinguishable:
            return "not distinguishable"
        return f"{self.first if self.difference > 0 else self.second} higher"


@dataclass(frozen=True)
class MethodComparison:
    """Every method's metric and the paired differences between methods."""

    metric: str
    level: float
    n_resamples: int
    n_units: int
    scores: list[MethodScore]
    differences: list[PairedDifference]

    def to_markdown(self) -> str:
        pct = f"{100 * self.level:g}%"
        lines = [
            f"| method | max over scales of {CELL_LABELS[self.metric]} [{pct} CI] | best scale |",
            "|---|---:|---:|",
        ]
        for s in self.scores:
            lines.append(
                f"| {s.name} | {format_interval(s.value, s.interval)} | {s.best_scale:g} |"
            )
        lines += ["", f"| difference | value [{pct} CI, paired] | reading |", "|---|---:|---|"]
        for d in self.differences:
            cell = format_interval(d.difference, d.interval)
            lines.append(f"| {d.first} - {d.second} | {cell} | {d.verdict} |")
        lines += [
            "",
            f"Paired bootstrap over {self.n_units} continuations (prompt x sample) per scale, "
            f"{self.n_resamples} replicates; each replicate recomputes every scale of every "
            "method and takes the max.",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_evaluations(
    evaluations: Mapping[str, SteeringEvaluation],
    *,
    metric: str | None = None,
    baseline: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> MethodComparison:
    """Metrics and paired differences of sweeps run on the same prompts and seeds.

    Args:
        evaluations: ``{method name: SteeringEvaluation}``, all with the same
            :data:`~ssae_lens.steering.results.PAIRING_SETTINGS` (as
            ``evaluate_methods`` makes them).
        metric: ``"product_of_means"`` or ``"mean_of_products"``; default the evaluations'
            own (which must then agree).
        baseline: compare every other method with this one; default every pair, in the
            order given.
        n_resamples: bootstrap replicates.
        seed: seeds the bootstrap's own ``torch.Generator``.
        level: coverage of the percentile intervals.
    """
    names = list(evaluations)
    if len(names) < 2:
        raise ValueError("compare_evaluations needs at least two evaluations.")
    metric = metric or _common_metric(evaluations)
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; use one of {list(METRICS)}.")
    if baseline is not None and baseline not in evaluations:
        raise ValueError(f"baseline {baseline!r} is not one of the methods {names}.")
    _check_paired(evaluations)
    first = evaluations[names[0]]
    n_units = len(first.units)
    counts = resample_counts(n_units, n_resamples, torch.Generator().manual_seed(seed))
    ones = torch.ones(1, n_units, dtype=torch.float64)
    point, replicates = {}, {}
    for name, evaluation in evaluations.items():
        behavior, coherence = evaluation.scores()
        point[name] = float(cell_means(ones, behavior, coherence)[metric].max())
        replicates[name] = cell_means(counts, behavior, coherence)[metric].max(1).values
    scores = [
        MethodScore(
            name,
            point[name],
            percentile_interval(replicates[name], level),
            max(evaluations[name].results, key=lambda r: r.value(metric)).scale,
        )
        for name in names
    ]
    if baseline is None:
        pairs = list(itertools.combinations(names, 2))
    else:
        pairs = [(name, baseline) for name in names if name != baseline]
    differences = [
        PairedDifference(
            a,
            b,
            point[a] - point[b],
            percentile_interval(replicates[a] - replicates[b], level),
        )
        for a, b in pairs
    ]
    return MethodComparison(metric, level, n_resamples, n_units, scores, differences)


def _common_metric(evaluations: Mapping[str, SteeringEvaluation]) -> str:
    metrics = {e.metric for e in evaluations.values()}
    if len(metrics) > 1:
        raise ValueError(
            f"The evaluations use different metrics {sorted(metrics)}: pass metric=... to "
            "compare them on one."
        )
    return metrics.pop()


def _check_paired(evaluations: Mapping[str, SteeringEvaluation]) -> None:
    (first_name, first), *others = evaluations.items()
    for name, other in others:
        differ = [
            key for key in PAIRING_SETTINGS if other.settings.get(key) != first.settings.get(key)
        ]
        if differ:
            raise ValueError(
                f"{name!r} and {first_name!r} were not run on the same prompts and seeds "
                f"(settings {differ} differ), so their continuations cannot be paired: "
                "evaluate them with evaluate_methods or the same settings."
            )
        a = {(s.prompt_index, s.sample): s.unsteered for s in first.samples}
        b = {(s.prompt_index, s.sample): s.unsteered for s in other.samples}
        if a != b:
            raise ValueError(
                f"{name!r} and {first_name!r} have different unsteered continuations for the "
                "same prompts and seeds: were they run on the same model?"
            )
