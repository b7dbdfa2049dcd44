"""The Sparse Shift Autoencoder (SSAE) as a SAELens architecture named ``"ssae"``.

An SSAE encodes a *shift* ``delta = z(x~) - z(x)`` between the activations of two
paired texts into a sparse, **signed** code (a concept can be added or removed,
so there is no ReLU) and decodes it with unit-norm decoder rows::

    delta_n = normalize(delta)
    c       = (delta_n - b_dec) @ W_enc + b_enc        # (..., d_sae), signed
    delta^  = denormalize(c @ W_dec + b_dec)           # W_dec rows have unit norm

With ``use_bias=False`` (the default) both biases are fixed zero buffers, so a
zero concept change gives a zero code and a zero shift. Evidence for that default:
on Gemma-3-270M word pairs a learned decoder bias absorbed the mean shift and the
matched cosine between SSAE rows and supervised single-concept directions fell
from ~0.88 to ~0.46 (layer 12).

Shift normalisations (``shift_normalization``):

- ``"none"``: shifts are used as they are.
- ``"scale"`` (default): one scalar estimated from data so that the mean squared
  norm of the shifts is 1. Linear, so identifiability is untouched, and it makes
  the sparsity target independent of the activations' scale.
- ``"standardize"``: per-sample ``(x - mean(x)) / (std(x) + 1e-5)`` over features,
  as in the SSAE reference code.
- ``"layer_norm"``: per-sample ``torch.nn.functional.layer_norm`` (biased
  variance, eps inside the root), as SAELens's own ``layer_norm`` option.
- ``"whiten"``: multiply by ``(E[delta delta^T] + eps I)^(-1/2)`` estimated from
  data (uncentred: a zero shift stays zero) and stored as buffers.

Data-dependent statistics are fitted by :meth:`fit_normalization` (``train_ssae``
calls it) and saved with the weights, so a loaded model reproduces them.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from numbers import Real
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from sae_lens import SAE, SAEConfig, TrainingSAE, TrainingSAEConfig
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput, TrainStepOutput
from torch import Tensor, nn
from typing_extensions import override

from ssae_lens._core.finite import check_finite_weights
from ssae_lens._core.rng import scoped_seed

ShiftNormalization = Literal["none", "scale", "standardize", "layer_norm", "whiten"]
CodeNormalization = Literal["none", "layer_norm"]
SparsityMode = Literal["constraint", "l1", "topk", "none"]
ReconstructionLoss = Literal["relative", "mse"]

SHIFT_NORMALIZATIONS: tuple[str, ...] = get_args(ShiftNormalization)
CODE_NORMALIZATIONS: tuple[str, ...] = get_args(CodeNormalization)
SPARSITY_MODES: tuple[str, ...] = get_args(SparsityMode)
RECONSTRUCTION_LOSSES: tuple[str, ...] = get_args(ReconstructionLoss)

CONSTRAINT_REFERENCE_WIDTH = 32  # widths up to this keep the constraint term as it is
_STANDARDIZE_EPS = 1e-5
_WHITEN_EPS = 1e-4  # ridge, relative to the mean eigenvalue of the second moment


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown {name} {value!r}; choose one of {list(choices)}.{hint}")


def _check_finite(cfg: object) -> None:
    """Raise unless every number among the config's fields is finite (NaN passes ``<= 0``)."""
    for f in fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if isinstance(value, Real) and not isinstance(value, bool) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value!r}.")


