"""Choosing the SSAE's sparsity target from the shifts alone, at any code width.

The constraint ``mean |c| <= sparsity_target`` averages over the ``d_sae`` code units, so the
same target asks for a different number of active units at every width. This module works in
the width-free **code budget** ``budget = sparsity_target * d_sae``, the mean L1 norm of one
code of a shift normalised to unit mean squared norm (``budget = 1``: about one unit-size
active unit per shift).

The rule is stability selection. Identifiability means that SSAEs trained with different
seeds find the same decoder; an over-loose constraint leaves the rotation of the code free,
and the decoders of two seeds disagree. :func:`select_sparsity_target` trains short SSAEs with
two (or more) seeds at each budget of a geometric grid and scores each budget by the seed
agreement of their decoders (:func:`~ssae_lens.metrics.seed_agreement_mcc`), by how much of
the shifts they reconstruct and by whether the constraint still binds at the end of training
(a positive Lagrange multiplier). It keeps the loosest binding budget whose agreement stays
within ``tolerance`` of the best one, the end of the stable plateau (:func:`choose`): among
stable budgets reconstruction breaks the tie, and it improves with the budget. A geometric
midpoint between the chosen budget and the next grid value refines the choice. The scan stops
at the first budget where the constraint no longer binds (a looser one binds even less).

Two details make the rule robust. The default ``tolerance`` (0.05) is about the spread of one
seed pair's agreement between pairs at a fixed setting, so noise alone does not end the
plateau. And agreement alone can mislead at small widths: a 2-unit code has little rotation
to lose, so the unconstrained autoencoder's seeds agree too; a budget at which the multiplier
has returned to zero is therefore never chosen.

The search runs are ``cfg.training_steps // 6`` steps long, with the multiplier's learning rate
(and any target ramp) scaled so that they reach the multiplier level of a full fit. The
constraint's width factor (:func:`~ssae_lens.ssae.model.constraint_scale`) applies to them as
to every fit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from ssae_lens.metrics import seed_agreement_mcc
from ssae_lens.ssae.model import SSAE, TrainingSSAEConfig
from ssae_lens.ssae.training import as_shifts, check_shifts, train_ssae

if TYPE_CHECKING:  # matplotlib is imported when a curve is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_SEEDS",
    "SparsityPoint",
    "SparsitySelection",
    "choose",
    "default_grid",
    "select_sparsity_target",
    "unexplained_fraction",
]

DEFAULT_SEEDS: tuple[int, ...] = (0, 1)
"""Seeds of the search runs: fixed, so every training seed of one config gets one target."""
SEARCH_FRACTION = 6  # a search run is 1/SEARCH_FRACTION of a fit
RULE_VERSION = 1  # part of the cache key of stored selections (load_or_select): bump on change
_RECON_ROWS = 20_000  # shifts used to score reconstruction


@dataclass
class SparsityPoint:
    """One value of the selection curve (numbers over the selection's seeds)."""

    target: float  # sparsity_target (mean |code| per unit)
    budget: float  # target * d_sae (mean L1 norm of a code)
    seed_agreement: float  # mean over seed pairs of the decoders' MCC
    agreement_pairs: list[float]  # per seed pair
    reconstruction: float  # fraction of the shifts' energy left unexplained, mean over seeds
    steps: int  # training steps of each run
    seconds: float  # wall time of its runs
    multiplier: float  # Lagrange multiplier at the end of the runs, mean over seeds
    binding: bool  # the multiplier ended above zero in every run (the constraint acts)


@dataclass
class SparsitySelection:
    """The chosen sparsity target and the curve it was chosen from."""

    target: float
    budget: float
    points: list[SparsityPoint]  # sorted by target
    seeds: list[int]
    tolerance: float
    d_sae: int
    training_steps: int  # steps of one fixed-target fit (``cfg.training_steps``)
    seconds: float = 0.0

    @property
    def search_fits(self) -> float:
        """Training steps spent on the search, in units of one fixed-target fit."""
        steps = sum(p.steps * len(self.seeds) for p in self.points)
        return steps / self.training_steps

    def resolve(self, cfg: TrainingSSAEConfig) -> TrainingSSAEConfig:
        """``cfg`` with the chosen target (``cfg`` must have the width it was chosen for)."""
        if cfg.d_sae != self.d_sae:
            raise ValueError(
                f"this sparsity selection was made for d_sae={self.d_sae}, the config has "
                f"d_sae={cfg.d_sae}; select again for this width."
            )
        return dataclasses.replace(cfg, sparsity_target=self.target)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (what goes into an SSAE's ``metadata.sparsity_selection``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SparsitySelection:
        """The selection of a :meth:`to_dict` record, e.g.
        ``sae.cfg.metadata.sparsity_selection``."""
        points = [SparsityPoint(**p) for p in record["points"]]
        return cls(**{**record, "points": points})

    def plot(self, ax: Axes, title: str | None = None) -> None:
        """Draw the curve on matplotlib axes against the code budget: seed agreement (left
        axis; hollow where the constraint did not bind) and the unexplained fraction of the
        shifts (right axis), the choice marked with its target."""
        from matplotlib.ticker import FixedLocator, NullLocator

        xs = [p.budget for p in self.points]
        ax.plot(xs, [p.seed_agreement for p in self.points], "-", color="C0")
        for p in self.points:
            face = "C0" if p.binding else "white"
            ax.plot([p.budget], [p.seed_agreement], "o", color="C0", markerfacecolor=face)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator([x for x in xs if math.log2(x).is_integer()]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(f"code budget = sparsity_target x d_sae (d_sae = {self.d_sae})")
        ax.set_ylabel("seed agreement (decoder MCC)", color="C0")
        ax.set_ylim(0, 1.05)
        ax.axvline(self.budget, color="k", linestyle=":", linewidth=1)
        ax.annotate(
            f"chosen target {self.target:.3g}",
            (self.budget, 0.04),
            rotation=90,
            fontsize=8,
            ha="right",
        )
        right = ax.twinx()
        right.plot(xs, [p.reconstruction for p in self.points], "s--", color="C1")
        right.set_ylabel("unexplained fraction of the shifts", color="C1")
        right.set_ylim(0, 1.05)
        ax.set_title(title or "Sparsity target chosen by seed agreement", fontsize=10)

    def figure(self, title: str | None = None) -> Figure:
        """A matplotlib ``Figure`` of :meth:`plot` (no pyplot state); save it with
        :func:`ssae_lens._core.io.save_figure`."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 3.4), layout="tight")
        self.plot(fig.add_subplot(), title)
        return fig


def default_grid(d_sae: int) -> list[float]:
    """Sparsity targets at budgets ``2^j`` from 1/4 to the first power of two at or above
    ``sqrt(d_sae)``, about the mean L1 norm of an unconstrained code of unit-norm shifts."""
    top = math.ceil(math.log2(math.sqrt(d_sae)))
    return [2.0**j / d_sae for j in range(-2, max(top, 1) + 1)]


def select_sparsity_target(
    shifts: Float[Tensor, "n d_in"],
    cfg: TrainingSSAEConfig,
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    grid: Sequence[float] | None = None,
    search_steps: int | None = None,
    tolerance: float = 0.05,
    refine: int = 1,
    device: str | None = None,
) -> SparsitySelection:
    """Choose ``sparsity_target`` for ``cfg`` from the shifts, without labels.

    ``train_ssae`` calls this for ``sparsity_target="auto"``; call it yourself to see the curve
    (:meth:`SparsitySelection.figure`), to share one choice across runs (``train_ssae(...,
    selection=...)``) or to override it (``selection.resolve(cfg)``, or a number of your own).

    Args:
        shifts: the training shifts, ``(n, d_in)`` (a tensor or numpy array).
        cfg: the config of the SSAE to be trained (``sparsity="constraint"``); its width,
            normalisation and optimiser settings are used for the search runs (its
            ``sparsity_target`` is not read).
        seeds: seeds of the runs at each grid value (at least 2 distinct); the result is
            deterministic given them.
        grid: sparsity targets to try (default :func:`default_grid` of ``cfg.d_sae``).
        search_steps: training steps of each search run (default ``cfg.training_steps // 6``).
        tolerance: how far below the best seed agreement a target may be and still count as
            stable.
        refine: geometric bisections between the chosen value and the next larger one.
        device: where to train (default ``cfg.device``).

    Returns:
        The chosen target and the curve (:class:`SparsitySelection`).
    """
    shifts = as_shifts(shifts)
    check_shifts(shifts, cfg.d_in)
    if cfg.sparsity != "constraint":
        raise ValueError(
            f"select_sparsity_target chooses the constraint level; cfg.sparsity is "
            f"{cfg.sparsity!r}. Use sparsity='constraint'."
        )
    seeds = list(seeds)
    if len(set(seeds)) < 2:
        raise ValueError(f"seed agreement needs at least 2 distinct seeds, got {seeds}.")
    targets = sorted(set(default_grid(cfg.d_sae) if grid is None else grid))
    if not targets or not all(math.isfinite(t) and t > 0 for t in targets):
        raise ValueError(
            f"grid must hold finite positive sparsity targets, got {list(grid or [])}."
        )
    if search_steps is None:
        search_steps = max(cfg.training_steps // SEARCH_FRACTION, 1)
    if search_steps < 1:
        raise ValueError(f"search_steps must be >= 1, got {search_steps}.")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}.")
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}.")
    search_cfg = _search_config(cfg, search_steps)
    recon_rows = shifts[:_RECON_ROWS]
    start = time.perf_counter()

    def point(target: float) -> SparsityPoint:
        t0 = time.perf_counter()
        run_cfg = dataclasses.replace(search_cfg, sparsity_target=target)
        runs = [
            train_ssae(shifts, run_cfg, seed=s, device=device, progress=False, return_trainer=True)
            for s in seeds
        ]
        saes = [sae for sae, _ in runs]
        final = [trainer.history[-1].lagrange_multiplier for _, trainer in runs]
        mean, pairs = seed_agreement_mcc([sae.W_dec.detach() for sae in saes])
        return SparsityPoint(
            target=target,
            budget=target * cfg.d_sae,
            seed_agreement=mean,
            agreement_pairs=pairs,
            reconstruction=sum(unexplained_fraction(sae, recon_rows) for sae in saes) / len(saes),
            steps=search_steps,
            seconds=time.perf_counter() - t0,
            multiplier=sum(final) / len(final),
            binding=all(m > 0 for m in final),
        )

    points: list[SparsityPoint] = []
    for target in targets:
        points.append(point(target))
        if not points[-1].binding:  # a looser target binds even less: none can be chosen
            break
    chosen = choose(points, tolerance)
    for _ in range(refine):
        larger = [p for p in points if p.target > chosen.target]
        if not larger:
            break
        mid = math.sqrt(chosen.target * larger[0].target)
        points = sorted([*points, point(mid)], key=lambda p: p.target)
        chosen = choose(points, tolerance)
    return SparsitySelection(
        target=chosen.target,
        budget=chosen.budget,
        points=points,
        seeds=seeds,
        tolerance=tolerance,
        d_sae=cfg.d_sae,
        training_steps=cfg.training_steps,
        seconds=time.perf_counter() - start,
    )


def choose(points: Sequence[SparsityPoint], tolerance: float) -> SparsityPoint:
    """The loosest point of the stable plateau among targets where the constraint binds.

    Starting at the most seed-stable binding point, walk to larger targets while the next
    point binds and its agreement stays within ``tolerance`` of the best. A point whose
    multiplier ended at zero is not shaped by the constraint (its code is as free as the
    unconstrained one's, however well seeds happen to agree), so it ends the walk.
    Reconstruction is the tie-break: within the plateau the loosest target reconstructs best.
    If no point binds, the tightest one is returned.
    """
    ordered = sorted(points, key=lambda p: p.target)
    binding = [j for j, p in enumerate(ordered) if p.binding]
    if not binding:
        return ordered[0]
    best = max(ordered[j].seed_agreement for j in binding)
    # The most stable binding point; among equals, the best reconstruction.
    i = max(binding, key=lambda j: (ordered[j].seed_agreement, -ordered[j].reconstruction))
    while (
        i + 1 < len(ordered)
        and ordered[i + 1].binding
        and ordered[i + 1].seed_agreement >= best - tolerance
    ):
        i += 1
    return ordered[i]


@torch.no_grad()
def unexplained_fraction(sae: SSAE, shifts: Float[Tensor, "n d_in"]) -> float:
    """``sum ||decode(encode(x)) - x||^2 / sum ||x||^2`` over the shifts."""
    x = shifts.to(sae.W_dec.device, sae.W_dec.dtype)
    err = (sae(x) - x).pow(2).sum()
    return float(err / x.pow(2).sum().clamp(min=1e-30))


def _search_config(cfg: TrainingSSAEConfig, steps: int) -> TrainingSSAEConfig:
    """``cfg`` shortened to ``steps``, with the multiplier's learning rate (and any target
    ramp) scaled so the constraint is reached in proportionally fewer steps."""
    ratio = cfg.training_steps / steps
    return dataclasses.replace(
        cfg,
        training_steps=steps,
        multiplier_lr_ratio=cfg.multiplier_lr_ratio * ratio,
        sparsity_target_ramp_steps=round(cfg.sparsity_target_ramp_steps / ratio),
    )
