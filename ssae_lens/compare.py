"""Fit concept directions with the SSAE and its baselines, and score every method the same way.

Every fit turns a :class:`~ssae_lens.shift_data.ShiftData` into a :class:`Fit`: unit directions
``(k, d)``, the codes of the held-out shifts and, per reference concept, its matched,
sign-oriented direction. The methods:

- :func:`fit_ssae`: an SSAE trained on the training shifts (or loaded from a cache); with
  :func:`aff_config`, the same network without the sparsity constraint (the paper's "aff");
- :func:`fit_pca`, :func:`fit_ica`: PCA and FastICA of the training shifts (scikit-learn);
- :func:`fit_mean_diff`: the mean training shift, one direction shared by every concept;
- :func:`fit_supervised`: the reference directions themselves (an upper reference);
- :func:`fit_activation_sae`: a SAELens SAE trained on single activations (e.g.
  :func:`~ssae_lens.saes.reference.train_reference_sae`); its code of a shift is
  ``encode(z~) - encode(z)`` and its directions are decoder rows.

:func:`evaluate_fit` scores any fit the same way: concept alignment (:mod:`ssae_lens.metrics`),
held-out steering accuracy with :func:`pair_directions`, label MCC, and the mean cosine of the
steering direction with the activation it is added to. The demo, ``ssae-lens evaluate``
(:func:`evaluate_ssaes`) and the paper study (``benchmarks/paper.py``) all report through it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

from ssae_lens.metrics import (
    centred_steering_accuracy,
    concept_alignment,
    label_mcc,
    oriented_match,
    seed_agreement_mcc,
    shared_concept_alignment,
    steering_accuracy,
)
from ssae_lens.shift_data import ShiftData
from ssae_lens.ssae.model import SSAE, TrainingSSAEConfig
from ssae_lens.ssae.training import load_or_train_ssae

__all__ = [
    "Fit",
    "FitScores",
    "aff_config",
    "calibrated_target",
    "evaluate_fit",
    "evaluate_ssaes",
    "fit_activation_sae",
    "fit_directions",
    "fit_from_ssae",
    "fit_ica",
    "fit_mean_diff",
    "fit_pca",
    "fit_ssae",
    "fit_supervised",
    "pair_directions",
]


@dataclass
class Fit:
    """A fitted method: its unit directions, held-out codes and the direction of each concept."""

    directions: Float[Tensor, "k d"]
    codes_te: Float[Tensor, "n_test k"]
    matched: Float[Tensor, "c d"]  # per concept: its matched direction, sign-oriented (or 0)
    order: list[int]  # per concept: the index of its direction (-1: none)
    alignment: float  # concept_alignment, or shared_concept_alignment if ``shared``
    shared: bool = False  # one direction steers every concept (mean-diff)
    sae: SAE | None = None  # the fitted dictionary, for SSAE and SAE fits


@dataclass
class FitScores:
    """The scores of one fit on the held-out split (see :func:`evaluate_fit`)."""

    alignment: float
    accuracy: float | None  # None without activations (synthetic shifts)
    centred_accuracy: float | None  # centred_steering_accuracy; None without activations
    label_mcc: float | None  # None if some label never varies
    cos_vz: float | None  # mean cos(steering direction, z); None without activations


def fit_directions(
    directions: Float[Tensor, "k d"],
    codes_te: Float[Tensor, "n_test k"],
    reference: Float[Tensor, "c d"],
    sae: SAE | None = None,
) -> Fit:
    """A fit from any directions: normalised, matched to the reference concepts (Hungarian on
    |cosine|) and oriented to agree with them; alignment is :func:`concept_alignment`."""
    unit = directions.detach().float().cpu()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    matched, order, _ = oriented_match(unit, reference)
    return Fit(
        unit,
        codes_te.detach().float().cpu(),
        matched,
        order,
        concept_alignment(unit, reference),
        sae=sae,
    )


def aff_config(cfg: TrainingSSAEConfig) -> TrainingSSAEConfig:
    """``cfg`` without the sparsity constraint: the unconstrained autoencoder ("aff").

    ``sparsity_target`` is reset to its default (it has no effect here), so one aff per width
    and seed is trained and cached whatever target the SSAE uses.
    """
    default = next(f.default for f in dataclasses.fields(cfg) if f.name == "sparsity_target")
    return dataclasses.replace(cfg, sparsity="none", sparsity_target=default)


def fit_ssae(
    data: ShiftData,
    cfg: TrainingSSAEConfig,
    *,
    seed: int,
    cache_dir: str | os.PathLike,
    progress: bool = False,
) -> Fit:
    """An SSAE trained on ``data.shifts_tr`` with ``cfg`` (loaded instead if ``cache_dir``
    holds it already), as a fit (:func:`fit_from_ssae`)."""
    sae = load_or_train_ssae(data.shifts_tr, cfg, seed=seed, cache_dir=cache_dir, progress=progress)
    return fit_from_ssae(sae, data)


def fit_from_ssae(sae: SSAE, data: ShiftData) -> Fit:
    """A trained SSAE as a fit: its unit decoder rows in activation space, and its codes of
    the held-out shifts."""
    with torch.no_grad():
        codes = sae.encode(data.shifts_te.to(sae.device))
    return fit_directions(sae.steering_directions(), codes, data.reference, sae=sae)


def calibrated_target(
    data: ShiftData, cfg: TrainingSSAEConfig, *, seed: int, cache_dir: str | os.PathLike
) -> float:
    """A sparsity target for ``cfg``: (mean |code| of the unconstrained autoencoder of the same
    width and seed) x (expected fraction of active code units: concepts changed per pair /
    ``d_sae``, at most 1).

    The only label information used is one scalar, how many concepts a pair changes on
    average (known by construction for the built-in datasets: e.g. 4 of 29 one-hot values for
    a categorical pair that changes two factors).
    """
    aff = load_or_train_ssae(
        data.shifts_tr, aff_config(cfg), seed=seed, cache_dir=cache_dir, progress=False
    )
    with torch.no_grad():
        scale = float(aff.encode(data.shifts_tr.to(aff.device)).abs().mean())
    active = float((data.labels_tr != 0).sum(-1).float().mean()) / cfg.d_sae
    return scale * min(active, 1.0)


def _decomposition() -> ModuleType:
    try:
        from sklearn import decomposition
    except ImportError:
        raise ImportError(
            "The PCA and FastICA baselines need scikit-learn: pip install scikit-learn "
            "(or pip install 'ssae-lens[bench]')."
        ) from None
    return decomposition


def fit_pca(data: ShiftData, k: int) -> Fit:
    """The top ``k`` principal components of the training shifts."""
    pca = _decomposition().PCA(n_components=k).fit(data.shifts_tr.double().cpu().numpy())
    codes = torch.from_numpy(pca.transform(data.shifts_te.double().cpu().numpy()))
    return fit_directions(torch.from_numpy(pca.components_), codes, data.reference)


def fit_ica(data: ShiftData, k: int, seed: int) -> Fit:
    """FastICA with ``k`` components of the training shifts; directions are mixing columns."""
    ica = _decomposition().FastICA(
        n_components=k, whiten="unit-variance", random_state=seed, max_iter=1000
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the fit is used as it is
        ica.fit(data.shifts_tr.double().cpu().numpy())
    codes = torch.from_numpy(ica.transform(data.shifts_te.double().cpu().numpy()))
    return fit_directions(torch.from_numpy(ica.mixing_.T.copy()), codes, data.reference)


def fit_mean_diff(data: ShiftData) -> Fit:
    """The mean training shift, one direction for every concept and pair (alignment:
    :func:`~ssae_lens.metrics.shared_concept_alignment`)."""
    mean = data.shifts_tr.float().cpu().mean(0, keepdim=True)
    unit = mean / mean.norm().clamp(min=1e-12)
    c = data.reference.shape[0]
    return Fit(
        directions=unit,
        codes_te=data.shifts_te.float().cpu() @ unit.T,
        matched=unit.expand(c, -1).clone(),
        order=[0] * c,
        alignment=shared_concept_alignment(unit, data.reference),
        shared=True,
    )


def fit_supervised(data: ShiftData) -> Fit:
    """The reference directions themselves (they see the labels: an upper reference)."""
    return fit_directions(data.reference, data.shifts_te @ data.reference.T, data.reference)


def fit_activation_sae(sae: SAE, data: ShiftData) -> Fit:
    """A SAELens SAE on single activations: codes ``encode(z~) - encode(z)``, directions
    the decoder rows ``W_dec``."""
    if data.src_te is None or data.tgt_te is None:
        raise ValueError(
            f"fit_activation_sae needs the activations of both sides; {data.name!r} has only "
            "shifts."
        )
    with torch.no_grad():
        codes = sae.encode(data.tgt_te.to(sae.device)) - sae.encode(data.src_te.to(sae.device))
    return fit_directions(sae.W_dec, codes, data.reference, sae=sae)


def pair_directions(fit: Fit, labels: Float[Tensor, "n c"]) -> Float[Tensor, "n d"]:
    """Per pair, the label-weighted sum of the matched directions of the concepts it changes
    (the shared direction for every pair if ``fit.shared``)."""
    if fit.shared:
        return fit.matched[:1].expand(labels.shape[0], -1)
    return labels.float().cpu() @ fit.matched.float()


def evaluate_fit(fit: Fit, data: ShiftData) -> FitScores:
    """Concept alignment, held-out steering accuracy (the paper's and centred), label MCC and
    ``cos(v, z)`` of a fit.

    Steering accuracy (the paper's): cosine of ``z/|z| + v/|v|`` with ``z~`` on the held-out
    pairs, ``v`` from :func:`pair_directions`. The centred variant
    (:func:`~ssae_lens.metrics.centred_steering_accuracy`) does the same about the mean
    held-out source activation. ``cos(v, z)`` is the mean cosine of ``v`` with the activation
    it is added to, which dominates the paper's accuracy when the shift is small next to ``z``.
    """
    accuracy = centred = cos_vz = None
    if data.src_te is not None and data.tgt_te is not None:
        src, tgt = data.src_te.float().cpu(), data.tgt_te.float().cpu()
        directions = pair_directions(fit, data.labels_te)
        accuracy = steering_accuracy(src, tgt, directions)
        centred = centred_steering_accuracy(src, tgt, directions)
        cos_vz = float(torch.cosine_similarity(directions, src, dim=-1).mean())
    # Labels that never vary (every language pair is "language: 1") have no correlation.
    n, c = data.labels_te.shape
    varies = n > 1 and c > 0 and bool((data.labels_te.std(0) > 0).all())
    return FitScores(
        alignment=fit.alignment,
        accuracy=accuracy,
        centred_accuracy=centred,
        label_mcc=label_mcc(fit.codes_te, data.labels_te)[0] if varies else None,
        cos_vz=cos_vz,
    )


def evaluate_ssaes(saes: Sequence[SSAE], data: ShiftData) -> dict[str, Any]:
    """Seed agreement of SSAEs trained with different seeds, and per SSAE its
    :func:`evaluate_fit` scores (``ssae-lens evaluate``).

    Returns ``n_ssaes``, ``seed_agreement_mcc`` and ``seed_agreement_pairs`` (with several
    SSAEs) and, for labelled data, one value per SSAE of ``concept_alignment``,
    ``steering_accuracy`` (with activations) and ``label_mcc`` (with varying labels).
    """
    metrics: dict[str, Any] = {"n_ssaes": len(saes)}
    if len(saes) > 1:
        mean, per_pair = seed_agreement_mcc([s.steering_directions() for s in saes])
        metrics["seed_agreement_mcc"], metrics["seed_agreement_pairs"] = mean, per_pair
    if not data.concepts:
        return metrics
    scores = [evaluate_fit(fit_from_ssae(sae, data), data) for sae in saes]
    metrics["concept_alignment"] = [s.alignment for s in scores]
    for key, attr in (("steering_accuracy", "accuracy"), ("label_mcc", "label_mcc")):
        values = [getattr(s, attr) for s in scores]
        if all(v is not None for v in values):
            metrics[key] = values
    return metrics
