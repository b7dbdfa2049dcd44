"""Bootstrap over continuations: the cells of a steering sweep and their max over scales.

A sweep scores ``n`` continuations (prompt x sample, the resampling units) at each of ``S``
scales; the same units appear at every scale (shared seeds). One bootstrap replicate draws
``n`` units with replacement, once, and recomputes every cell at every scale from them, and
the max over scales of the metric from those cells: the interval of the max is that of the
whole procedure, not of the winning scale's cell. Several sweeps on the same units are
resampled jointly (paired), which is what makes differences between methods precise.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "CELLS",
    "CELL_LABELS",
    "METRICS",
    "cell_means",
    "format_interval",
    "percentile_interval",
    "resample_counts",
]

METRICS = ("product_of_means", "mean_of_products")
"""``product_of_means``: ``mean(behaviour) x mean(coherence)`` per scale, the metric of the
SAE-TS reference code. ``mean_of_products``: ``mean(behaviour x coherence)``, which rewards
texts that are both on-target and fluent at once."""

CELLS = ("behavior", "coherence", *METRICS)
CELL_LABELS = {
    "behavior": "behaviour",
    "coherence": "coherence",
    "product_of_means": "mean b x mean c",
    "mean_of_products": "mean (b x c)",
}


def resample_counts(
    n_units: int, n_resamples: int, generator: torch.Generator
) -> Float[Tensor, "resamples units"]:
    """How often each unit is drawn in each replicate (rows sum to ``n_units``)."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples}.")
    drawn = torch.randint(n_units, (n_resamples, n_units), generator=generator)
    counts = torch.zeros(n_resamples, n_units, dtype=torch.float64)
    return counts.scatter_add_(1, drawn, torch.ones_like(counts))


def cell_means(
    counts: Float[Tensor, "resamples units"],
    behavior: Float[Tensor, "units scales"],
    coherence: Float[Tensor, "units scales"],
) -> dict[str, Float[Tensor, "resamples scales"]]:
    """Every cell (:data:`CELLS`) at every scale for each row of unit ``counts``.

    ``counts`` of all ones (one row) gives the point estimates.
    """
    b, c = behavior.double(), coherence.double()
    total = counts.sum(1, keepdim=True)
    mean_b, mean_c = counts @ b / total, counts @ c / total
    return {
        "behavior": mean_b,
        "coherence": mean_c,
        "product_of_means": mean_b * mean_c,
        "mean_of_products": counts @ (b * c) / total,
    }


def percentile_interval(values: Float[Tensor, " resamples"], level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(values.double(), tails).tolist()
    return low, high


def format_interval(value: float, interval: tuple[float, float]) -> str:
    """``"0.512 [0.431, 0.598]"``."""
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
