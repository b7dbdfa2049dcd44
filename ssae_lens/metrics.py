"""Every metric of the package, defined once: MCC, matching, concept alignment, steering
accuracy, next-token loss.

``mcc(a, b)`` correlates every column of ``a`` with every column of ``b`` (Pearson
or Spearman), takes absolute values (codes are identifiable up to sign and
scale), finds the optimal one-to-one matching (Hungarian algorithm) and returns
the mean of the matched correlations. With different numbers of columns, the
smaller side is matched completely.

Concept alignment compares learned directions with supervised reference directions (one per
concept) and has two forms, one per way a method steers:

- :func:`concept_alignment`: ``k`` directions, each used for at most one concept (SSAE, aff,
  PCA, ICA, an SAE): the mean over concepts of the |cosine| of the concept's matched direction
  (optimal one-to-one matching; a concept left without a direction counts 0).
- :func:`shared_concept_alignment`: one direction used for every concept (the mean shift):
  the mean over concepts of its |cosine| with each.

Both are means over the concepts, so they compare directly. The demo, the paper study
(``benchmarks/paper.py``) and ``ssae-lens evaluate`` report them through
:func:`ssae_lens.compare.evaluate_fit` as "concept alignment".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import torch
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from torch import Tensor

CorrelationMethod = Literal["pearson", "spearman"]


@dataclass
class Matching:
    """An optimal one-to-one matching of columns of ``a`` to columns of ``b``."""

    mcc: float
    rows: list[int]
    cols: list[int]
    values: list[float]
    correlation: Float[Tensor, "ka kb"]


def correlation_matrix(
    a: Float[Tensor, "n ka"], b: Float[Tensor, "n kb"], method: CorrelationMethod = "pearson"
) -> Float[Tensor, "ka kb"]:
    """Correlation between every column of ``a`` and every column of ``b``.

    Constant columns have zero correlation with everything.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"mcc needs two (n, k) matrices with the same n, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}; rows are samples, columns are latents/factors."
        )
    if a.shape[0] < 2:
        raise ValueError("correlation needs at least 2 samples (rows).")
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}.")
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    if method == "spearman":
        a = torch.from_numpy(rankdata(a.numpy(), axis=0))
        b = torch.from_numpy(rankdata(b.numpy(), axis=0))
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = a.norm(dim=0), b.norm(dim=0)
    corr = (a.T @ b) / (na[:, None] * nb[None, :]).clamp(min=1e-300)
    corr[na == 0] = 0.0
    corr[:, nb == 0] = 0.0
    return corr.clamp(-1.0, 1.0)


def match(
    a: Float[Tensor, "n ka"], b: Float[Tensor, "n kb"], method: CorrelationMethod = "pearson"
) -> Matching:
    """The optimal matching of |correlations| between columns of ``a`` and ``b``."""
    corr = correlation_matrix(a, b, method)
    rows, cols = linear_sum_assignment(-corr.abs().numpy())
    values = corr.abs()[rows, cols]
    return Matching(
        mcc=float(values.mean()),
        rows=rows.tolist(),
        cols=cols.tolist(),
        values=values.tolist(),
        correlation=corr,
    )


def mcc(
    a: Float[Tensor, "n ka"], b: Float[Tensor, "n kb"], method: CorrelationMethod = "pearson"
) -> float:
    """Mean correlation coefficient between the columns of ``a`` and ``b`` (in [0, 1])."""
    return match(a, b, method).mcc


def seed_agreement_mcc(
    decoders: Sequence[Float[Tensor, "d_sae d_in"]], method: CorrelationMethod = "pearson"
) -> tuple[float, list[float]]:
    """Agreement of dictionaries trained with different seeds.

    Each decoder is ``(d_sae, d_in)`` (SAELens's ``W_dec``; an SAE is accepted
    too): its rows are correlated across the ``d_in`` coordinates with the rows
    of every other decoder and matched. Returns the mean over all pairs of runs
    and the per-pair values.
    """
    mats = [d.W_dec if hasattr(d, "W_dec") else d for d in decoders]
    if len(mats) < 2:
        raise ValueError("seed_agreement_mcc needs decoders from at least 2 runs.")
    pairs = [mcc(x.T, y.T, method) for x, y in combinations(mats, 2)]
    return sum(pairs) / len(pairs), pairs


def label_mcc(
    codes: Float[Tensor, "n k"], labels: Float[Tensor, "n c"], method: CorrelationMethod = "pearson"
) -> tuple[float, list[int]]:
    """For each concept label, the best |correlation| of any latent with it.

    Returns the mean over labels and, per label, the index of the best latent
    (latents may be reused; use :func:`mcc` for a one-to-one matching).
    """
    corr = correlation_matrix(codes, labels, method).abs()
    best, idx = corr.max(dim=0)
    return float(best.mean()), idx.tolist()


def _unit(rows: Tensor) -> Tensor:
    """Rows scaled to unit norm, in float64 on the CPU (zero rows stay zero)."""
    rows = rows.detach().double().cpu()
    return rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-300)


def matched_cosine(learned: Float[Tensor, "k d"], reference: Float[Tensor, "c d"]) -> Matching:
    """Optimal one-to-one matching of |cosine| between learned and reference directions."""
    cos = _unit(learned) @ _unit(reference).T
    rows, cols = linear_sum_assignment(-cos.abs().numpy())
    values = cos.abs()[rows, cols]
    return Matching(float(values.mean()), rows.tolist(), cols.tolist(), values.tolist(), cos)


