"""Build steering vectors from contrasting prompts or from paired activation shifts.

Scale convention: vectors keep the magnitude of the shift they estimate unless
``normalize=True``. A raw vector at ``scale=1`` moves activations by the average
difference it was built from, so the scale reads as a multiplier of that shift. A
normalised vector has unit norm and ``default_scale`` set to the magnitude that
reproduces the average shift, so ``steer(model, v)`` without a scale does the same as
the raw vector; ``provenance["raw_norm"]`` always records the unnormalised norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ssae_lens._core.backend import Model
from ssae_lens._core.hooks import check_steerable_hook
from ssae_lens.activations import harvest_activations
from ssae_lens.steering.vector import SteeringVector

ShiftsOrPairs = Float[Tensor, "n d"] | tuple[Float[Tensor, "n d"], Float[Tensor, "n d"]]


def caa_vector(
    model: Model,
    positive_prompts: Sequence[str],
    negative_prompts: Sequence[str],
    hook_name: str,
    position: Literal["last", "mean"] = "last",
    *,
    normalize: bool = False,
    batch_size: int = 16,
    **harvest_options: Any,
) -> SteeringVector:
    """Contrastive activation addition: mean activation on positive minus negative prompts.

    Activations are read at ``hook_name`` at each prompt's last real token
    (``position="last"``) or averaged over its real tokens (``"mean"``), by
    :func:`ssae_lens.activations.harvest_activations` (batched, padding-aware; BOS is
    left out of the mean; ``harvest_options`` such as ``cache_dir`` are passed on).

    Returns:
        The raw mean difference ``Float[Tensor, "d"]`` (or its unit vector with
        ``normalize=True``; see the module docstring for the scale convention), with the
        prompt counts, read position and raw norm in ``provenance``.
    """
    check_steerable_hook(model, hook_name)
    if position not in ("last", "mean"):
        raise ValueError(f"position must be 'last' or 'mean', got {position!r}.")
    for name, prompts in (("positive", positive_prompts), ("negative", negative_prompts)):
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"{name}_prompts must be a non-empty list of strings.")
    positive = harvest_activations(
        model,
        list(positive_prompts),
        hook_name,
        position=position,
        batch_size=batch_size,
        **harvest_options,
    )
    negative = harvest_activations(
        model,
        list(negative_prompts),
        hook_name,
        position=position,
        batch_size=batch_size,
        **harvest_options,
    )
    difference = positive.double().mean(0) - negative.double().mean(0)
    provenance = {
        "n_positive": len(positive_prompts),
        "n_negative": len(negative_prompts),
        "position": position,
    }
    return _shift_vector(
        difference, hook_name, "caa", normalize, getattr(model.cfg, "model_name", None), provenance
    )


def mean_shift_vector(
    shifts_or_pairs: ShiftsOrPairs,
    hook_name: str,
    *,
    normalize: bool = False,
    model_name: str | None = None,
) -> SteeringVector:
    """Difference of means of paired activations: the mean of the shifts ``z~ - z``.

    Args:
        shifts_or_pairs: SSAE-ready shifts ``(n, d)``, or a pair ``(z, z_tilde)`` of
            ``(n, d)`` activations (the shift is ``z_tilde - z``).
        hook_name: the hook point the activations were read at.
        normalize: return a unit vector (see the module docstring).
        model_name: the model the activations came from.
    """
    shifts = _as_shifts(shifts_or_pairs)
    provenance = {"n_pairs": shifts.shape[0]}
    return _shift_vector(shifts.mean(0), hook_name, "mean_shift", normalize, model_name, provenance)


def pca_vector(
    shifts_or_pairs: ShiftsOrPairs,
    hook_name: str,
    k: int = 1,
    *,
    center: bool = False,
    model_name: str | None = None,
) -> SteeringVector | list[SteeringVector]:
    """Leading principal direction(s) of paired activation shifts, as unit vectors.

    Without centring these are the top right singular vectors of the shift matrix: the
    directions with the largest mean squared projection of the shifts. Centring
    (``center=True``, ordinary PCA) removes the mean shift first, which discards a
    concept that every pair shifts the same way, so it is off by default. Each sign is
    chosen so the vector points along the mean shift; ``default_scale`` is the mean
    projection of the shifts on it, and ``provenance`` records the explained variance.

    Returns:
        One :class:`SteeringVector` for ``k=1``, else a list of ``k`` ordered by
        explained variance.
    """
    shifts = _as_shifts(shifts_or_pairs)
    n, d = shifts.shape
    if not 1 <= k <= min(n, d):
        raise ValueError(f"k must be between 1 and min(n, d) = {min(n, d)}, got {k}.")
    mean_shift = shifts.mean(0)
    data = shifts - mean_shift if center else shifts
    _, singular_values, right = torch.linalg.svd(data, full_matrices=False)
    explained = singular_values**2 / (singular_values**2).sum().clamp_min(1e-300)
    vectors = []
    for i in range(k):
        component = right[i]
        if component @ mean_shift < 0:
            component = -component
        vectors.append(
            SteeringVector(
                component.float(),
                hook_name,
                model_name=model_name,
                method="pca",
                normalized=True,
                default_scale=float(component @ mean_shift),
                provenance={
                    "n_pairs": n,
                    "component": i,
                    "centered": center,
                    "explained_variance_ratio": float(explained[i]),
                    "rms_projection": float((shifts @ component).pow(2).mean().sqrt()),
                },
            )
        )
    return vectors[0] if k == 1 else vectors


def _shift_vector(
    difference: Tensor,
    hook_name: str,
    method: str,
    normalize: bool,
    model_name: str | None,
    provenance: dict[str, Any],
) -> SteeringVector:
    raw_norm = float(difference.norm())
    if normalize and raw_norm == 0:
        raise ValueError("The mean difference is exactly zero; it has no direction.")
    direction = difference / raw_norm if normalize else difference
    return SteeringVector(
        direction.float(),
        hook_name,
        model_name=model_name,
        method=method,
        normalized=normalize,
        default_scale=raw_norm if normalize else 1.0,
        provenance={**provenance, "raw_norm": raw_norm},
    )


def _as_shifts(shifts_or_pairs: ShiftsOrPairs) -> Tensor:
    if isinstance(shifts_or_pairs, (tuple, list)):
        if len(shifts_or_pairs) != 2:
            raise ValueError("Pass shifts (n, d) or a pair (z, z_tilde) of (n, d) tensors.")
        z, z_tilde = (torch.as_tensor(t) for t in shifts_or_pairs)
        if z.shape != z_tilde.shape:
            raise ValueError(
                f"Paired activations must have the same shape, got {tuple(z.shape)} and "
                f"{tuple(z_tilde.shape)}."
            )
        shifts = z_tilde - z
    else:
        shifts = torch.as_tensor(shifts_or_pairs)
    if shifts.ndim != 2 or shifts.shape[0] == 0:
        raise ValueError(f"Shifts must be a non-empty (n, d) tensor, got {tuple(shifts.shape)}.")
    if not torch.isfinite(shifts).all():
        raise ValueError("Shifts contain NaN or inf.")
    return shifts.detach().double()
