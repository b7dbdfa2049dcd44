"""Validation of the direction and scale arguments shared by the SAE-TS steps."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_directions(directions: Tensor) -> Tensor:
    d = torch.as_tensor(directions).detach().float().cpu()
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError(f"directions must be (n, d) with n >= 1, got {tuple(d.shape)}.")
    if not bool(torch.isfinite(d).all()):
        raise ValueError("directions contain NaN or inf.")
    return d


def per_row_scales(scales: Any, n: int) -> Tensor:
    s = torch.as_tensor(scales, dtype=torch.float32).detach().cpu().flatten()
    if s.numel() == 1:
        s = s.expand(n).clone()
    if s.shape != (n,) or not bool(torch.isfinite(s).all()):
        raise ValueError(
            f"scales must be one finite number or one per direction ({n}), got {scales!r}."
        )
    return s
