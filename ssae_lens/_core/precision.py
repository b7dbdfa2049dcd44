"""The precision a model runs in: one option for loading, harvesting, generation and SAE-TS.

- ``"float32"``: float32 weights and arithmetic (the default).
- ``"bf16-autocast"``: float32 weights; forward passes run under ``torch.autocast`` with
  bfloat16, so matrix products run in bfloat16 while the residual stream, norms and softmax
  stay float32.
- ``"bfloat16"``: the weights are bfloat16 and so is every activation.

:func:`ssae_lens.models.load_model` loads a model for a precision (``"bfloat16"`` casts the
weights) and records it for the model. Functions that run a model take ``precision=None``,
meaning the model's own: the one ``load_model`` recorded, else the one its weights imply
(bfloat16 weights: ``"bfloat16"``; float32 weights: ``"float32"``). An explicit precision must
fit the weights: ``"float32"`` and ``"bf16-autocast"`` need float32 weights, ``"bfloat16"``
needs bfloat16 weights (a bfloat16 model cannot run in float32, and casting the caller's model
in place would change it behind their back). A ``TransformerBridge`` refuses ``"bf16-autocast"``
(its Hugging Face attention mask overflows to NaN on padded rows under autocast); load it in
``"bfloat16"``. Other weight dtypes are refused: Gemma's residual
stream overflows float16.

Results (activations, shifts, SAE-TS effects, scales) are float32 whatever the precision, and
every cache key names the precision. SSAE and SAE training always run in float32.

This module imports torch lazily: the config schema (and so ``ssae-lens --help``) uses it.
"""

from __future__ import annotations

import difflib
import weakref
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "PRECISIONS",
    "Precision",
    "autocast",
    "check_precision",
    "record_precision",
    "resolve_precision",
    "weights_dtype",
]

Precision = Literal["float32", "bf16-autocast", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# The precision load_model gave each model ("bf16-autocast" cannot be read off the weights).
_RECORDED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def check_precision(precision: Any) -> Precision:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming them."""
    if precision not in PRECISIONS:
        close = difflib.get_close_matches(str(precision), PRECISIONS, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"Unknown precision {precision!r}{hint}; use one of {', '.join(PRECISIONS)}."
        )
    return precision


def weights_dtype(precision: Precision) -> torch.dtype:
    """The dtype of a model's weights under ``precision``."""
    import torch

    return torch.bfloat16 if check_precision(precision) == "bfloat16" else torch.float32


def _model_dtype(model: nn.Module) -> torch.dtype:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1:
        raise ValueError(
            f"The model's floating-point weights have dtypes {sorted(map(str, dtypes))}; "
            "ssae-lens needs one dtype (float32, or bfloat16 for precision='bfloat16')."
        )
    return dtypes.pop()


def resolve_precision(model: nn.Module, precision: str | None = None) -> Precision:
    """The precision to run ``model`` in: ``precision`` checked against its weights, or, if
    ``None``, the one :func:`record_precision` recorded, else the one its weights imply."""
    import torch

    dtype = _model_dtype(model)
    if precision is None:
        recorded = _RECORDED.get(model)
        if recorded is not None and weights_dtype(recorded) == dtype:  # type: ignore[arg-type]
            return recorded  # type: ignore[return-value]
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(
                f"The model's weights are {dtype}; ssae-lens runs models in {', '.join(PRECISIONS)}"
                f" only. Load it with load_model(name, precision=...) or cast it with "
                "model.to(torch.float32)."
            )
        return "bfloat16" if dtype == torch.bfloat16 else "float32"
    precision = check_precision(precision)
    if precision == "bf16-autocast":
        from ssae_lens._core.backend import Model, backend

        reason = backend(model).no_autocast if isinstance(model, Model) else None
        if reason is not None:
            raise ValueError(
                f"precision='bf16-autocast' cannot run a {type(model).__name__}: {reason}. "
                "Load it with bfloat16 weights instead: load_model(name, backend='bridge', "
                "precision='bfloat16')."
            )
    if weights_dtype(precision) != dtype:
        raise ValueError(
            f"precision={precision!r} needs {weights_dtype(precision)} weights, but the model's "
            f"are {dtype}. Load the model with load_model(name, precision={precision!r}), or "
            f"leave precision unset to run it in the precision its weights imply."
        )
    return precision


def record_precision(model: nn.Module, precision: str) -> Precision:
    """Check ``precision`` against ``model``'s weights and make it the model's default."""
    _RECORDED[model] = resolve_precision(model, precision)
    return _RECORDED[model]  # type: ignore[return-value]


def autocast(precision: Precision, device: str | torch.device) -> torch.autocast:
    """The context a forward pass in ``precision`` on ``device`` runs in.

    Under ``"bf16-autocast"``, ``torch.autocast`` with bfloat16; otherwise autocast switched
    off, so that an autocast region of the caller cannot change a float32 or bfloat16 run.
    """
    import torch

    device_type = torch.device(device).type
    enabled = check_precision(precision) == "bf16-autocast"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)
