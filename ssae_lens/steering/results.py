"""What a steering sweep returns: per-scale cells with bootstrap intervals, every sample, the
metric, and their tables, plots and files (:func:`~ssae_lens.steering.evaluation.evaluate_steering`
makes them)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from ssae_lens._core.io import save_figure
from ssae_lens.steering.bootstrap import (
    CELL_LABELS,
    CELLS,
    METRICS,
    cell_means,
    format_interval,
    percentile_interval,
    resample_counts,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = [
    "BOOTSTRAP_DEFAULTS",
    "PAIRING_SETTINGS",
    "ScaleResult",
    "SteeringEvaluation",
    "SteeringSample",
]

Interval = tuple[float, float]

BOOTSTRAP_DEFAULTS: dict[str, Any] = {
    "metric": "product_of_means",
    "n_bootstrap": 1000,
    "bootstrap_seed": 0,
    "level": 0.95,
}
"""How a sweep's intervals are computed unless told otherwise (``evaluate_steering``'s
defaults)."""

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
        return float(getattr(self, check_cell(cell)))

    def interval(self, cell: str) -> Interval:
        """The bootstrap interval of a cell by name."""
        return getattr(self, check_cell(cell) + "_ci")


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
        settings = {**BOOTSTRAP_DEFAULTS, **settings}
        metric = check_cell(settings["metric"], METRICS)
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


def check_cell(cell: str, valid: Sequence[str] = CELLS) -> str:
    if cell not in valid:
        raise ValueError(f"Unknown {cell!r}; use one of {list(valid)}.")
    return cell


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(empty)"
