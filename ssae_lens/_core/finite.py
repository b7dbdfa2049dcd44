"""The one check that a model's weights are finite before they are saved or published."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NonFiniteError", "check_finite_weights"]


class NonFiniteError(ValueError):
    """A loss or a weight is NaN or infinite: the model is not worth saving."""


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
