"""Seeding code that draws from torch's global RNG without changing the caller's RNG state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["scoped_seed"]


@contextmanager
def scoped_seed(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed torch's global RNG for the block, then restore the state it had before.

    For third-party code that draws from the global generator and takes none of its own
    (SAELens initialises weights inside ``SAE.__init__``). The CUDA generator of ``device`` is
    forked as well when it is a CUDA device.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