def concept_alignment(learned: Float[Tensor, "k d"], reference: Float[Tensor, "c d"]) -> float:
    """Mean over the ``c`` reference concepts of the |cosine| of each concept's matched learned
    direction (:func:`matched_cosine`); with ``k < c`` the unmatched concepts count 0.

    For ``k >= c`` this is ``matched_cosine(learned, reference).mcc``.
    """
    return sum(matched_cosine(learned, reference).values) / reference.shape[0]


def shared_concept_alignment(
    direction: Float[Tensor, "1 d"] | Float[Tensor, " d"], reference: Float[Tensor, "c d"]
) -> float:
    """Mean over the ``c`` reference concepts of the |cosine| of one shared ``direction`` with
    each (the direction a method uses for every concept, e.g. the mean shift)."""
    return float((_unit(reference) @ _unit(direction.reshape(1, -1)).T).abs().mean())


def oriented_match(
    learned: Float[Tensor, "k d"], reference: Float[Tensor, "c d"]
) -> tuple[Float[Tensor, "c d"], list[int], Matching]:
    """Per reference concept, its matched learned direction (:func:`matched_cosine`) with the
    sign flipped to agree with the reference; zero rows for concepts left unmatched.

    Returns the oriented directions, the learned index per concept (``-1`` if unmatched) and
    the matching.
    """
    m = matched_cosine(learned, reference)
    oriented = torch.zeros(reference.shape[0], learned.shape[1], dtype=learned.dtype)
    order = [-1] * reference.shape[0]
    for row, col in zip(m.rows, m.cols, strict=True):
        sign = 1.0 if float(learned[row] @ reference[col].to(learned.dtype)) >= 0 else -1.0
        oriented[col] = sign * learned[row]
        order[col] = row
    return oriented, order, m


def concept_directions(
    shifts: Float[Tensor, "n d"], labels: Float[Tensor, "n c"]
) -> Float[Tensor, "c d"]:
    """Supervised single-concept directions: the mean shift of the pairs where only
    that concept changed (sign-corrected by its label). Unsupervised methods never
    see these; they are the reference for concept alignment."""
    changed = labels != 0
    only = changed & (changed.sum(-1, keepdim=True) == 1)
    if (only.sum(0) == 0).any():
        missing = (only.sum(0) == 0).nonzero().flatten().tolist()
        raise ValueError(f"no pair changes only concept column(s) {missing}.")
    signed = labels.sign() * only
    return (signed.T @ shifts) / only.sum(0)[:, None]


def regression_directions(
    shifts: Float[Tensor, "n d"], labels: Float[Tensor, "n c"]
) -> Float[Tensor, "c d"]:
    """Supervised directions by least squares: the minimum-norm ``R`` with ``labels @ R``
    closest to ``shifts``. For one-hot change labels (``+1`` at the new value, ``-1`` at the
    old), where no pair changes a single column, row ``j`` is the direction of value ``j``
    (centred within its factor)."""
    if shifts.shape[0] != labels.shape[0]:
        raise ValueError(
            f"shifts and labels need one row per pair, got {shifts.shape[0]} and "
            f"{labels.shape[0]} rows."
        )
    solution = torch.linalg.pinv(labels.double()) @ shifts.double()
    return solution.to(shifts.dtype)


def steering_accuracy(
    source: Float[Tensor, "n d"],
    target: Float[Tensor, "n d"],
    directions: Float[Tensor, "n d"],
) -> float:
    """Mean cosine of ``source/||source|| + v/||v||`` with ``target`` over held-out pairs.

    ``directions[i]`` is the steering direction used for pair ``i`` (e.g. the
    learned column of the concept that pair changes). This is the SSAE paper's
    steering accuracy.
    """
    src = source / source.norm(dim=-1, keepdim=True)
    v = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return float(torch.nn.functional.cosine_similarity(src + v, target, dim=-1).mean())


def centred_steering_accuracy(
    source: Float[Tensor, "n d"],
    target: Float[Tensor, "n d"],
    directions: Float[Tensor, "n d"],
    center: Float[Tensor, " d"] | None = None,
) -> float:
    """:func:`steering_accuracy` about the mean activation: the mean cosine of
    ``(z - m)/||z - m|| + v/||v||`` with ``z~ - m``.

    ``m`` is ``center``, by default the mean of the source activations ``z`` of the evaluated
    pairs (no labels: the point every pair starts from on average). A residual stream whose
    activations share a large common component (Gemma's last token) has every ``z`` and ``z~``
    nearly parallel, so the uncentred score sits near its ceiling for any ``v`` and mostly
    measures ``cos(v, z)``. Centring removes that component: ``z - m`` is where this pair's
    source sits among the sources, ``z~ - m = (z - m) + (z~ - z)``, and the score is high when
    ``v`` points along the pair's shift ``z~ - z`` from there. A direction that is wrong for the
    pair lowers it more than it lowers the uncentred score.
    """
    m = source.mean(0) if center is None else center
    return steering_accuracy(source - m, target - m, directions)


def next_token_nll(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """``-log p(tokens[:, t + 1] | logits[:, t])`` in float32, whatever the logits' dtype.

    One row at a time: a float32 log-softmax of the whole batch would double the logits'
    memory (gigabytes with a 262k-token vocabulary).
    """
    if logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} must share their "
            "(batch, pos) dimensions."
        )
    nll = torch.empty(tokens.shape[0], tokens.shape[1] - 1, device=logits.device)
    for i, row in enumerate(logits[:, :-1]):
        row = row.float()
        nll[i] = row.logsumexp(-1) - row.gather(-1, tokens[i, 1:, None].to(row.device)).squeeze(-1)
    return nll
