"""SAE-TS step 4: steering vectors aimed at a weighted set of SAE features.

A target ``t`` is a ``{feature: weight}`` dict (the reference's French target is
``{8392: 0.5, 15769: 0.5}``), a list of features (weight 1 each), one feature, or a dense
``(d_sae,)`` tensor; a negative weight asks for a decrease. Every solve and the side-effect
ratio take the same targets (:func:`target_tensor`).

Three solves of the linear effect model ``y(s) = s W + b``, and the decoder-row baseline:

- :func:`sae_ts_vector`: ``normalise(normalise(W t) - normalise(W b))``, the paper's method;
- :func:`pinv_vector`: ``normalise((t / |t| - b) W^+)``, the pseudo-inverse variant;
- :func:`rotation_vector`: the target's decoder rows rotated onto their effect directions,
  for features without effect data;
- :func:`decoder_row_vector`: ``normalise(t D)``, the SAE's own direction.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

from ssae_lens.sae_ts.effect_model import EffectModel
from ssae_lens.steering import SteeringVector

__all__ = [
    "Target",
    "decoder_rotation",
    "decoder_row_vector",
    "pinv_vector",
    "rotation_vector",
    "sae_ts_vector",
    "target_tensor",
]

Target = Mapping[int, float] | Sequence[int] | int | Tensor


def sae_ts_vector(
    effect_model: EffectModel,
    target: Target,
    *,
    bias_weight: float = 1.0,
    hook_name: str | None = None,
) -> SteeringVector:
    """The SAE-TS vector ``s = normalise(normalise(W t) - bias_weight * normalise(W b))``.

    ``W t`` is the unit direction whose predicted effect ``s W`` rises most along ``t``
    (the gradient of ``t . (s W + b)``); subtracting the normalised ``W b`` removes the
    direction of the effect all vectors share (skipped when ``W b = 0``).
    """
    t = target_tensor(target, effect_model.d_sae)
    along = _unit(effect_model.W @ t, "W t (the target has no predicted effect direction)")
    corrected = _minus_shared(along, effect_model, bias_weight)
    direction = _unit(corrected, "normalise(W t) - bias_weight * normalise(W b)")
    return _targeted(direction, effect_model, t, "sae-ts", hook_name, bias_weight=bias_weight)


def pinv_vector(
    effect_model: EffectModel,
    target: Target,
    *,
    bias_weight: float = 1.0,
    hook_name: str | None = None,
) -> SteeringVector:
    """The reference's pseudo-inverse solve ``s = normalise((t / |t| - bias_weight * b) W^+)``.

    ``s* = (t / |t| - b) W^+`` is the least-norm input whose predicted effect ``s* W + b`` is
    closest to the unit target ``t / |t|`` (exactly equal when ``W`` has full column rank,
    ``d_sae <= d_model``); the vector is its direction and ``provenance["solve_norm"]`` is
    ``|s*|``, the scale at which the linear model predicts that effect. Since the target is
    a unit vector, ``b`` weighs as much as it does in the measured effects; ``bias_weight``
    scales it (``0`` gives ``normalise(t W^+)``, the solve that ignores the shared effect).
    """
    t = target_tensor(target, effect_model.d_sae)
    wanted = t / t.norm() - bias_weight * effect_model.b
    solved = wanted @ torch.linalg.pinv(effect_model.W)
    direction = _unit(solved, "(t / |t| - bias_weight * b) W^+")
    return _targeted(
        direction,
        effect_model,
        t,
        "pinv",
        hook_name,
        bias_weight=bias_weight,
        solve_norm=float(solved.norm()),
    )


def decoder_rotation(
    effect_model: EffectModel, sae: SAE, fitted_features: Sequence[int] | None = None
) -> Float[Tensor, "d_model d_model"]:
    """The rotation ``R`` that carries SAE decoder rows onto their effect directions.

    Rows are vectors here: ``D`` holds the unit decoder rows ``d_j`` of ``sae``
    (``(d_sae, d_model)``) and ``U`` the unit columns ``u_j`` of ``W`` as rows. ``R`` is the
    orthogonal matrix minimising ``|D_F R - U_F|_F`` over the fitted features ``F`` (default:
    every feature whose column of ``W`` is non-zero), so ``d_j R ~ u_j``: orthogonal
    Procrustes, ``R = P Q^T`` from the SVD ``D_F^T U_F = P S Q^T``. Unique when
    ``|F| >= d_model`` and ``D_F^T U_F`` has full rank.

    The reference implementation takes the SVD of ``U_F^T D_F = (D_F^T U_F)^T``, so its
    matrix is this ``R^T``, and applies ``R_ref.T @ v`` to a decoder combination ``v`` (a
    column vector): in row form ``v R_ref = v R^T``, which maps effect directions back onto
    decoder rows, the inverse of the intended map. The map from decoder rows to effects is
    ``v R`` here, ``R_ref @ v`` in its convention.
    """
    decoder = sae.W_dec.detach().float().cpu()
    if decoder.shape != (effect_model.d_sae, effect_model.d_model):
        raise ValueError(
            f"The SAE decoder {tuple(decoder.shape)} does not match the effect model "
            f"(d_sae={effect_model.d_sae}, d_model={effect_model.d_model}): use the SAE "
            "whose features the effects were measured with."
        )
    columns = effect_model.W.T
    fitted = _fitted(effect_model, fitted_features)
    if len(fitted) < effect_model.d_model:
        warnings.warn(
            f"The rotation is fitted on {len(fitted)} features, fewer than d_model = "
            f"{effect_model.d_model}: it is not unique (measure the effects of more decoder "
            "rows).",
            UserWarning,
            stacklevel=2,
        )
    d_f = decoder[fitted] / decoder[fitted].norm(dim=1, keepdim=True).clamp_min(1e-12)
    u_f = columns[fitted] / columns[fitted].norm(dim=1, keepdim=True).clamp_min(1e-12)
    p, _, qh = torch.linalg.svd(d_f.T @ u_f)
    return p @ qh


def rotation_vector(
    effect_model: EffectModel,
    sae: SAE,
    target: Target,
    *,
    bias_weight: float = 1.0,
    fitted_features: Sequence[int] | None = None,
    hook_name: str | None = None,
) -> SteeringVector:
    """SAE-TS through a rotation of the SAE decoder; reaches features without effect data.

    ``s = normalise(normalise((t D) R) - bias_weight * normalise(W b))``: the target's decoder
    combination ``t D`` (raw decoder rows weighted by ``t``) moved by
    :func:`decoder_rotation` to where the effect model says decoder rows act, then corrected
    for the shared effect as in :func:`sae_ts_vector` (as the reference does). ``R`` is
    fitted on the features with effect data, so any feature of the SAE can be a target.
    """
    t = target_tensor(target, effect_model.d_sae)
    rotation = decoder_rotation(effect_model, sae, fitted_features)
    moved = _unit((t @ sae.W_dec.detach().float().cpu()) @ rotation, "(t D) R")
    direction = _unit(_minus_shared(moved, effect_model, bias_weight), "the corrected rotation")
    return _targeted(
        direction,
        effect_model,
        t,
        "rotation",
        hook_name,
        bias_weight=bias_weight,
        fitted_features=len(_fitted(effect_model, fitted_features)),
    )


def decoder_row_vector(sae: SAE, target: Target, *, hook_name: str | None = None) -> SteeringVector:
    """Baseline: the SAE's own direction for the target, ``normalise(t D)``.

    One feature gives its unit decoder row (``SteeringVector.from_sae``); a weighted set
    gives the normalised sum of its decoder rows times their weights, as the reference's
    feature steering does.
    """
    t = target_tensor(target, sae.W_dec.shape[0])
    features = torch.nonzero(t).flatten()
    row = SteeringVector.from_sae(sae, int(features[0]), hook_name=hook_name)
    direction = _unit(t @ sae.W_dec.detach().float().cpu(), "t D (the weighted decoder rows)")
    provenance = dict(row.provenance, features=features.tolist(), weights=t[features].tolist())
    if len(features) > 1:
        del provenance["feature_index"], provenance["decoder_norm"]
    return replace(row, direction=direction, normalized=True, provenance=provenance)


def _targeted(
    direction: Tensor,
    effect_model: EffectModel,
    t: Tensor,
    variant: str,
    hook_name: str | None,
    **extra: Any,
) -> SteeringVector:
    hook = hook_name or effect_model.hook_name
    if hook is None:
        raise ValueError(
            "The effect model has no hook_name: pass hook_name=... (the hook point its "
            "directions were measured at)."
        )
    features = torch.nonzero(t).flatten()
    provenance = dict(
        variant=variant,
        features=features.tolist(),
        weights=t[features].tolist(),
        effect_model=effect_model.provenance,
        **extra,
    )
    return SteeringVector(
        direction,
        hook,
        model_name=effect_model.model_name,
        method="sae-ts",
        normalized=True,
        provenance=provenance,
    )


def target_tensor(target: Target, d_sae: int) -> Float[Tensor, " d_sae"]:
    """The dense ``(d_sae,)`` weights of a target (see the module docstring)."""
    if isinstance(target, numbers.Integral) or (isinstance(target, Tensor) and target.ndim == 0):
        target = [int(target)]  # one feature (a Python, NumPy or 0-d tensor integer)
    if isinstance(target, Tensor):
        t = target.detach().float().cpu().flatten()
        if t.shape[0] != d_sae:
            raise ValueError(f"A dense target needs shape ({d_sae},), got {tuple(target.shape)}.")
    else:
        items = target.items() if isinstance(target, Mapping) else ((f, 1.0) for f in target)
        t = torch.zeros(d_sae)
        for feature, weight in items:
            if not -d_sae <= int(feature) < d_sae:
                raise IndexError(f"Target feature {feature} out of range for d_sae={d_sae}.")
            t[int(feature)] = float(weight)
    if float(t.abs().sum()) == 0:
        raise ValueError("The target is empty (all weights zero): give at least one feature.")
    return t


def _fitted(effect_model: EffectModel, fitted_features: Sequence[int] | None) -> Tensor:
    """The given features, or every feature whose column of ``W`` is non-zero."""
    if fitted_features is None:
        return torch.nonzero(effect_model.W.norm(dim=0) > 0).flatten()
    return torch.as_tensor(list(fitted_features), dtype=torch.long)


def _minus_shared(along: Tensor, effect_model: EffectModel, bias_weight: float) -> Tensor:
    """``along - bias_weight * normalise(W b)`` (``along`` itself when ``W b = 0``)."""
    shared = effect_model.W @ effect_model.b
    if float(shared.norm()) == 0:
        return along
    return along - bias_weight * shared / shared.norm()


def _unit(v: Tensor, what: str) -> Tensor:
    norm = float(v.norm())
    if norm == 0 or not math.isfinite(norm):
        raise ValueError(f"Cannot normalise {what}: its norm is {norm}.")
    return v / norm
