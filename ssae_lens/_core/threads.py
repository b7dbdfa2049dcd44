"""Torch's intra-op thread count, set for one block of work and restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["intra_op_threads"]


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (``None``: leave the setting alone).

    The count is process-wide while the block runs; the previous value is restored on exit.
    """
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads}.")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
