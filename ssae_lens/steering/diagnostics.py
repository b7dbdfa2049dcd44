"""Diagnostics for decomposing a steering vector with an SAE.

Encoding a steering vector ``v`` with an SAE (``sae.encode(v)``) is a tempting way to read
what it does, but it misleads in predictable ways (Mayne, Yang & Mahdi 2024,
arXiv 2411.08790):

- ``v`` is out of distribution: its norm is far from the activations the SAE was trained
  on and it carries no "default" component, so the encoder bias dominates ``encode(v)``.
  Diagnostic: ``||v||`` against the activation-norm distribution, and the overlap of the top
  features of ``encode(v)`` with those of ``encode(0)``.
- Negative projections: the activation function drops the features ``v`` points *against*,
  and a feature whose decoder row is anti-aligned with such a feature can fire spuriously.
  Diagnostic: signed encoder pre-activations, projections ``v @ W_enc`` and decoder cosines.
- The sounder decomposition is in context: ``E_x[encode(x + a v) - encode(x)]`` over real
  activations ``x``, which is what SAE-targeted steering measures.

``diagnose_decomposition`` computes all of these and returns a ``DecompositionReport`` with a
readable ``summary()``, a ``plot(path)`` and a ``DecompositionWarning`` for each way the naive
decomposition is misleading.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from sae_lens.saes import TemporalSAE
from torch import Tensor
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ssae_lens.steering.vector import SteeringVector

__all__ = [
    "AntipodalPair",
    "DecompositionReport",
    "DecompositionWarning",
    "DiagnosticThresholds",
    "FeatureValue",
    "diagnose_decomposition",
    "signed_pre_activations",
]
from ssae_lens._core.io import save_figure


class DecompositionWarning(UserWarning):
    """A naive SAE decomposition of a steering vector is likely to mislead."""


@dataclass
class DiagnosticThresholds:
    """When ``diagnose_decomposition`` warns that the naive decomposition misleads.

    Attributes:
        norm_ratio_low: warn when ``||v||`` / median activation norm is below this.
        norm_ratio_high: warn when that ratio is above this.
        bias_overlap: warn when the Jaccard overlap of the top features of ``encode(v)`` and
            ``encode(0)`` is at least this.
        negative_cosine: warn when ``v`` has cosine ``<= -negative_cosine`` with some feature's
            encoder direction (a component the activation function drops).
        antipodal_cosine: two features form an antipodal pair when their decoder rows have
            cosine ``<= -antipodal_cosine``.
        in_context_agreement: warn when the Jaccard overlap of the naive top features and the
            in-context top features is below this at every scale.
    """

    norm_ratio_low: float = 0.25
    norm_ratio_high: float = 4.0
    bias_overlap: float = 0.5
    negative_cosine: float = 0.3
    antipodal_cosine: float = 0.5
    in_context_agreement: float = 0.5

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiagnosticThresholds:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Unknown DiagnosticThresholds fields {unknown}; valid fields: {sorted(known)}."
            )
        return cls(**data)


@dataclass(frozen=True)
class FeatureValue:
    """One SAE feature index with a value (an activation, projection, cosine or change)."""

    feature: int
    value: float


@dataclass(frozen=True)
class AntipodalPair:
    """A feature that fires in ``encode(v)`` because ``v`` points against its mirror image.

    ``active_feature`` is active in ``encode(v)``; ``v`` projects negatively on
    ``opposed_feature``; their decoder rows have cosine ``decoder_cosine`` (negative), so the
    active feature may stand in for "minus the opposed feature".
    """

    active_feature: int
    opposed_feature: int
    decoder_cosine: float
    activation: float
    projection: float


@dataclass
class DecompositionReport:
    """The result of ``diagnose_decomposition``.

    Tensors cover every SAE feature (``d_sae``); the ``top_*`` lists hold the ``top_k``
    strongest entries. Fields that need real activations are ``None`` (or empty) when none
    were given.

    Attributes:
        hook_name: the hook point of the vector / SAE, if known.
        d_sae: number of SAE features.
        vector_norm: ``||v||``.
        activation_norm_median: median norm of the given activations.
        norm_ratio: ``||v||`` / median activation norm.
        norm_percentile: percentage of activation norms below ``||v||`` (ties count half).
        n_activations: number of activations used.
        top_features: nonzero features of ``encode(v)``, largest ``|activation|`` first.
        bias_features: nonzero features of ``encode(0)``, largest first.
        bias_overlap: Jaccard overlap of the feature sets of ``top_features`` and
            ``bias_features`` (0 when both are empty; NaN when ``encode(0)`` is undefined,
            e.g. for ``constant_norm_rescale`` SAEs).
        pre_activations: signed encoder pre-activations of ``v`` (see
            ``signed_pre_activations``).
        projections: ``v @ W_enc``, the change in pre-activation that adding ``v`` causes.
        encoder_cosines: cosine between ``v`` and each encoder column.
        negative_projections: the most negative projections (features ``v`` points against).
        decoder_cosines: cosine between ``v`` and each decoder row.
        top_decoder_cosines: the largest positive decoder cosines.
        bottom_decoder_cosines: the most negative decoder cosines (negative ones only).
        antipodal_pairs: active features whose decoder row is anti-aligned with a feature
            ``v`` projects negatively on.
        scales: the scales ``a`` of the in-context decomposition.
        in_context: ``E_x[encode(x + a v) - encode(x)]``, one row per scale.
        in_context_top: per scale, the features with the largest ``|mean change|``.
        in_context_agreement: per scale, the Jaccard overlap of the feature sets of
            ``top_features`` and ``in_context_top``.
        warnings: one message per way the naive decomposition is misleading.
    """

    hook_name: str | None
    d_sae: int
    vector_norm: float
    activation_norm_median: float | None
    norm_ratio: float | None
    norm_percentile: float | None
    n_activations: int
    top_features: list[FeatureValue]
    bias_features: list[FeatureValue]
    bias_overlap: float
    pre_activations: Float[Tensor, " d_sae"]
    projections: Float[Tensor, " d_sae"]
    encoder_cosines: Float[Tensor, " d_sae"]
    negative_projections: list[FeatureValue]
    decoder_cosines: Float[Tensor, " d_sae"]
    top_decoder_cosines: list[FeatureValue]
    bottom_decoder_cosines: list[FeatureValue]
    antipodal_pairs: list[AntipodalPair]
    scales: list[float]
    in_context: Float[Tensor, "n_scales d_sae"] | None
    in_context_top: list[list[FeatureValue]]
    in_context_agreement: list[float]
    activation_norms: Float[Tensor, " n"] | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: scalars and the ``top_*`` lists (full tensors are left out)."""
        return {
            "hook_name": self.hook_name,
            "d_sae": self.d_sae,
            "vector_norm": self.vector_norm,
            "activation_norm_median": self.activation_norm_median,
            "norm_ratio": self.norm_ratio,
            "norm_percentile": self.norm_percentile,
            "n_activations": self.n_activations,
            "top_features": [asdict(f) for f in self.top_features],
            "bias_features": [asdict(f) for f in self.bias_features],
            "bias_overlap": self.bias_overlap,
            "negative_projections": [asdict(f) for f in self.negative_projections],
            "top_decoder_cosines": [asdict(f) for f in self.top_decoder_cosines],
            "bottom_decoder_cosines": [asdict(f) for f in self.bottom_decoder_cosines],
            "antipodal_pairs": [asdict(p) for p in self.antipodal_pairs],
            "scales": list(self.scales),
            "in_context_top": [[asdict(f) for f in top] for top in self.in_context_top],
            "in_context_agreement": list(self.in_context_agreement),
            "warnings": list(self.warnings),
        }

    def summary(self) -> str:
        """A readable multi-line report."""
        where = self.hook_name or "an unknown hook"
        lines = [f"SAE decomposition of a steering vector at {where} (d_sae={self.d_sae})"]
        if self.norm_ratio is None:
            lines.append(f"  norm: ||v|| = {self.vector_norm:.4g} (no activations given)")
        else:
            lines.append(
                f"  norm: ||v|| = {self.vector_norm:.4g}; median activation norm "
                f"{self.activation_norm_median:.4g} over {self.n_activations} activations "
                f"(ratio {self.norm_ratio:.3g}, percentile {self.norm_percentile:.1f})"
            )
        lines.append(f"  naive encode(v): {_format_features(self.top_features)}")
        lines.append(f"  encoder bias encode(0): {_format_features(self.bias_features)}")
        lines.append(
            f"  top-feature Jaccard overlap of encode(v) and encode(0): {self.bias_overlap:.2f}"
        )
        negatives = [
            f"{f.feature} ({f.value:+.3g}, cos {self.encoder_cosines[f.feature].item():+.2f})"
            for f in self.negative_projections
        ]
        lines.append(
            "  most negative projections v @ W_enc (dropped by the activation): "
            + (", ".join(negatives) or "none")
        )
        lines.append(f"  decoder cosines, aligned: {_format_features(self.top_decoder_cosines)}")
        lines.append(f"  decoder cosines, opposed: {_format_features(self.bottom_decoder_cosines)}")
        if self.antipodal_pairs:
            pairs = ", ".join(
                f"{p.active_feature} <- -{p.opposed_feature} (cos {p.decoder_cosine:+.2f})"
                for p in self.antipodal_pairs
            )
            lines.append(f"  antipodal pairs (active <- -opposed): {pairs}")
        if self.in_context is None:
            lines.append("  in-context decomposition: skipped (no activations given)")
        else:
            lines.append(
                f"  in context, E[encode(x + a v) - encode(x)] over {self.n_activations} "
                "activations:"
            )
            for scale, top, agreement in zip(
                self.scales, self.in_context_top, self.in_context_agreement, strict=True
            ):
                lines.append(
                    f"    a={scale:g}: {_format_features(top)} "
                    f"(overlap with naive: {agreement:.2f})"
                )
        if self.warnings:
            lines.append("  WARNINGS:")
            lines.extend(f"    - {w}" for w in self.warnings)
        else:
            lines.append("  no warnings: the naive decomposition agrees with the diagnostics")
        return "\n".join(lines)

    def figure(self) -> Figure:
        """The diagnostics as a four-panel matplotlib figure (not attached to pyplot)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(12, 8), layout="constrained")
        ax_norm, ax_naive, ax_proj, ax_ctx = fig.subplots(2, 2).flat

        if self.activation_norms is None:
            ax_norm.text(0.5, 0.5, "no activations given", ha="center", va="center")
        else:
            ax_norm.hist(self.activation_norms.numpy(), bins=40, color="0.6")
            ax_norm.axvline(self.vector_norm, color="C3", label="||v||")
            for scale in self.scales:
                ax_norm.axvline(abs(scale) * self.vector_norm, color="C3", ls=":", lw=0.8)
            ax_norm.legend()
        ax_norm.set(title="activation norms vs ||v|| (dotted: |a| ||v||)", xlabel="norm")

        naive = self.top_features
        bias = {f.feature: f.value for f in self.bias_features}
        xs = range(len(naive))
        ax_naive.bar([x - 0.2 for x in xs], [f.value for f in naive], 0.4, label="encode(v)")
        ax_naive.bar(
            [x + 0.2 for x in xs],
            [bias.get(f.feature, 0.0) for f in naive],
            0.4,
            label="encode(0)",
        )
        ax_naive.set_xticks(list(xs), [str(f.feature) for f in naive], rotation=90)
        ax_naive.set(title=f"naive top features (bias overlap {self.bias_overlap:.2f})")
        ax_naive.legend()

        order = torch.argsort(self.projections, descending=True)
        k = len(naive) or 1
        shown = torch.cat([order[:k], order[-k:]]).unique(sorted=False)
        shown = shown[torch.argsort(self.projections[shown], descending=True)]
        values = self.projections[shown]
        ax_proj.bar(
            range(len(shown)),
            values.numpy(),
            color=["C0" if v >= 0 else "C3" for v in values.tolist()],
        )
        ax_proj.set_xticks(range(len(shown)), [str(i) for i in shown.tolist()], rotation=90)
        ax_proj.set(title="projections v @ W_enc (red: dropped by the activation)")

        if self.in_context is None:
            ax_ctx.text(0.5, 0.5, "no activations given", ha="center", va="center")
        else:
            feats = sorted({f.feature for top in self.in_context_top for f in top})
            grid = self.in_context[:, feats].T
            vmax = float(grid.abs().max()) or 1.0
            image = ax_ctx.imshow(grid.numpy(), aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax_ctx.set_yticks(range(len(feats)), [str(f) for f in feats])
            ax_ctx.set_xticks(range(len(self.scales)), [f"{s:g}" for s in self.scales])
            fig.colorbar(image, ax=ax_ctx)
        ax_ctx.set(title="in context: E[encode(x + a v) - encode(x)]", xlabel="scale a")
        return fig

    def plot(self, path: str | os.PathLike) -> Path:
        """Save ``figure()`` to ``path`` (format from the suffix, e.g. ``.png``); returns it."""
        return save_figure(self.figure(), path)


def signed_pre_activations(sae: SAE, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
    """Signed encoder pre-activations ``process_sae_in(x) @ W_enc + b``.

    ``b`` is the bias that decides whether a feature fires: ``b_enc`` for standard, TopK,
    JumpReLU and transcoder SAEs, ``b_gate`` (the gating path) for gated SAEs, none for tied
    bias-free encoders such as matching pursuit. ``process_sae_in`` applies the SAE's own input
    normalisation and ``b_dec`` subtraction. The activation function (ReLU, TopK, JumpReLU
    threshold, ...) is what turns these into ``sae.encode(x)``.
    """
    pre = sae.process_sae_in(x) @ sae.W_enc
    bias = _encoder_bias(sae)
    return pre if bias is None else pre + bias


def diagnose_decomposition(
    sae: SAE,
    vector: SteeringVector | Float[Tensor, " d_in"],
    activations: Float[Tensor, "n d_in"] | None = None,
    *,
    scales: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    top_k: int = 10,
    thresholds: DiagnosticThresholds | None = None,
    batch_size: int = 256,
) -> DecompositionReport:
    """Diagnose whether ``sae.encode(vector)`` is a trustworthy decomposition of ``vector``.

    Args:
        sae: any SAELens ``SAE`` whose encoder reads single activation vectors.
        vector: a ``SteeringVector`` or a raw direction of width ``sae.cfg.d_in``.
        activations: real activations at the SAE's hook, ``[n, d_in]`` (leading dimensions
            are flattened). Needed for the norm comparison and the in-context decomposition.
        scales: the scales ``a`` of the in-context decomposition ``E[encode(x + a v) -
            encode(x)]``, as multiples of ``vector`` itself.
        top_k: how many features each ranked list keeps.
        thresholds: when to warn (see ``DiagnosticThresholds``).
        batch_size: activations encoded per step.

    Returns:
        A ``DecompositionReport``. Each entry of its ``warnings`` is also emitted as a
        ``DecompositionWarning``.
    """
    thresholds = thresholds or DiagnosticThresholds()
    if top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k}.")
    direction, hook_name = _check_vector(sae, vector)
    scales = [float(s) for s in scales]
    if activations is not None:
        activations = _check_activations(sae, activations)

    with torch.no_grad():
        w_enc = sae.W_enc.detach()
        w_dec = sae.W_dec.detach()
        acts_v = sae.encode(direction).float().cpu()
        zero = torch.zeros_like(direction)
        acts_0 = sae.encode(zero).float().cpu()
        pre_acts = signed_pre_activations(sae, direction).float().cpu()
        projections = (direction @ w_enc).float().cpu()
        encoder_cosines = _cosine(direction, w_enc.T).float().cpu()
        decoder_cosines = _cosine(direction, w_dec).float().cpu()

        top_features = _top_nonzero(acts_v, top_k)
        if torch.isfinite(acts_0).all():
            bias_features = _top_nonzero(acts_0, top_k)
            bias_overlap = _jaccard(top_features, bias_features)
        else:
            bias_features, bias_overlap = [], float("nan")
        negative_projections = _bottom_negative(projections, top_k)
        top_cos = _top_nonzero(decoder_cosines.clamp_min(0), top_k)
        bottom_cos = _bottom_negative(decoder_cosines, top_k)
        pairs = _antipodal_pairs(
            w_dec, top_features, negative_projections, thresholds.antipodal_cosine
        )

        norms = median = ratio = percentile = None
        in_context = None
        in_context_top: list[list[FeatureValue]] = []
        agreement: list[float] = []
        if activations is not None:
            norms = activations.norm(dim=-1).float().cpu()
            vnorm = direction.norm().item()
            median = norms.quantile(0.5).item()
            ratio = vnorm / median if median > 0 else float("inf")
            below = (norms < vnorm).float().mean() + 0.5 * (norms == vnorm).float().mean()
            percentile = 100.0 * below.item()
            in_context = _in_context(sae, direction, activations, scales, batch_size)
            in_context_top = [_top_nonzero(row, top_k) for row in in_context]
            agreement = [_jaccard(top_features, top) for top in in_context_top]

    report = DecompositionReport(
        hook_name=hook_name,
        d_sae=int(w_dec.shape[0]),
        vector_norm=direction.norm().item(),
        activation_norm_median=median,
        norm_ratio=ratio,
        norm_percentile=percentile,
        n_activations=0 if activations is None else activations.shape[0],
        top_features=top_features,
        bias_features=bias_features,
        bias_overlap=bias_overlap,
        pre_activations=pre_acts,
        projections=projections,
        encoder_cosines=encoder_cosines,
        negative_projections=negative_projections,
        decoder_cosines=decoder_cosines,
        top_decoder_cosines=top_cos,
        bottom_decoder_cosines=bottom_cos,
        antipodal_pairs=pairs,
        scales=scales,
        in_context=in_context,
        in_context_top=in_context_top,
        in_context_agreement=agreement,
        activation_norms=norms,
    )
    report.warnings = _misleading(report, thresholds)
    for message in report.warnings:
        warnings.warn(message, DecompositionWarning, stacklevel=2)
    return report


def _misleading(report: DecompositionReport, t: DiagnosticThresholds) -> list[str]:
    out = []
    if report.norm_ratio is not None and not (
        t.norm_ratio_low <= report.norm_ratio <= t.norm_ratio_high
    ):
        out.append(
            f"||v|| = {report.vector_norm:.3g} is {report.norm_ratio:.3g}x the median activation "
            f"norm (percentile {report.norm_percentile:.1f}): v is out of the SAE's input "
            "distribution, so encode(v) need not reflect what v does in context."
        )
    if report.bias_overlap >= t.bias_overlap:
        out.append(
            f"The top features of encode(v) overlap those of encode(0) (Jaccard "
            f"{report.bias_overlap:.2f}): the encoder bias dominates the naive decomposition."
        )
    cosines = report.encoder_cosines
    opposed = (cosines <= -t.negative_cosine).nonzero().flatten()
    if len(opposed):
        opposed = opposed[torch.argsort(cosines[opposed])][:5]
        listed = ", ".join(f"{i} (cos {cosines[i].item():+.2f})" for i in opposed.tolist())
        out.append(
            f"v points against features {listed}; the activation function drops them, so "
            "encode(v) hides that adding v suppresses them."
        )
    if report.antipodal_pairs:
        listed = ", ".join(
            f"{p.active_feature} vs {p.opposed_feature}" for p in report.antipodal_pairs
        )
        out.append(
            f"Active features may fire spuriously through anti-aligned decoder pairs "
            f"(active vs opposed: {listed})."
        )
    if report.in_context_agreement and max(report.in_context_agreement) < t.in_context_agreement:
        out.append(
            "The naive top features disagree with the in-context decomposition at every scale "
            f"(Jaccard {', '.join(f'{a:.2f}' for a in report.in_context_agreement)}); trust the "
            "in-context features."
        )
    return out


def _check_vector(sae: SAE, vector: Any) -> tuple[Tensor, str | None]:
    if isinstance(sae, TemporalSAE):
        raise ValueError(
            "TemporalSAE encodes whole sequences, so a single steering vector has no "
            "decomposition; use an SAE that encodes single activations (standard, TopK, ...)."
        )
    if getattr(sae, "hook_z_reshaping_mode", False):
        raise ValueError(
            "This SAE reshapes hook_z inputs [.., n_heads, d_head]; call "
            "sae.turn_off_forward_pass_hook_z_reshaping() and pass flattened vectors."
        )
    sae_hook = sae.cfg.metadata.hook_name
    if isinstance(vector, Tensor):
        direction, hook_name = vector, sae_hook
    elif hasattr(vector, "direction") and hasattr(vector, "hook_name"):
        direction, hook_name = vector.direction, vector.hook_name
        if sae_hook is not None and hook_name != sae_hook:
            raise ValueError(
                f"The vector is applied at {hook_name!r} but the SAE reads {sae_hook!r}; "
                f"decompose it with an SAE trained at {hook_name!r}."
            )
    else:
        raise TypeError(
            f"vector must be a SteeringVector or a tensor, got {type(vector).__name__}."
        )
    if direction.ndim != 1 or direction.shape[0] != sae.cfg.d_in:
        raise ValueError(
            f"The vector has shape {tuple(direction.shape)} but the SAE expects "
            f"({sae.cfg.d_in},); pass a single direction at the SAE's hook."
        )
    if not torch.isfinite(direction).all():
        raise ValueError("The vector contains NaN or inf values.")
    return direction.detach().to(sae.device, sae.dtype), hook_name


def _check_activations(sae: SAE, activations: Tensor) -> Tensor:
    if activations.ndim < 2 or activations.shape[-1] != sae.cfg.d_in:
        raise ValueError(
            f"activations must have shape [n, {sae.cfg.d_in}], got {tuple(activations.shape)}; "
            "harvest them at the SAE's hook (ssae_lens.activations.harvest_activations)."
        )
    activations = activations.detach().reshape(-1, sae.cfg.d_in)
    if activations.shape[0] == 0:
        raise ValueError("activations is empty; pass at least one activation.")
    return activations.to(sae.device, sae.dtype)


def _encoder_bias(sae: SAE) -> Tensor | None:
    for name in ("b_enc", "b_gate"):
        bias = getattr(sae, name, None)
        if isinstance(bias, Tensor):
            return bias
    return None


def _cosine(v: Float[Tensor, " d"], rows: Float[Tensor, "m d"]) -> Float[Tensor, " m"]:
    denom = rows.norm(dim=-1) * v.norm()
    return (rows @ v) / denom.clamp_min(torch.finfo(rows.dtype).tiny)


def _in_context(
    sae: SAE,
    direction: Tensor,
    activations: Tensor,
    scales: list[float],
    batch_size: int,
) -> Float[Tensor, "n_scales d_sae"]:
    n = activations.shape[0]
    totals = torch.zeros(len(scales), sae.cfg.d_sae, dtype=torch.float64)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="in-context decomposition", disable=None, leave=False):
        batch = activations[start : start + batch_size]
        base = sae.encode(batch).double()
        for i, scale in enumerate(scales):
            steered = sae.encode(batch + scale * direction).double()
            totals[i] += (steered - base).sum(dim=0).cpu()
    return (totals / n).float()


def _top_nonzero(values: Float[Tensor, " d_sae"], k: int) -> list[FeatureValue]:
    nonzero = values.nonzero().flatten()
    order = nonzero[torch.argsort(values[nonzero].abs(), descending=True)][:k]
    return [FeatureValue(i, values[i].item()) for i in order.tolist()]


def _bottom_negative(values: Float[Tensor, " d_sae"], k: int) -> list[FeatureValue]:
    negative = (values < 0).nonzero().flatten()
    order = negative[torch.argsort(values[negative])][:k]
    return [FeatureValue(i, values[i].item()) for i in order.tolist()]


def _jaccard(a: list[FeatureValue], b: list[FeatureValue]) -> float:
    sa, sb = {f.feature for f in a}, {f.feature for f in b}
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


def _antipodal_pairs(
    w_dec: Tensor,
    active: list[FeatureValue],
    opposed: list[FeatureValue],
    threshold: float,
) -> list[AntipodalPair]:
    if not active or not opposed:
        return []
    a_idx = torch.tensor([f.feature for f in active])
    o_idx = torch.tensor([f.feature for f in opposed])
    rows_a = torch.nn.functional.normalize(w_dec[a_idx].float(), dim=-1)
    rows_o = torch.nn.functional.normalize(w_dec[o_idx].float(), dim=-1)
    cos = (rows_a @ rows_o.T).cpu()
    pairs = [
        AntipodalPair(
            active_feature=fa.feature,
            opposed_feature=fo.feature,
            decoder_cosine=cos[i, j].item(),
            activation=fa.value,
            projection=fo.value,
        )
        for i, fa in enumerate(active)
        for j, fo in enumerate(opposed)
        if fa.feature != fo.feature and cos[i, j].item() <= -threshold
    ]
    return sorted(pairs, key=lambda p: p.decoder_cosine)


def _format_features(features: list[FeatureValue]) -> str:
    return ", ".join(f"{f.feature} ({f.value:+.3g})" for f in features) or "none"
