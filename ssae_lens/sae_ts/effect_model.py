"""SAE-TS step 3: the linear effect model ``y(s) = s W + b``, fitted on measured effects."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from ssae_lens._core.io import atomic_path
from ssae_lens.sae_ts._hub_entry import HubEntry

__all__ = ["EffectModel", "FitReport"]

EFFECT_MODEL_FILENAME = "effect_model.safetensors"


@dataclass
class FitReport:
    """Fit quality of an :class:`EffectModel` on its held-out split.

    ``r2`` is ``1 - SSE / SST`` over all held-out effects (features pooled, each centred on
    its own held-out mean); ``r2_per_feature`` is the same per feature (NaN where a feature
    does not vary on the held-out set).
    """

    method: str
    n_train: int
    n_test: int
    train_mse: float
    test_mse: float
    r2: float
    r2_per_feature: Float[Tensor, " d_sae"] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["r2_per_feature"] = self.r2_per_feature.tolist()
        return out


@dataclass
class EffectModel(HubEntry):
    """The linear effect model ``y(s) = s W + b`` of SAE-TS.

    Attributes:
        W: ``(d_model, d_sae)``; column ``j`` is the direction that most raises feature ``j``.
        b: ``(d_sae,)``, the effect every steering direction shares.
        hook_name: the hook point the directions live at.
        model_name: the model, if known.
        provenance: JSON-serialisable facts about the fit.
    """

    hub_kind: ClassVar[str] = "effect model"
    W: Float[Tensor, "d_model d_sae"]
    b: Float[Tensor, " d_sae"]
    hook_name: str | None = None
    model_name: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.W = torch.as_tensor(self.W).detach().float()
        self.b = torch.as_tensor(self.b).detach().float()
        if self.W.ndim != 2 or self.b.shape != (self.W.shape[1],):
            raise ValueError(
                f"EffectModel needs W (d_model, d_sae) and b (d_sae,), got "
                f"{tuple(self.W.shape)} and {tuple(self.b.shape)}."
            )

    @property
    def d_model(self) -> int:
        return self.W.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W.shape[1]

    def predict(self, directions: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_sae"]:
        """Predicted effects ``s W + b``."""
        return torch.as_tensor(directions).to(self.W) @ self.W + self.b

    @classmethod
    def fit(
        cls,
        directions: Float[Tensor, "n d_model"],
        effects: Float[Tensor, "n d_sae"],
        *,
        method: str = "ridge",
        test_fraction: float = 0.2,
        seed: int = 0,
        weight_decay: float | Sequence[float] = 1e-4,
        steps: int = 2000,
        lr: float = 1e-2,
        hook_name: str | None = None,
        model_name: str | None = None,
    ) -> tuple[EffectModel, FitReport]:
        """Fit ``W, b`` on a random ``1 - test_fraction`` split; report the held-out fit.

        ``method="ridge"`` (default) solves the regularised least squares exactly:
        ``[W; b] = (X^T X + weight_decay * n_train * I_W)^-1 X^T Y`` with ``X = [s, 1]`` (the
        bias is not penalised); deterministic and fast. ``method="adam"`` minimises the same
        mean squared error plus ``weight_decay |W|^2 / 2`` with full-batch Adam for ``steps``
        steps at learning rate ``lr``, as in the paper.

        A sequence of ``weight_decay`` values (ridge only) picks one by 5-fold
        cross-validation on the training split alone (lowest mean squared error; the
        held-out split is never used), recorded in ``provenance["weight_decay"]``.
        """
        x = torch.as_tensor(directions).detach().double().cpu()
        y = torch.as_tensor(effects).detach().double().cpu()
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"fit needs directions (n, d_model) and effects (n, d_sae) with the same n, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}."
            )
        if not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}.")
        n = x.shape[0]
        n_test = int(round(n * test_fraction))
        if n - n_test < 2:
            raise ValueError(f"Too few pairs ({n}) to fit with test_fraction={test_fraction}.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        test, train = order[:n_test], order[n_test:]
        if not isinstance(weight_decay, (int, float)):
            if method != "ridge":
                raise ValueError("A grid of weight_decay values needs method='ridge'.")
            weight_decay = _cv_weight_decay(x[train], y[train], list(weight_decay), seed)
        if method == "ridge":
            w, b = _ridge(x[train], y[train], weight_decay)
        elif method == "adam":
            w, b = _adam(x[train], y[train], weight_decay, steps, lr, seed)
        else:
            raise ValueError(f"Unknown fit method {method!r}; use 'ridge' or 'adam'.")
        provenance = dict(
            method=method, n_train=len(train), n_test=n_test, seed=seed, weight_decay=weight_decay
        )
        fitted = cls(w, b, hook_name=hook_name, model_name=model_name, provenance=provenance)
        train_mse = float(((x[train] @ w.double() + b.double() - y[train]) ** 2).mean())
        report = _report(method, x[test], y[test], w, b, len(train), train_mse)
        return fitted, report

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``W`` and ``b`` to one safetensors file (metadata in its header), atomically."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / EFFECT_MODEL_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(
            hook_name=self.hook_name, model_name=self.model_name, provenance=self.provenance
        )
        tensors = {"W": self.W.contiguous(), "b": self.b.contiguous()}
        header = {"ssae_lens": json.dumps(meta)}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, tmp, metadata=header)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EffectModel:
        """Load a model written by :meth:`save` (a file, or a folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / EFFECT_MODEL_FILENAME
        if not path.exists():
            raise FileNotFoundError(f"No effect model at {str(path)!r}: write one with save().")
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("ssae_lens", "{}"))
            return cls(f.get_tensor("W"), f.get_tensor("b"), **meta)


