"""Steering vectors on the Hugging Face Hub: one vector per folder, one card for the repository.

A repository holds vectors in the :meth:`SteeringVector.save` layout, at its root or in
subfolders, and a ``README.md`` model card that lists all of them::

    README.md
    french/vector.safetensors      french/vector.json
    feminine/vector.safetensors    feminine/vector.json

    v.push_to_hub("me/gemma-3-270m-steering", path_in_repo="french")
    v = SteeringVector.from_pretrained("me/gemma-3-270m-steering", subfolder="french")

Each push reads the ``vector.json`` of the vectors already in the repository, rewrites
the card from them and the new vector, and uploads the new folder and the card in one
commit through :mod:`ssae_lens._core.hub` (the upload path ``ssae_lens.publish`` uses
too). Loading goes through the Hugging Face cache and works offline once cached.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ssae_lens._core.hub import (
    CARD_FILENAME,
    card_text,
    check_path_in_repo,
    check_repo_id,
    download,
    hub_api,
    repo_files,
    upload_folder,
)
from ssae_lens._core.io import write_text_atomic
from ssae_lens.steering.apply import POSITION_NAMES
from ssae_lens.steering.vector import (
    VECTOR_METADATA_FILENAME,
    VECTOR_WEIGHTS_FILENAME,
    SteeringVector,
)

__all__ = ["load_vector", "push_vector", "vector_card"]

# What each construction method in this package produces, for the model card.
_METHODS = {
    "raw": "a direction given directly",
    "ssae": "a Sparse Shift Autoencoder decoder row (SSAE)",
    "sae": "a sparse autoencoder decoder row",
    "sae-ts": "SAE-targeted steering (SAE-TS)",
    "caa": "contrastive activation addition (CAA): mean activation difference",
    "mean_shift": "the mean of paired activation shifts",
    "pca": "a principal direction of paired activation shifts",
    "combination": "a sum or difference of other steering vectors",
}
_POSITIONS = {
    "all": "every token position: the prompt's and each generated token's",
    "prompt": "the prompt's token positions only",
    "generated": "the generated tokens only, one per decode step",
}


def push_vector(
    vector: SteeringVector,
    repo_id: str,
    *,
    path_in_repo: str | None = None,
    positions: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    api: Any | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload ``vector`` to ``repo_id`` (created if needed) and rewrite its model card.

    Args:
        vector: the steering vector.
        repo_id: the Hub repository, ``"user/name"``.
        path_in_repo: the subfolder for this vector (default: the repository root). A
            vector already there is replaced; vectors in other folders are kept.
        positions: the position policy to record: ``"all"``, ``"prompt"`` or
            ``"generated"`` (the ``positions`` of :func:`~ssae_lens.steering.steer`). Stored
            in the uploaded vector's ``extra["positions"]``; default: the vector's own
            ``extra["positions"]``, else ``"all"``.
        token: Hugging Face token (default: the logged-in one).
        endpoint: Hub URL (default: ``huggingface.co`` or ``$HF_ENDPOINT``).
        api: an ``HfApi``-like object to use instead of ``HfApi(endpoint, token)``.
        private: make a new repository private (``None``: the Hub's default).
        commit_message: default ``"Upload steering vector <folder> with ssae-lens"``.

    Returns:
        The URL of the commit.
    """
    check_repo_id(repo_id)
    folder = check_path_in_repo(path_in_repo, "path_in_repo")
    positions = positions or vector.extra.get("positions") or "all"
    if positions not in POSITION_NAMES:
        raise ValueError(
            f"positions must name a policy, one of {POSITION_NAMES}, got {positions!r}; token "
            "indices or masks depend on the prompt and cannot be recorded with the vector."
        )
    vector = vector.to(torch.float32)
    vector.extra = {**vector.extra, "positions": positions}
    api = hub_api(api, token=token, endpoint=endpoint)

    entries = _existing_entries(repo_id, api, skip=folder)
    entries[folder] = vector.file_metadata()
    with tempfile.TemporaryDirectory(prefix="ssae-lens-push-") as staging:
        vector.save(Path(staging) / folder)
        write_text_atomic(Path(staging) / CARD_FILENAME, vector_card(repo_id, entries))
        return upload_folder(
            staging,
            repo_id,
            api=api,
            private=private,
            commit_message=commit_message
            or f"Upload steering vector {_shown(folder)} with ssae-lens",
        )


