"""The steering directions whose effects SAE-TS measures: decoder rows, mixes and random ones.

The effect model ``y(s) = s W + b`` is fitted on many directions of three kinds (Chalnev,
Siu & Conmy 2024): single SAE decoder rows (their features first of all), random positive
mixes of a few decoder rows, and random Gaussian directions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

__all__ = ["effect_directions"]


def effect_directions(
    sae: SAE,
    *,
    n_decoder: int,
    n_mix: int = 0,
    n_random: int = 0,
    first: Sequence[int] = (),
    generator: torch.Generator,
) -> tuple[Float[Tensor, "n d_in"], list[int]]:
    """Unit directions: decoder rows, then mixes of 2-4 rows, then Gaussian directions.

    The decoder rows are those of the features ``first`` (in that order) and then of
    random other features, ``max(n_decoder, len(first))`` in all. Each of the ``n_mix``
    mixes adds 2-4 random unit decoder rows with uniform random weights in ``[0, 1)``; the
    ``n_random`` Gaussian directions are isotropic. Every row is normalised to unit norm.
    Every random draw comes from ``generator`` (the global RNG is untouched), in this
    order: a permutation of the features, then per mix its size, its rows and its weights,
    then the Gaussian directions.

    Returns:
        ``(directions, features)``: ``(n, d_in)`` float32 directions on the CPU, and the
        feature of each decoder-row direction (the first ``len(features)`` rows).
    """
    d_sae = int(sae.W_dec.shape[0])
    for name, value in (("n_decoder", n_decoder), ("n_mix", n_mix), ("n_random", n_random)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
    first = [int(f) for f in first]
    bad = [f for f in first if not 0 <= f < d_sae]
    if bad:
        raise ValueError(f"Features {bad} are out of range for an SAE of {d_sae} features.")
    others = [int(f) for f in torch.randperm(d_sae, generator=generator) if int(f) not in first]
    features = list(dict.fromkeys(first + others))[: max(n_decoder, len(first))]
    weights = sae.W_dec.detach().float().cpu()
    decoder = weights / weights.norm(dim=1, keepdim=True)
    mixes = torch.zeros(n_mix, decoder.shape[1])
    for i in range(n_mix):
        k = int(torch.randint(2, 5, (1,), generator=generator))
        picked = torch.randperm(d_sae, generator=generator)[:k]
        mixes[i] = torch.rand(k, generator=generator) @ decoder[picked]
    randoms = torch.randn(n_random, decoder.shape[1], generator=generator)
    directions = torch.cat([decoder[features], mixes, randoms])
    if directions.shape[0] == 0:
        raise ValueError("No directions: set n_decoder, n_mix or n_random above 0.")
    return directions / directions.norm(dim=1, keepdim=True), features