@dataclass(kw_only=True)
class _SSAEArchitectureConfig:
    """Fields shared by the inference and training configs of an SSAE."""

    shift_normalization: ShiftNormalization = "scale"
    code_normalization: CodeNormalization = "none"
    use_bias: bool = False
    topk: int | None = None

    def _validate_ssae_fields(self, d_in: int, d_sae: int) -> None:
        _check_finite(self)
        if not isinstance(d_in, int) or d_in < 1:
            raise ValueError(f"d_in must be a positive int (the shift width), got {d_in!r}.")
        if not isinstance(d_sae, int) or d_sae < 1:
            raise ValueError(
                f"d_sae must be a positive int (the number of code units), got {d_sae!r}; "
                "use about as many units as concepts you expect to vary."
            )
        _check_choice("shift_normalization", self.shift_normalization, SHIFT_NORMALIZATIONS)
        _check_choice("code_normalization", self.code_normalization, CODE_NORMALIZATIONS)
        if self.code_normalization == "layer_norm" and d_sae < 2:
            raise ValueError(
                "code_normalization='layer_norm' makes a one-unit code constant; "
                "use d_sae >= 2 or code_normalization='none'."
            )
        if self.topk is not None and not 1 <= self.topk <= d_sae:
            raise ValueError(f"topk must be in [1, d_sae={d_sae}] or None, got {self.topk}.")
        # Options inherited from SAELens's base configs that the SSAE does not implement.
        normalize = getattr(self, "normalize_activations", "none")
        if normalize != "none":
            raise ValueError(
                f"normalize_activations={normalize!r} is SAELens's input normalisation, which "
                "the SSAE does not use; leave it 'none' and set shift_normalization instead."
            )
        if not getattr(self, "apply_b_dec_to_input", True):
            raise ValueError(
                "apply_b_dec_to_input=False is not supported: the SSAE always subtracts b_dec "
                "(zero unless use_bias=True) from the normalised shift."
            )


