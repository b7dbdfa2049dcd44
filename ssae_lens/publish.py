"""Publishing a dictionary to the Hugging Face Hub in the layout ``SAE.from_pretrained`` reads.

    folder = publish(ssae, "me/ssae-gemma-3-270m", "blocks.12.hook_resid_post", dry_run=True)

writes::

    <folder>/README.md                              model card
    <folder>/<sae_id>/cfg.json                      SAELens config (architecture "ssae")
    <folder>/<sae_id>/sae_weights.safetensors       weights
    <folder>/<sae_id>/sparsity.safetensors          optional feature sparsity

and, unless ``dry_run``, uploads the folder through :mod:`ssae_lens._core.hub` (the one
upload path of the package, shared with ``SteeringVector.push_to_hub``).
Users then load it with ``import ssae_lens; SAE.from_pretrained(repo_id, sae_id)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from safetensors.torch import save_file
from torch import Tensor

from ssae_lens._core.hub import (
    CARD_FILENAME,
    card_text,
    check_path_in_repo,
    check_repo_id,
    hub_api,
    upload_folder,
)
from ssae_lens._core.io import atomic_dir, write_text_atomic
from ssae_lens.models import cache_root

__all__ = ["model_card", "publish"]

SPARSITY_FILENAME = "sparsity.safetensors"


def publish(
    sae: SAE,
    repo_id: str,
    sae_id: str,
    *,
    out_dir: str | os.PathLike | None = None,
    dry_run: bool = False,
    card_info: dict[str, Any] | None = None,
    sparsity: Float[Tensor, " d_sae"] | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    api: Any | None = None,
) -> Path:
    """Write ``sae`` in the SAELens Hub layout with a model card, and upload it.

    Args:
        sae: the dictionary (an :class:`~ssae_lens.SSAE` or any SAELens ``SAE``).
        repo_id: the Hub repository, ``"user/name"``.
        sae_id: the subfolder inside the repository, e.g. the hook name.
        out_dir: the local folder to write (default ``<cache>/publish/<user>--<name>``).
        dry_run: write the folder only; upload nothing.
        card_info: extra facts for the model card: ``model``, ``hook_name``, ``dataset``
            (default: from ``sae.cfg.metadata``), ``metrics`` (a ``{name: value}`` mapping),
            ``description``.
        sparsity: per-latent firing frequencies, written as ``sparsity.safetensors``.
        token: Hugging Face token (default: the logged-in one).
        endpoint: Hub URL (default: ``huggingface.co`` or ``$HF_ENDPOINT``).
        api: an ``HfApi``-like object to upload with (default ``HfApi(endpoint, token)``).

    Returns:
        The local folder that was (or would be) uploaded.
    """
    check_repo_id(repo_id)
    if not check_path_in_repo(sae_id, "sae_id"):
        raise ValueError(
            f"sae_id must be a relative folder name such as a hook name, got {sae_id!r}."
        )
    folder = Path(out_dir) if out_dir is not None else _default_dir(repo_id)
    folder.mkdir(parents=True, exist_ok=True)
    _write_sae(sae, folder / sae_id, sparsity)
    card = model_card(sae, repo_id, sae_id, card_info or {})
    write_text_atomic(folder / CARD_FILENAME, card)
    if dry_run:
        return folder
    upload_folder(
        folder,
        repo_id,
        api=hub_api(api, token=token, endpoint=endpoint),
        commit_message=f"Upload {sae_id} with ssae-lens",
    )
    return folder


def model_card(sae: SAE, repo_id: str, sae_id: str, info: dict[str, Any]) -> str:
    """The Markdown model card (with Hub metadata front matter) for a published dictionary."""
    meta = sae.cfg.metadata
    model = info.get("model") or meta.get("model_name") or "unknown"
    hook = info.get("hook_name") or meta.get("hook_name") or sae_id
    dataset = info.get("dataset") or meta.get("dataset") or "unknown"
    arch = sae.cfg.architecture()
    lines = [
        f"# {repo_id}: `{sae_id}`",
        "",
        info.get("description")
        or (
            f"A {'Sparse Shift Autoencoder' if arch == 'ssae' else 'sparse autoencoder'} "
            "in SAELens format, published with ssae-lens."
        ),
        "",
        "| | |",
        "| --- | --- |",
        f"| model | `{model}` |",
        f"| hook point | `{hook}` |",
        f"| dataset | `{dataset}` |",
        f"| architecture | `{arch}` |",
        f"| width | d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae} |",
    ]
    metrics = info.get("metrics") or {}
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        for name, value in metrics.items():
            shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
            lines.append(f"| {name} | {shown} |")
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "import ssae_lens  # registers the 'ssae' architecture with SAELens",
        "from sae_lens import SAE",
        "",
        f'sae = SAE.from_pretrained("{repo_id}", "{sae_id}")',
        "```",
        "",
    ]
    return card_text("saelens", ["sae_lens", "ssae-lens", arch], "\n".join(lines))


def _default_dir(repo_id: str) -> Path:
    return cache_root() / "publish" / repo_id.replace("/", "--")


def _write_sae(sae: SAE, target: Path, sparsity: Tensor | None) -> None:
    """Save into a sibling temp folder, then swap it in, so ``target`` is never half-written."""
    if sparsity is not None:
        sparsity = torch.as_tensor(sparsity).detach().float().cpu().contiguous()
        if sparsity.shape != (sae.cfg.d_sae,):
            raise ValueError(
                f"sparsity must have shape ({sae.cfg.d_sae},) (one value per latent), "
                f"got {tuple(sparsity.shape)}."
            )
    with atomic_dir(target, exists="replace") as tmp:
        sae.save_model(tmp)
        if sparsity is not None:
            save_file({"sparsity": sparsity}, str(tmp / SPARSITY_FILENAME))
