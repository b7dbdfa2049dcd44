"""``ssae_lens.load``: SAELens's ``SAE.load_from_disk`` with errors that say what is wrong.

SAELens picks the class from ``cfg.json``'s ``architecture``; it knows ``"ssae"`` only once
``ssae_lens`` is imported (SAELens has no plugin entry points), and otherwise fails with a bare
``KeyError: 'ssae'``. A truncated weights file gives a raw ``SafetensorError``, and a
``cfg.json`` that does not fit the weights a ``load_state_dict`` size mismatch. :func:`load`
checks the folder first and names the file and the fix instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY
from safetensors import SafetensorError, safe_open

from ssae_lens._core.finite import check_finite_weights

__all__ = ["SAELoadError", "load"]

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"


class SAELoadError(ValueError):
    """A saved dictionary folder that cannot be loaded; the message names the file and fix."""


def load(path: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None) -> SAE:
    """Load an SSAE (or any SAELens SAE) saved with ``save_model``, checking the folder first.

    Args:
        path: the folder holding ``cfg.json`` and ``sae_weights.safetensors``.
        device: where to put the weights.
        dtype: the weights' dtype (default: the one in ``cfg.json``).

    Raises:
        FileNotFoundError: no such folder.
        SAELoadError: a missing or unreadable file, an architecture no imported package
            registered, weights that do not match ``cfg.json``, or NaN/inf weights.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder {str(folder)!r} does not exist.")
    missing = [n for n in (CFG_FILENAME, WEIGHTS_FILENAME) if not (folder / n).is_file()]
    if missing:
        raise SAELoadError(
            f"{folder} is not a saved SAELens SAE: no {' or '.join(missing)} (save_model "
            "writes both)."
        )
    cfg = _read_cfg(folder / CFG_FILENAME)
    shapes = _weight_shapes(folder / WEIGHTS_FILENAME)
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    w_dec = shapes.get("W_dec")
    if w_dec is not None and w_dec != [d_sae, d_in]:
        raise SAELoadError(
            f"{folder / CFG_FILENAME} says d_sae={d_sae}, d_in={d_in} but {WEIGHTS_FILENAME} "
            f"holds W_dec of shape {tuple(w_dec)}: the two files come from different "
            "dictionaries. Save the SAE again with save_model (it writes both together)."
        )
    try:
        sae = SAE.load_from_disk(folder, device=device, dtype=dtype)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SAELoadError(f"{folder} could not be loaded: {first}") from err
    try:
        check_finite_weights(sae, f"load {folder}")
    except ValueError as err:
        raise SAELoadError(str(err)) from None
    return sae


def _read_cfg(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAELoadError(f"{path} is not valid JSON ({err}); save the SAE again.") from None
    if not isinstance(cfg, dict):
        raise SAELoadError(f"{path} is not a SAELens config (not a JSON object).")
    architecture = cfg.get("architecture")
    if architecture not in SAE_CLASS_REGISTRY:
        raise SAELoadError(
            f"{path} names architecture {architecture!r}, which no imported package has "
            f"registered (known: {sorted(SAE_CLASS_REGISTRY)}); import the package that "
            "defines it first."
        )
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool):
            raise SAELoadError(f"{path} has no integer {key!r}; save the SAE again.")
    return cfg


def _weight_shapes(path: Path) -> dict[str, list[int]]:
    """The tensors' shapes from the safetensors header (which also checks the file's length)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise SAELoadError(
            f"{path} is damaged or truncated ({err}); save or download it again."
        ) from None
