"""Steering vectors as llama.cpp control vectors (GGUF), for ``llama-cli --control-vector``.

The layout and the layer-index convention, as read in llama.cpp's source
(github.com/ggml-org/llama.cpp):

- ``common/common.cpp``, ``common_control_vector_load_one``: every tensor of the file
  must be named ``direction.N`` with an integer ``N >= 1`` (``direction.0`` and any other
  name make it reject the file), of type F32, 1-D, all of the same length ``n_embd``. No
  metadata key is read. ``direction.N`` is copied, times the file's strength
  (``--control-vector-scaled FILE S``; 1 for ``--control-vector``), to offset
  ``n_embd * (N - 1)`` of one buffer; several files add up.
- ``src/llama-adapter.cpp``, ``llama_adapter_cvec::apply``: block ``il`` gets the
  buffer's offset ``n_embd * (il - 1)`` for ``1 <= il < n_layer``, i.e. ``direction.il``;
  block 0 never has a control vector. ``tensor_for`` limits it to
  ``--control-vector-layer-range`` (default 1 to ``n_layer``).
- ``src/llama-graph.cpp``, ``build_cvec``, calls ``apply_to``, which adds the tensor to
  the hidden state where each architecture's graph calls ``build_cvec(cur, il)``: in
  ``src/models/gemma3.cpp`` (like the other architectures) at the end of block ``il``,
  after the feed-forward residual add (the tensor named ``l_out``), for every token.

So ``direction.N`` is added to the output of block ``N`` (0-based) at every position,
which is TransformerLens's ``blocks.N.hook_resid_post`` (the same activation as
``blocks.{N+1}.hook_resid_pre``) steered with ``positions="all"`` and the ``"add"``
operator. The output of block 0 (``blocks.0.hook_resid_post``,
``blocks.1.hook_resid_pre``), the embeddings (``blocks.0.hook_resid_pre``) and hook
points off the residual stream (attention, MLP, queries) cannot be expressed.

The metadata follows llama.cpp's own writer (``tools/cvector-generator/
cvector-generator.cpp``, ``export_gguf``): ``general.architecture = "controlvector"``,
``controlvector.model_hint`` (a string) and ``controlvector.layer_count`` (int32, the
number of direction tensors), plus ``ssae_lens.vectors``: a JSON list with each
tensor's source vectors.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ssae_lens._core.io import atomic_path
from ssae_lens.steering.vector import SteeringVector, model_key

__all__ = ["control_vector_layer", "write_control_vector"]

ARCHITECTURE = "controlvector"
_RESIDUAL = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)")


def control_vector_layer(hook_name: str, n_layers: int | None = None) -> int:
    """The llama.cpp control-vector layer ``N`` (tensor ``direction.N``) of a hook point.

    ``blocks.L.hook_resid_post`` maps to ``L`` and ``blocks.L.hook_resid_pre`` to ``L - 1``
    (see the module docstring).

    Raises:
        ValueError: a hook point llama.cpp cannot steer: off the residual stream, the
            embeddings or block 0's output, or (with ``n_layers``) past the last block.
    """
    match = _RESIDUAL.fullmatch(hook_name)
    if match is None:
        raise ValueError(
            f"llama.cpp control vectors are added to the residual stream at block outputs; "
            f"{hook_name!r} is not a residual hook point. Use a vector made at "
            "'blocks.L.hook_resid_post' (L >= 1) or 'blocks.L.hook_resid_pre' (L >= 2)."
        )
    block, side = int(match.group(1)), match.group(2)
    layer = block if side == "post" else block - 1
    if layer < 1:
        raise ValueError(
            f"llama.cpp cannot steer at {hook_name!r}: it never adds a control vector to the "
            "embeddings or to block 0's output (its loader rejects 'direction.0'). Use a "
            "vector made at 'blocks.L.hook_resid_post' with L >= 1."
        )
    if n_layers is not None and layer >= n_layers:
        raise ValueError(
            f"{hook_name!r} is direction.{layer}, but a {n_layers}-layer model has control "
            f"vectors only for layers 1 to {n_layers - 1}; llama.cpp would ignore it."
        )
    return layer


def write_control_vector(
    vectors: Sequence[SteeringVector],
    path: str | os.PathLike,
    *,
    scale: float | Sequence[float] | None = None,
    n_layers: int | None = None,
    model_hint: str | None = None,
) -> Path:
    """Write steering vectors, one or more per layer, into one llama.cpp control-vector file.

    Each vector goes to tensor ``direction.N`` of its hook point (:func:`control_vector_layer`)
    as ``scale * direction`` in float32; vectors of the same layer are summed, as
    :func:`~ssae_lens.steering.steer` would add both. Loaded by llama.cpp at strength 1,
    the file adds what ``steer(model, vectors, scale=scale, positions="all")`` adds.

    Args:
        vectors: steering vectors at residual hook points, all of one width and model.
        path: the ``.gguf`` file to write (atomically).
        scale: one scale, or one per vector (default: each vector's ``default_scale``).
        n_layers: the model's number of blocks, to refuse layers llama.cpp would ignore.
        model_hint: ``controlvector.model_hint``; llama.cpp's own writer stores the model's
            GGUF architecture there (``"gemma3"`` for Gemma 3). Default: the vectors'
            ``model_name``, else ``"unknown"``. llama.cpp does not read it.

    Returns:
        ``path``.
    """
    try:
        import gguf
    except ImportError as err:
        raise ImportError(
            "Writing GGUF control vectors needs the gguf package: pip install gguf "
            "(or pip install 'ssae-lens[models]')."
        ) from err
    vectors = list(vectors)
    if not vectors or not all(isinstance(v, SteeringVector) for v in vectors):
        raise TypeError("vectors must be a non-empty sequence of SteeringVector.")
    scales = _scales(vectors, scale)
    widths = {v.d for v in vectors}
    if len(widths) != 1:
        raise ValueError(
            f"All vectors of a control-vector file must have one width (llama.cpp's n_embd), "
            f"got widths {sorted(widths)}."
        )
    models: dict[str, str] = {}  # one name per model, as the first vector spells it
    for v in vectors:
        if v.model_name:
            models.setdefault(model_key(v.model_name), v.model_name)
    if len(models) > 1:
        raise ValueError(f"The vectors were made for different models: {sorted(models.values())}.")

    directions: dict[int, torch.Tensor] = {}
    sources: dict[int, list[dict]] = {}
    for vector, s in zip(vectors, scales, strict=True):
        layer = control_vector_layer(vector.hook_name, n_layers)
        added = vector.direction.detach().to("cpu", torch.float64) * s
        directions[layer] = directions.get(layer, 0) + added
        sources.setdefault(layer, []).append(
            {
                "hook_name": vector.hook_name,
                "scale": s,
                "method": vector.method,
                "model_name": vector.model_name,
                "norm": vector.norm,
            }
        )
    arrays = {}
    for layer in sorted(directions):
        tensor = directions[layer].to(torch.float32)
        if not torch.isfinite(tensor).all():
            raise ValueError(
                f"scale * direction for direction.{layer} overflows float32; use a smaller scale."
            )
        arrays[layer] = tensor.numpy()

    hint = model_hint or next(iter(models.values()), None) or "unknown"
    record = [{"tensor": f"direction.{layer}", "sources": sources[layer]} for layer in arrays]
    path = Path(path)
    with atomic_path(path, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_string(f"{ARCHITECTURE}.model_hint", hint)
        writer.add_int32(f"{ARCHITECTURE}.layer_count", len(arrays))
        writer.add_string("ssae_lens.vectors", json.dumps(record))
        for layer, array in arrays.items():
            writer.add_tensor(f"direction.{layer}", array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _scales(vectors: list[SteeringVector], scale: float | Sequence[float] | None) -> list[float]:
    if scale is None:
        return [v.default_scale for v in vectors]
    if isinstance(scale, (int, float)):
        return [float(scale)] * len(vectors)
    scales = [float(s) for s in scale]
    if len(scales) != len(vectors):
        raise ValueError(f"Got {len(scales)} scales for {len(vectors)} vectors.")
    return scales