def _cv_weight_decay(x: Tensor, y: Tensor, grid: list[float], seed: int, folds: int = 5) -> float:
    """The ridge penalty of ``grid`` with the lowest ``folds``-fold cross-validated MSE."""
    if not grid:
        raise ValueError("weight_decay grid is empty.")
    if x.shape[0] < folds:
        raise ValueError(f"Cross-validation needs >= {folds} training pairs, got {x.shape[0]}.")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    parts = order.chunk(folds)
    errors = []
    for alpha in grid:
        sse = 0.0
        for k, held in enumerate(parts):
            fit_rows = torch.cat([p for j, p in enumerate(parts) if j != k])
            w, b = _ridge(x[fit_rows], y[fit_rows], alpha)
            sse += float(((x[held] @ w.double() + b.double() - y[held]) ** 2).sum())
        errors.append(sse)
    return float(grid[min(range(len(grid)), key=errors.__getitem__)])


def _ridge(x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    design = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
    penalty = torch.eye(design.shape[1], dtype=x.dtype) * alpha * x.shape[0]
    penalty[-1, -1] = 0
    coef = torch.linalg.solve(design.T @ design + penalty, design.T @ y)
    return coef[:-1].float(), coef[-1].float()


def _adam(
    x: Tensor, y: Tensor, decay: float, steps: int, lr: float, seed: int
) -> tuple[Tensor, Tensor]:
    x, y = x.float(), y.float()
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], y.shape[1], generator=gen) * 1e-3).requires_grad_()
    b = y.mean(0).clone().requires_grad_()
    optim = torch.optim.Adam([w, b], lr=lr)
    for _ in tqdm(range(steps), desc="fitting effect model", disable=None):
        optim.zero_grad()
        loss = ((x @ w + b - y) ** 2).mean() + decay * (w**2).sum() / 2
        loss.backward()
        optim.step()
    return w.detach(), b.detach()


def _report(
    method: str, x: Tensor, y: Tensor, w: Tensor, b: Tensor, n_train: int, train_mse: float
) -> FitReport:
    if x.shape[0] == 0:
        nan = float("nan")
        return FitReport(method, n_train, 0, train_mse, nan, nan, torch.full((w.shape[1],), nan))
    resid = y - (x @ w.double() + b.double())
    centred = y - y.mean(0)
    sse, sst = (resid**2).sum(0), (centred**2).sum(0)
    per_feature = torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-300), torch.nan)
    r2 = float(1 - sse.sum() / sst.sum()) if float(sst.sum()) > 0 else float("nan")
    return FitReport(
        method, n_train, x.shape[0], train_mse, float((resid**2).mean()), r2, per_feature.float()
    )