def load_vector(
    repo_id_or_path: str | os.PathLike,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
    model: Any | None = None,
    strict: bool = False,
    device: str | torch.device | None = None,
) -> SteeringVector:
    """Load a vector from a local folder or from a Hub repository.

    An existing local folder is read directly (``subfolder`` inside it). Anything else must
    be a Hub repo id: the two vector files are fetched with ``hf_hub_download`` into the
    Hugging Face cache (``cache_dir``, default ``$HF_HUB_CACHE``); files already cached are
    reused, and with ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` only the cache is
    read. ``model``, ``strict`` and ``device`` are those of :meth:`SteeringVector.load`.
    """
    local = Path(repo_id_or_path)
    if local.is_dir():
        if revision is not None:
            raise ValueError(
                f"{str(local)!r} is a local folder; revision= only applies to Hub repositories."
            )
        folder = local / check_path_in_repo(subfolder, "subfolder")
        return SteeringVector.load(folder, model=model, strict=strict, device=device)
    repo_id = str(repo_id_or_path)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(
            f"{repo_id!r} is neither a local folder nor a Hub repo id like 'user/name'."
        )
    sub = check_path_in_repo(subfolder, "subfolder")
    names = [
        f"{sub}/{n}" if sub else n for n in (VECTOR_WEIGHTS_FILENAME, VECTOR_METADATA_FILENAME)
    ]
    weights, _ = download(
        repo_id,
        names,
        api=hub_api(None, token=token, endpoint=endpoint),
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    return SteeringVector.load(weights.parent, model=model, strict=strict, device=device)


def vector_card(repo_id: str, entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The model card for a repository of steering vectors.

    Args:
        repo_id: the repository.
        entries: ``{folder: vector.json content}`` for every vector in the repository
            (``""`` for one at the root), as :meth:`SteeringVector.file_metadata` gives.
    """
    ordered = sorted(entries.items())
    methods = [str(meta.get("method", "raw")) for _, meta in ordered]
    lines = [
        f"# {repo_id}",
        "",
        "Steering vectors for TransformerLens hook points, saved with ssae-lens. Each "
        "folder holds `vector.safetensors` (the direction, float32) and `vector.json` (its "
        "metadata).",
        "",
        "| folder | model | hook point | method | width | norm | unit norm | default_scale "
        "| positions |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for folder, meta in ordered:
        lines.append(
            f"| `{_shown(folder)}` | `{meta.get('model_name') or 'unknown'}` "
            f"| `{meta['hook_name']}` | {meta.get('method', 'raw')} | {meta.get('d')} "
            f"| {_number(meta.get('norm'))} | {'yes' if meta.get('normalized') else 'no'} "
            f"| {_number(meta.get('default_scale', 1.0))} "
            f"| `{(meta.get('extra') or {}).get('positions', 'all')}` |"
        )
    for folder, meta in ordered:
        lines += ["", f"## `{_shown(folder)}`", "", *_details(meta)]
    example = ordered[-1][0] if ordered else ""
    sub = f', subfolder="{example}"' if example else ""
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "from ssae_lens import SteeringVector, steer",
        "",
        f'vector = SteeringVector.from_pretrained("{repo_id}"{sub})',
        "with steer(model, vector):  # scale: vector.default_scale; see the scale convention",
        '    print(model.generate("The king said that", max_new_tokens=20))',
        "```",
        "",
    ]
    tags = ["ssae-lens", "steering-vector", "transformer-lens", *methods]
    return card_text("ssae-lens", tags, "\n".join(lines))


def _details(meta: Mapping[str, Any]) -> list[str]:
    method = str(meta.get("method", "raw"))
    scale = _number(meta.get("default_scale", 1.0))
    norm = _number(meta.get("norm"))
    positions = (meta.get("extra") or {}).get("positions", "all")
    provenance = meta.get("provenance") or {}
    if meta.get("normalized"):
        convention = (
            f"unit-normalised direction (norm {norm}). `steer(model, vector, scale=s)` adds "
            f"`s * direction`, so `s` is the size of the shift in activation units; "
            f"`default_scale` = {scale} is the size used when no scale is given."
        )
    else:
        convention = (
            f"raw direction, not normalised (norm {norm}). `steer(model, vector, scale=s)` "
            f"adds `s * direction`, so `s` multiplies the direction as stored (for CAA and "
            f"mean-shift vectors, the average shift they were estimated from); "
            f"`default_scale` = {scale}."
        )
    read_at = provenance.get("position")
    lines = [
        f"- **model**: `{meta.get('model_name') or 'unknown'}`",
        f"- **hook point**: `{meta['hook_name']}` (width {meta.get('d')})",
        f'- **position policy**: `positions="{positions}"`: added at '
        f"{_POSITIONS.get(positions, positions)}"
        + (f"; estimated from activations at position `{read_at}`" if read_at else ""),
        f"- **scale convention**: {convention}",
        f"- **provenance**: `{method}`, {_METHODS.get(method, 'a custom method')}",
    ]
    if provenance:
        lines += ["", "```json", json.dumps(provenance, indent=2, default=str), "```"]
    extra = {k: v for k, v in (meta.get("extra") or {}).items() if k != "positions"}
    if extra:
        lines += ["", "Extra metadata:", "", "```json", json.dumps(extra, indent=2), "```"]
    return lines


def _existing_entries(repo_id: str, api: Any, skip: str) -> dict[str, dict[str, Any]]:
    """``{folder: vector.json}`` of the vectors in the repository, except the one at ``skip``."""
    names = [
        name
        for name in repo_files(repo_id, api=api)
        if name.rpartition("/")[2] == VECTOR_METADATA_FILENAME and name.rpartition("/")[0] != skip
    ]
    paths = download(repo_id, names, api=api)
    return {
        name.rpartition("/")[0]: json.loads(path.read_text())
        for name, path in zip(names, paths, strict=True)
    }


def _shown(folder: str) -> str:
    return folder or "."


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
