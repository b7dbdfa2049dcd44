"""Content digests that key the on-disk caches."""

from __future__ import annotations

import hashlib

from torch import Tensor

__all__ = ["tensor_digest"]


def tensor_digest(*tensors: Tensor) -> str:
    """A short sha256 of the tensors' float32 values (device and dtype of storage ignored)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
