"""Padding token rows into one batch: the one place that decides where padding goes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

__all__ = ["pad_token_rows"]


def pad_token_rows(
    rows: Sequence[Sequence[int] | Tensor],
    *,
    side: Literal["left", "right"],
    pad_id: int | None,
    device: torch.device | str | None = None,
) -> tuple[Int[Tensor, "batch width"], Bool[Tensor, "batch width"]]:
    """Token rows of different lengths as one ``(batch, width)`` tensor and its mask.

    Real tokens are packed against the right (``side="left"``: padding first, as generation
    needs) or the left (``side="right"``) edge; the mask is ``True`` at real tokens. Padding
    uses ``pad_id`` (0 if the tokenizer has none); it is never attended to.
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}.")
    if not rows:
        raise ValueError("No token rows to pad.")
    lengths = [len(r) for r in rows]
    width = max(lengths)
    tokens = torch.full((len(rows), width), 0 if pad_id is None else pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        start = width - n if side == "left" else 0
        tokens[i, start : start + n] = torch.as_tensor(row, dtype=torch.long)
        mask[i, start : start + n] = True
    return tokens.to(device), mask.to(device)
