"""Synthetic shifts with known concept changes: ``delta = A dc (+ noise)``.

Each pair changes between 1 and ``max_changes`` of ``n_concepts`` concepts
(chosen uniformly), with signed values, and the shift is a fixed linear
mixing ``A`` (``d x n``, Gaussian, unit-norm columns) of the change, optionally
bent by a nonlinearity and corrupted by noise. Concept pairs can be made to
change together (``correlated_pairs``), which breaks the independence ICA
relies on but not the sparsity the SSAE relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

Values = Literal["binary", "uniform", "normal"]
Nonlinearity = Literal["none", "tanh", "cubic"]


@dataclass
class SyntheticShifts:
    """Shifts with their ground truth."""

    shifts: Float[Tensor, "n d"]
    concept_changes: Float[Tensor, "n n_concepts"]
    mixing: Float[Tensor, "d n_concepts"]


def _sample_values(kind: Values, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    sign = torch.randint(0, 2, shape, generator=gen).float() * 2 - 1
    if kind == "binary":
        return sign
    if kind == "uniform":
        return sign * (0.5 + torch.rand(shape, generator=gen))
    if kind == "normal":
        return torch.randn(shape, generator=gen)
    raise ValueError(f"values must be 'binary', 'uniform' or 'normal', got {kind!r}.")


def make_synthetic_shifts(
    n_pairs: int = 20_000,
    n_concepts: int = 9,
    max_changes: int = 3,
    d: int = 64,
    *,
    values: Values = "uniform",
    noise: float = 0.0,
    nonlinearity: Nonlinearity = "none",
    correlated_pairs: int = 0,
    correlation: float = 0.8,
    seed: int = 0,
) -> SyntheticShifts:
    """Sample synthetic shifts.

    Args:
        n_pairs: number of shifts.
        n_concepts: number of concepts ``n``; ``d >= n`` keeps ``A`` injective.
        max_changes: each pair changes ``1..max_changes`` concepts before correlated
            partners join (each correlated pair can add one more).
        d: width of the shifts.
        values: distribution of a change: ``binary`` (+-1), ``uniform`` (sign times
            U(0.5, 1.5)) or ``normal``.
        noise: standard deviation of isotropic Gaussian noise, relative to the
            mean per-coordinate scale of the clean shifts.
        nonlinearity: ``none``, ``tanh`` (elementwise ``tanh`` of the clean shift,
            rescaled) or ``cubic`` (``x + 0.1 x^3``).
        correlated_pairs: concept pairs (0, 1), (2, 3), ... that change together:
            when one of a pair changes alone, the other changes too with
            probability ``correlation``, with the same sign and its own magnitude.
        correlation: probability of copying within a correlated pair.
        seed: seeds everything (mixing and samples).
    """
    if n_concepts < 1 or not 1 <= max_changes <= n_concepts:
        raise ValueError(f"need 1 <= max_changes ({max_changes}) <= n_concepts ({n_concepts}).")
    if 2 * correlated_pairs > n_concepts:
        raise ValueError(
            f"{correlated_pairs} correlated pairs need >= {2 * correlated_pairs} concepts."
        )
    if d < n_concepts:
        raise ValueError(f"d={d} < n_concepts={n_concepts}: the mixing would not be injective.")
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, n_concepts, generator=gen)
    mixing /= mixing.norm(dim=0, keepdim=True)

    n_changed = torch.randint(1, max_changes + 1, (n_pairs, 1), generator=gen)
    order = torch.rand(n_pairs, n_concepts, generator=gen).argsort(dim=1).argsort(dim=1)
    mask = order < n_changed
    values_all = _sample_values(values, (n_pairs, n_concepts), gen)
    dc = values_all * mask
    for p in range(correlated_pairs):
        i, j = 2 * p, 2 * p + 1
        copy = torch.rand(n_pairs, generator=gen) < correlation
        only_i = mask[:, i] & ~mask[:, j] & copy
        only_j = mask[:, j] & ~mask[:, i] & copy
        # The partner changes too, with the same sign and its own magnitude.
        dc[only_i, j] = dc[only_i, i].sign() * values_all[only_i, j].abs()
        dc[only_j, i] = dc[only_j, j].sign() * values_all[only_j, i].abs()

    shifts = dc @ mixing.T
    if nonlinearity == "tanh":
        scale = shifts.abs().mean()
        shifts = torch.tanh(shifts / scale) * scale
    elif nonlinearity == "cubic":
        shifts = shifts + 0.1 * shifts.pow(3)
    elif nonlinearity != "none":
        raise ValueError(f"nonlinearity must be 'none', 'tanh' or 'cubic', got {nonlinearity!r}.")
    if noise > 0:
        rms = shifts.pow(2).mean().sqrt()
        shifts = shifts + noise * rms * torch.randn(shifts.shape, generator=gen)
    return SyntheticShifts(shifts=shifts, concept_changes=dc, mixing=mixing)
