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

The model card lists every dictionary in the repository (those already on the Hub, those in
the local folder, and the new one), and everything it says about one comes from that
dictionary's own ``cfg.json`` metadata: ``model_name``, ``hook_name``, ``dataset``, the
``training_metrics`` that :func:`~ssae_lens.train_ssae` records and the ``metrics`` that
``ssae-lens evaluate`` records. Non-finite weights are refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from safetensors.torch import save_file
from torch import Tensor

from ssae_lens._core.finite import check_finite_weights
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
from ssae_lens._core.io import atomic_dir, write_text_atomic
from ssae_lens.models import cache_root

__all__ = ["model_card", "publish"]

SPARSITY_FILENAME = "sparsity.safetensors"
CFG_FILENAME = "cfg.json"
# card_info keys that describe the published dictionary, and the metadata keys they set.
_CARD_FACTS = {"model": "model_name", "hook_name": "hook_name", "dataset": "dataset"}


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
        card_info: ``description`` (the card's introduction), and facts that override or
            add to ``sae.cfg.metadata`` in the published ``cfg.json`` (so the card and the
            file agree): ``model``, ``hook_name``, ``dataset``, ``metrics`` (a
            ``{name: value}`` mapping merged into ``metadata.metrics``).
        sparsity: per-latent firing frequencies, written as ``sparsity.safetensors``.
        token: Hugging Face token (default: the logged-in one).
        endpoint: Hub URL (default: ``huggingface.co`` or ``$HF_ENDPOINT``).
        api: an ``HfApi``-like object to upload with (default ``HfApi(endpoint, token)``).

    Returns:
        The local folder that was (or would be) uploaded.

    Raises:
        NonFiniteError: the weights hold NaN or inf (nothing is written).
    """
    check_repo_id(repo_id)
    sae_id = check_path_in_repo(sae_id, "sae_id")
    if not sae_id:
        raise ValueError(
            f"sae_id must be a relative folder name such as a hook name, got {sae_id!r}."
        )
    check_finite_weights(sae, f"publish {repo_id}/{sae_id}")
    info = dict(card_info or {})
    folder = Path(out_dir) if out_dir is not None else _default_dir(repo_id)
    folder.mkdir(parents=True, exist_ok=True)
    _write_sae(sae, folder / sae_id, sparsity, info)
    entries = _local_entries(folder)
    hub = None
    if not dry_run:
        hub = hub_api(api, token=token, endpoint=endpoint)
        entries = {**_hub_entries(repo_id, hub, skip=set(entries)), **entries}
    write_text_atomic(folder / CARD_FILENAME, model_card(repo_id, entries, info.get("description")))
    if hub is not None:
        upload_folder(folder, repo_id, api=hub, commit_message=f"Upload {sae_id} with ssae-lens")
    return folder


def model_card(
    repo_id: str, entries: Mapping[str, Mapping[str, Any]], description: str | None = None
) -> str:
    """The Markdown model card (with Hub metadata front matter) for a repository of dictionaries.

    Args:
        repo_id: the repository.
        entries: ``{sae_id: cfg.json content}`` for every dictionary in the repository.
        description: the introduction (default: one sentence on what the repository holds).
    """
    ordered = sorted(entries.items())
    archs = [str(cfg.get("architecture", "unknown")) for _, cfg in ordered]
    kinds = "Sparse Shift Autoencoders" if set(archs) == {"ssae"} else "Sparse autoencoders"
    lines = [
        f"# {repo_id}",
        "",
        description or f"{kinds} in SAELens format, published with ssae-lens.",
        "",
        "| sae_id | model | hook point | dataset | architecture | d_in | d_sae |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sae_id, cfg in ordered:
        meta = cfg.get("metadata") or {}
        lines.append(
            f"| `{sae_id}` | `{meta.get('model_name') or 'unknown'}` "
            f"| `{meta.get('hook_name') or 'unknown'}` | `{meta.get('dataset') or 'unknown'}` "
            f"| `{cfg.get('architecture', 'unknown')}` | {cfg.get('d_in')} | {cfg.get('d_sae')} |"
        )
    for sae_id, cfg in ordered:
        meta = cfg.get("metadata") or {}
        lines += ["", f"## `{sae_id}`", ""]
        for title, key in (("Evaluation", "metrics"), ("Training", "training_metrics")):
            values = meta.get(key) or {}
            if isinstance(values, Mapping) and values:
                lines += [f"{title} (`metadata.{key}` in its `cfg.json`):", ""]
                lines += ["| metric | value |", "| --- | --- |"]
                lines += [f"| {name} | {_shown(value)} |" for name, value in values.items()]
                lines.append("")
        if not any(meta.get(k) for k in ("metrics", "training_metrics")):
            lines += ["No metrics were recorded with this dictionary.", ""]
    example = ordered[-1][0] if ordered else "<sae_id>"
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "import ssae_lens  # registers the 'ssae' architecture with SAELens",
        "from sae_lens import SAE",
        "",
        f'sae = SAE.from_pretrained("{repo_id}", "{example}")',
        "```",
        "",
        "`import ssae_lens` must run first: SAELens has no plugin entry points, and without it "
        "loading fails with `KeyError: 'ssae'`. `ssae_lens.load(folder)` loads a local copy "
        "with messages that say what is wrong with a damaged one.",
        "",
    ]
    return card_text("saelens", ["sae_lens", "ssae-lens", *archs], "\n".join(lines))


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def _local_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """``{sae_id: cfg.json}`` of every dictionary already written in the local folder."""
    entries = {}
    for cfg in sorted(folder.rglob(CFG_FILENAME)):
        relative = cfg.parent.relative_to(folder)
        # Not the root, nor atomic_dir's hidden temporary folders.
        if relative.parts and not any(part.startswith(".") for part in relative.parts):
            entries[relative.as_posix()] = _read_cfg(cfg)
    return entries


def _hub_entries(repo_id: str, api: Any, skip: set[str]) -> dict[str, dict[str, Any]]:
    """``{sae_id: cfg.json}`` of the dictionaries already in the Hub repository."""
    names = [
        name
        for name in repo_files(repo_id, api=api)
        if PurePosixPath(name).name == CFG_FILENAME
        and str(PurePosixPath(name).parent) not in (".", *skip)
    ]
    paths = download(repo_id, names, api=api)
    return {
        str(PurePosixPath(name).parent): _read_cfg(path)
        for name, path in zip(names, paths, strict=True)
    }


def _read_cfg(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable SAELens cfg.json ({err}).") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is not a SAELens cfg.json (not a JSON object).")
    return cfg


def _default_dir(repo_id: str) -> Path:
    return cache_root() / "publish" / repo_id.replace("/", "--")


def _write_sae(sae: SAE, target: Path, sparsity: Tensor | None, info: Mapping[str, Any]) -> None:
    """Save into a sibling temp folder, then swap it in, so ``target`` is never half-written;
    ``info``'s facts go into the saved ``cfg.json`` metadata."""
    if sparsity is not None:
        sparsity = torch.as_tensor(sparsity).detach().float().cpu().contiguous()
        if sparsity.shape != (sae.cfg.d_sae,):
            raise ValueError(
                f"sparsity must have shape ({sae.cfg.d_sae},) (one value per latent), "
                f"got {tuple(sparsity.shape)}."
            )
    with atomic_dir(target, exists="replace") as tmp:
        sae.save_model(tmp)
        facts = {meta: info[key] for key, meta in _CARD_FACTS.items() if info.get(key)}
        if facts or info.get("metrics"):
            cfg = _read_cfg(tmp / CFG_FILENAME)
            meta = cfg.setdefault("metadata", {})
            meta.update(facts)
            if info.get("metrics"):
                meta["metrics"] = {**(meta.get("metrics") or {}), **info["metrics"]}
            write_text_atomic(tmp / CFG_FILENAME, json.dumps(cfg))
        if sparsity is not None:
            save_file({"sparsity": sparsity}, str(tmp / SPARSITY_FILENAME))