@dataclass
class SSAEConfig(SAEConfig, _SSAEArchitectureConfig):
    """Inference config of an :class:`SSAE` (architecture ``"ssae"``)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "ssae"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_ssae_fields(self.d_in, self.d_sae)


@dataclass(kw_only=True)
class TrainingSSAEConfig(TrainingSAEConfig, _SSAEArchitectureConfig):
    """Training config of an SSAE: architecture, objective and optimisation.

    ``TrainingSSAEConfig(d_in=..., d_sae=...)`` trains well as it is. Every field
    that is not needed for inference is recorded in the saved model's metadata
    (``training_architecture_details``), so a published SSAE documents its recipe.

    Objective: reconstruction (``"relative"``: ``mean ||d^ - d||^2 / ||d||^2``,
    or ``"mse"``) under a sparsity regime:

    - ``"constraint"`` (default): ``mean |c| <= sparsity_target``, solved as a
      min-max Lagrangian: gradient descent on the weights, projected gradient
      ascent on a non-negative multiplier (learning rate
      ``lr * multiplier_lr_ratio``). The target can ramp linearly from
      ``sparsity_target_start`` to ``sparsity_target`` over
      ``sparsity_target_ramp_steps``. ``sparsity_target="auto"`` (default) is chosen
      from the shifts by :func:`~ssae_lens.ssae.selection.select_sparsity_target` when
      :func:`~ssae_lens.train_ssae` starts; the saved SSAE holds the chosen number and
      the curve it came from (``metadata.sparsity_selection``).

      The constraint term is ``s * lambda * (mean |c| - target)`` with the width factor
      ``s = max(1, d_sae / 32)`` (:func:`constraint_scale`). ``mean |c|`` averages over the
      code units, so the pressure that holds a code to a given L1 norm
      (``target * d_sae``) grows with the width while Adam moves ``lambda`` by about its
      learning rate per step: without ``s`` a wide code never reaches its constraint in
      the default number of steps. ``lambda`` itself (logged, ``lagrange_multiplier``) is
      the multiplier before the factor.
    - ``"l1"``: the penalty ``l1_coefficient * mean |c|``.
    - ``"topk"``: keep the ``topk`` largest-magnitude units (set ``topk``).
    - ``"none"``: no sparsity: the unconstrained autoencoder baseline ("aff").
    """

    sparsity: SparsityMode = "constraint"
    # "auto": chosen from the data at the start of train_ssae (constraint mode only; the
    # other modes do not read it).
    sparsity_target: float | Literal["auto"] = "auto"
    sparsity_target_start: float | None = None
    sparsity_target_ramp_steps: int = 0
    multiplier_lr_ratio: float = 0.5
    l1_coefficient: float = 1.0
    reconstruction_loss: ReconstructionLoss = "relative"
    lr: float = 1e-2
    lr_end_ratio: float = 0.1
    batch_size: int = 256
    training_steps: int = 3000
    # SAELens's TrainingSAEConfig field; the SSAE's decoder rows have unit norm from the
    # start and after every step, so it must stay None (checked in __post_init__).
    decoder_init_norm: float | None = None

    @override
    @classmethod
    def architecture(cls) -> str:
        return "ssae"

    def __post_init__(self) -> None:
        self._validate_ssae_fields(self.d_in, self.d_sae)
        _check_choice("sparsity", self.sparsity, SPARSITY_MODES)
        _check_choice("reconstruction_loss", self.reconstruction_loss, RECONSTRUCTION_LOSSES)
        if (self.sparsity == "topk") != (self.topk is not None):
            raise ValueError(
                "sparsity='topk' needs topk=<units to keep>, and topk needs sparsity='topk'; "
                f"got sparsity={self.sparsity!r}, topk={self.topk!r}."
            )
        if self.decoder_init_norm is not None:
            raise ValueError(
                f"decoder_init_norm={self.decoder_init_norm} is a SAELens option the SSAE does "
                "not use (its decoder rows always have unit norm); leave it None."
            )
        if isinstance(self.sparsity_target, str):
            if self.sparsity_target != "auto":
                raise ValueError(
                    f"sparsity_target must be a number > 0 or 'auto', got {self.sparsity_target!r}."
                )
        elif self.sparsity_target <= 0:
            raise ValueError(f"sparsity_target must be > 0, got {self.sparsity_target}.")
        for name in ("lr", "lr_end_ratio", "batch_size", "training_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.sparsity_target_start is not None and self.sparsity_target_start <= 0:
            raise ValueError(
                f"sparsity_target_start must be > 0 or None, got {self.sparsity_target_start}."
            )
        for name in ("multiplier_lr_ratio", "l1_coefficient", "sparsity_target_ramp_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        super().__post_init__()

    def sparsity_target_at(self, step: int) -> float:
        """The constraint level at a training step (after the optional linear ramp)."""
        if self.sparsity_target == "auto":
            raise ValueError(
                "sparsity_target='auto' has not been resolved: train with train_ssae (which "
                "chooses it from the shifts), or set it from select_sparsity_target(...).resolve."
            )
        start = self.sparsity_target_start
        if start is None or step >= self.sparsity_target_ramp_steps:
            return self.sparsity_target
        frac = step / max(self.sparsity_target_ramp_steps, 1)
        return start + frac * (self.sparsity_target - start)


def constraint_scale(d_sae: int) -> float:
    """The width factor ``max(1, d_sae / CONSTRAINT_REFERENCE_WIDTH)`` of the constraint term
    (see :class:`TrainingSSAEConfig`)."""
    return max(1.0, d_sae / CONSTRAINT_REFERENCE_WIDTH)


class _SSAECore:
    """Weights, normalisation, encode and decode shared by SSAE and TrainingSSAE."""

    cfg: SSAEConfig | TrainingSSAEConfig
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_enc: Tensor
    b_dec: Tensor
    shift_scale: Tensor
    whitening: Tensor
    unwhitening: Tensor

    def initialize_weights(self) -> None:
        cfg = self.cfg
        kw = {"dtype": self.dtype, "device": self.device}
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, **kw)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())
        for name, size in (("b_dec", cfg.d_in), ("b_enc", cfg.d_sae)):
            zeros = torch.zeros(size, **kw)
            if cfg.use_bias:
                setattr(self, name, nn.Parameter(zeros))
            else:
                self.register_buffer(name, zeros)
        if cfg.shift_normalization == "scale":
            self.register_buffer("shift_scale", torch.ones((), **kw))
        elif cfg.shift_normalization == "whiten":
            self.register_buffer("whitening", torch.eye(cfg.d_in, **kw))
            self.register_buffer("unwhitening", torch.eye(cfg.d_in, **kw))

    def get_activation_fn(self) -> nn.Module:
        """None: the codes are signed (SAELens's default here would be a ReLU)."""
        return nn.Identity()

    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        """SAELens's ``save_model``, refused (before writing anything) for non-finite weights."""
        check_finite_weights(self, f"save to {str(path)!r}")
        return super().save_model(path)  # type: ignore[misc]

    def _check_width(self, x: Tensor, width: int, name: str, what: str) -> None:
        if x.shape[-1] != width:
            raise ValueError(
                f"{what} must have last dimension {name}={width} for this SSAE, got shape "
                f"{tuple(x.shape)}; pass {what} of the hook point it was trained on "
                f"({self.cfg.metadata.hook_name or 'see cfg.metadata.hook_name'})."
            )

    def _setup_activation_normalization(self) -> None:
        # SAELens calls this hook in SAE.__init__; it installs the shift normalisation.
        mode = self.cfg.shift_normalization
        if mode in ("standardize", "layer_norm"):
            self.run_time_activation_norm_fn_in = self._per_sample_norm_in
            self.run_time_activation_norm_fn_out = self._per_sample_norm_out
        else:
            self.run_time_activation_norm_fn_in = self._linear_norm_in
            self.run_time_activation_norm_fn_out = self._linear_norm_out

    def _linear_norm_in(self, x: Tensor) -> Tensor:
        mode = self.cfg.shift_normalization
        if mode == "scale":
            return x * self.shift_scale
        if mode == "whiten":
            return x @ self.whitening
        return x

    def _linear_norm_out(self, x: Tensor) -> Tensor:
        mode = self.cfg.shift_normalization
        if mode == "scale":
            return x / self.shift_scale
        if mode == "whiten":
            return x @ self.unwhitening
        return x

    def _per_sample_norm_in(self, x: Tensor) -> Tensor:
        mu = x.mean(dim=-1, keepdim=True)
        if self.cfg.shift_normalization == "layer_norm":
            std = (x.var(dim=-1, unbiased=False, keepdim=True) + _STANDARDIZE_EPS).sqrt()
            out = (x - mu) / std
        else:
            std = x.std(dim=-1, keepdim=True)
            out = (x - mu) / (std + _STANDARDIZE_EPS)
            std = std + _STANDARDIZE_EPS
        self._norm_stats = (mu, std)
        return out

    def _per_sample_norm_out(self, x: Tensor) -> Tensor:
        stats = getattr(self, "_norm_stats", None)
        if stats is None:
            raise RuntimeError(
                f"shift_normalization={self.cfg.shift_normalization!r} is per-sample: decode() "
                "can only undo it right after encode() of the same shifts. Call forward(), "
                "or use decode_normalized() for codes without a source shift."
            )
        mu, std = stats
        return x * std + mu

    @torch.no_grad()
    def fit_normalization(self, shifts: Float[Tensor, "n d_in"]) -> None:
        """Estimate the data-dependent shift normalisation (``scale``/``whiten``) from shifts."""
        x = shifts.detach().to(self.W_dec.device, torch.float64).reshape(-1, self.cfg.d_in)
        mode = self.cfg.shift_normalization
        if mode == "scale":
            mean_sq = x.pow(2).sum(-1).mean()
            if mean_sq <= 0:
                raise ValueError("All shifts are zero: nothing to learn from identical pairs.")
            self.shift_scale.copy_(mean_sq.rsqrt())
        elif mode == "whiten":
            second_moment = x.T @ x / x.shape[0]
            eigvals, eigvecs = torch.linalg.eigh(second_moment)
            ridge = _WHITEN_EPS * eigvals.clamp(min=0).mean()
            eigvals = eigvals.clamp(min=0) + ridge
            self.whitening.copy_((eigvecs * eigvals.rsqrt()) @ eigvecs.T)
            self.unwhitening.copy_((eigvecs * eigvals.sqrt()) @ eigvecs.T)

    def encode_with_hidden_pre(
        self, x: Float[Tensor, "... d_in"]
    ) -> tuple[Float[Tensor, "... d_sae"], Float[Tensor, "... d_sae"]]:
        """Return ``(codes, pre-codes)``: pre-codes before code normalisation / TopK."""
        self._check_width(x, self.cfg.d_in, "d_in", "shifts")
        return self._codes_of_normalized(self.process_sae_in(x))

    def _codes_of_normalized(self, sae_in: Tensor) -> tuple[Tensor, Tensor]:
        # sae_in: normalised shifts minus b_dec.
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        codes = hidden_pre
        if self.cfg.code_normalization == "layer_norm":
            codes = nn.functional.layer_norm(codes, codes.shape[-1:])
        if self.cfg.topk is not None:
            keep = codes.abs().topk(self.cfg.topk, dim=-1).indices
            codes = torch.zeros_like(codes).scatter(-1, keep, codes.gather(-1, keep))
        return self.hook_sae_acts_post(codes), hidden_pre

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Signed sparse codes of shifts ``x`` (raw, un-normalised shifts)."""
        return self.encode_with_hidden_pre(x)[0]

    def decode(self, feature_acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """Shifts reconstructed from codes, in the raw shift space."""
        self._check_width(feature_acts, self.cfg.d_sae, "d_sae", "codes")
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        return self.run_time_activation_norm_fn_out(out)

    def decode_normalized(
        self, feature_acts: Float[Tensor, "... d_sae"]
    ) -> Float[Tensor, "... d_in"]:
        """Reconstruction in the normalised shift space (what the loss compares)."""
        return feature_acts @ self.W_dec + self.b_dec

    @torch.no_grad()
    def steering_directions(self) -> Float[Tensor, "d_sae d_in"]:
        """All decoder rows mapped back to the raw shift space, each with unit norm.

        For linear normalisations (``none``/``scale``/``whiten``) the row is pushed
        through the inverse normalisation, so adding it to the model's activations
        moves them along the learned concept. Per-sample normalisations are not
        invertible for a direction (their mean-centring drops the all-ones
        component); the row is returned as it is.
        """
        rows = self.W_dec.detach()
        if self.cfg.shift_normalization == "whiten":
            rows = rows @ self.unwhitening
        return rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def steering_vector(self, i: int) -> Float[Tensor, " d_in"]:
        """Unit-norm decoder row ``i`` in the model's activation space."""
        if not -self.cfg.d_sae <= i < self.cfg.d_sae:
            raise IndexError(f"latent {i} out of range for d_sae={self.cfg.d_sae}.")
        return self.steering_directions()[i]

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm, folding the norms into the encoder."""
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-12)
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms[None, :])
        if self.cfg.use_bias:
            self.b_enc.mul_(norms)


class SSAE(_SSAECore, SAE[SSAEConfig]):
    """Inference SSAE: ``encode`` shifts to signed codes, ``decode`` codes to shifts.

    Load with ``sae_lens.SAE.load_from_disk(path)`` or ``SAE.from_pretrained``
    once ``ssae_lens`` is imported; train with :func:`ssae_lens.train_ssae`.
    """


class TrainingSSAE(_SSAECore, TrainingSAE[TrainingSSAEConfig]):
    """Training SSAE: adds the Lagrange multiplier and the SSAE objective.

    The multiplier is a parameter whose gradient is reversed, so the one Adam
    optimiser of SAELens's ``SAETrainer`` descends on the weights and ascends on
    the multiplier; it is projected onto ``>= 0`` before every step.
    """

    lagrange_multiplier: nn.Parameter

    def __init__(self, cfg: TrainingSSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.lagrange_multiplier = nn.Parameter(
            torch.zeros((), dtype=self.dtype, device=self.device),
            requires_grad=cfg.sparsity == "constraint",
        )

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l1": self.cfg.l1_coefficient} if self.cfg.sparsity == "l1" else {}

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: Tensor,
        hidden_pre: Tensor,
        sae_out: Tensor,
    ) -> dict[str, Tensor]:
        sparsity = feature_acts.abs().mean()
        if self.cfg.sparsity == "l1":
            return {"l1_loss": step_input.coefficients["l1"] * sparsity}
        if self.cfg.sparsity == "constraint":
            violation = sparsity - self.cfg.sparsity_target_at(step_input.n_training_steps)
            multiplier = _reverse_grad(self.lagrange_multiplier)
            return {"constraint_loss": constraint_scale(self.cfg.d_sae) * multiplier * violation}
        return {}

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        with torch.no_grad():
            # Projection onto the constraint set (unit rows, multiplier >= 0). Folding the
            # norms into the encoder here would undo the sparsity pressure on the codes.
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-12))
            self.lagrange_multiplier.clamp_(min=0)
        x = step_input.sae_in
        x_n = self.run_time_activation_norm_fn_in(x.to(self.dtype))
        codes, hidden_pre = self._codes_of_normalized(x_n - self.b_dec)
        recon_n = self.decode_normalized(codes)
        sq_err = (recon_n - x_n).pow(2).sum(-1)
        if self.cfg.reconstruction_loss == "relative":
            recon_loss = (sq_err / x_n.pow(2).sum(-1).clamp(min=1e-8)).mean()
        else:
            recon_loss = sq_err.mean()
        aux = self.calculate_aux_loss(step_input, codes, hidden_pre, recon_n)
        loss = recon_loss + sum(aux.values(), torch.zeros((), device=x.device))
        sparsity = codes.detach().abs().mean()
        # Without a constraint there is no level to meet: target and violation read 0.
        constrained = self.cfg.sparsity == "constraint"
        target = self.cfg.sparsity_target_at(step_input.n_training_steps) if constrained else 0.0
        metrics: dict[str, Any] = {
            "mean_abs_code": sparsity,
            "sparsity_target": target,
            "constraint_violation": sparsity - target if constrained else 0.0 * sparsity,
            "lagrange_multiplier": self.lagrange_multiplier.detach().clone(),
        }
        return TrainStepOutput(
            sae_in=x,
            sae_out=self.run_time_activation_norm_fn_out(recon_n),
            feature_acts=codes,
            hidden_pre=hidden_pre,
            loss=loss,
            losses={"recon_loss": recon_loss, **aux},
            metrics=metrics,
        )

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        state_dict.pop("lagrange_multiplier", None)

    def to_inference(self) -> SSAE:
        """An inference :class:`SSAE` with the same weights and normalisation."""
        cfg = SSAEConfig.from_dict(self.cfg.get_inference_sae_cfg_dict())
        with scoped_seed(0, cfg.device):  # its random initialisation is overwritten below
            sae = SSAE(cfg)
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        self.process_state_dict_for_saving_inference(state)
        sae.load_state_dict(state)
        return sae


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


def _reverse_grad(x: Tensor) -> Tensor:
    """Identity whose gradient is negated: turns descent into ascent for ``x``."""
    return _ReverseGrad.apply(x)


def register() -> None:
    """Register the ``"ssae"`` architecture with SAELens (idempotent)."""
    if "ssae" not in SAE_CLASS_REGISTRY:
        register_sae_class("ssae", SSAE, SSAEConfig)
    if "ssae" not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class("ssae", TrainingSSAE, TrainingSSAEConfig)


register()
