"""Finite numbers: the check that a model's weights are finite before they are saved or
published, and the cheap check of a tensor that runs on every forward pass."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["NonFiniteError", "all_finite", "check_finite_weights"]


class NonFiniteError(ValueError):
    """A loss or a weight is NaN or infinite: the model is not worth saving."""


def all_finite(t: Tensor) -> bool:
    """Whether every element of ``t`` is finite (no NaN, no inf).

    A sum is finite only if every term is (a NaN or an inf term makes it NaN or inf), so a
    finite sum answers in one reduction; only a non-finite sum, which finite terms can also
    give by overflowing, falls back to the element-wise check. On Gemma's logits (8 x 16 x
    262,144 floats) ``isfinite(t).all()`` took ~26x longer than the sum on one CPU thread.
    """
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


@torch.no_grad()
def check_finite_weights(module: nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteError` naming every parameter or buffer with a NaN or inf value.

    ``what`` names the action refused (``"save"``, ``"publish"``) in the message.
    """
    bad = [
        name
        for name, t in [*module.named_parameters(), *module.named_buffers()]
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise NonFiniteError(
            f"refusing to {what} {type(module).__name__}: {', '.join(bad)} hold NaN or inf "
            "values (training diverged or the weights were damaged); retrain it, e.g. with a "
            "lower lr or a finite sparsity_target."
        )
