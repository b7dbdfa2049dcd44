"""SAE-TS step 4: steering vectors aimed at a weighted set of SAE features.

A target ``t`` is a ``{feature: weight}`` dict, a list of features (weight 1 each) or a dense
``(d_sae,)`` tensor; a negative weight asks for a decrease.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

from ssae_lens.sae_ts.effect_model import EffectModel
from ssae_lens.steering import SteeringVector

__all__ = [
    "Target",
    "decoder_row_vector",
    "pinv_vector",
    "rotation_vector",
    "sae_ts_vector",
    "target_tensor",
]

Target = Mapping[int, float] | Sequence[int] | Tensor


def sae_ts_vector(
    effect_model: EffectModel,
    target: Target,
    *,
    bias_weight: float = 1.0,
    hook_name: str | None = None,
) -> SteeringVector:
    """The SAE-TS vector ``s = normalise(normalise(W t) - bias_weight * normalise(W b))``.

    ``t`` is the target: a ``{feature: weight}`` dict, a list of features (weight 1 each) or
    a dense ``(d_sae,)`` tensor. ``W t`` is the direction whose predicted effect rises most
    along ``t``; subtracting the normalised ``W b`` removes the direction of the effect all
    vectors share (skipped when ``W b = 0``).
    """
    t = target_tensor(target, effect_model.d_sae)
    along = _unit(effect_model.W @ t, "W t (the target has no predicted effect direction)")
    shared = effect_model.W @ effect_model.b
    if float(shared.norm()) > 0:
        along = along - bias_weight * shared / shared.norm()
    direction = _unit(along, "normalise(W t) - bias_weight * normalise(W b)")
    return _targeted(direction, effect_model, t, "sae-ts", hook_name, bias_weight=bias_weight)


def pinv_vector(
    effect_model: EffectModel, target: Target, *, hook_name: str | None = None
) -> SteeringVector:
    """``s = normalise(t W^+)``: the least-norm direction whose predicted ``s W`` equals ``t``.

    The bias ``b`` is ignored: the target fixes the shape of the effect, not its size.
    """
    t = target_tensor(target, effect_model.d_sae)
    direction = _unit(t @ torch.linalg.pinv(effect_model.W), "t W^+")
    return _targeted(direction, effect_model, t, "pinv", hook_name)


def rotation_vector(
    effect_model: EffectModel,
    sae: SAE,
    target: Target,
    *,
    fitted_features: Sequence[int] | None = None,
    hook_name: str | None = None,
) -> SteeringVector:
    """SAE-TS through a rotation of the SAE decoder; reaches features without effect data.

    Construction: ``D`` are the SAE decoder rows and ``U`` the columns of ``W`` transposed
    (``(d_sae, d_model)``), both normalised to unit rows. The orthogonal ``R`` minimising
    ``|D_F R - U_F|`` over the fitted features ``F`` (default: every feature with a non-zero
    column of ``W``) is ``R = P Q^T`` from the SVD ``D_F^T U_F = P S Q^T`` (orthogonal
    Procrustes). The vector is ``s = normalise((t D) R)``: the target's decoder combination
    moved to where the effect model says it acts. Needs ``|F| >= d_model`` for a unique ``R``.
    """
    t = target_tensor(target, effect_model.d_sae)
    decoder = sae.W_dec.detach().float().cpu()
    if decoder.shape != (effect_model.d_sae, effect_model.d_model):
        raise ValueError(
            f"The SAE decoder {tuple(decoder.shape)} does not match the effect model "
            f"(d_sae={effect_model.d_sae}, d_model={effect_model.d_model}): use the SAE "
            "whose features the effects were measured with."
        )
    columns = effect_model.W.T
    if fitted_features is None:
        fitted = torch.nonzero(columns.norm(dim=1) > 0).flatten()
    else:
        fitted = torch.as_tensor(list(fitted_features), dtype=torch.long)
    d_f = decoder[fitted] / decoder[fitted].norm(dim=1, keepdim=True).clamp_min(1e-12)
    u_f = columns[fitted] / columns[fitted].norm(dim=1, keepdim=True).clamp_min(1e-12)
    p, _, qh = torch.linalg.svd(d_f.T @ u_f)
    rotation = p @ qh
    direction = _unit((t @ decoder) @ rotation, "(t D) R")
    return _targeted(direction, effect_model, t, "rotation", hook_name, fitted_features=len(fitted))


def decoder_row_vector(sae: SAE, feature: int, *, hook_name: str | None = None) -> SteeringVector:
    """Baseline: the unit-norm decoder row of ``feature`` (``SteeringVector.from_sae``)."""
    vector = SteeringVector.from_sae(sae, feature, hook_name=hook_name).normalize()
    vector.provenance.update(features=[vector.provenance["feature_index"]], weights=[1.0])
    return vector


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


def _unit(v: Tensor, what: str) -> Tensor:
    norm = float(v.norm())
    if norm == 0 or not math.isfinite(norm):
        raise ValueError(f"Cannot normalise {what}: its norm is {norm}.")
    return v / norm
