"""SAE-TS effect data and effect models on the Hugging Face Hub, with a model card.

A repository holds entries at its root or in subfolders, each an :class:`EffectData`
(``effects.safetensors`` + ``effects.json``) or an :class:`EffectModel`
(``effect_model.safetensors`` + ``effect_model.json``), and a ``README.md`` card listing every
entry: the SAE's identity and content hash, the hook, the scale protocol, the sampling
settings and prompts, and the tokens per direction::

    data.push_to_hub("me/gemma-3-270m-sae-ts", path_in_repo="effects")
    effect_model.push_to_hub("me/gemma-3-270m-sae-ts", path_in_repo="model")
    data = EffectData.from_pretrained("me/gemma-3-270m-sae-ts", sae=sae, subfolder="effects")

Loading checks the SAE passed against the recorded content hash and refuses another SAE.
Uploads and downloads go through :mod:`ssae_lens._core.hub`, as for steering vectors.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from ssae_lens._core.io import write_json_atomic, write_text_atomic
from ssae_lens.sae_ts.effect_data import (
    EFFECT_DATA_FILENAME,
    EffectData,
    check_dictionary,
    describe_dictionary,
)
from ssae_lens.sae_ts.effect_model import EFFECT_MODEL_FILENAME, EffectModel

if TYPE_CHECKING:
    from sae_lens import SAE

__all__ = ["effects_card", "entry_metadata", "load_effects", "push_effects"]

# kind -> (weights file, metadata file)
_FILES = {
    "effect data": (EFFECT_DATA_FILENAME, "effects.json"),
    "effect model": (EFFECT_MODEL_FILENAME, "effect_model.json"),
}
_FIT_KEYS = ("method", "weight_decay", "n_train", "n_test", "seed", "held_out_r2")


def entry_metadata(entry: EffectData | EffectModel) -> dict[str, Any]:
    """The JSON an entry is listed with (its ``.json`` file on the Hub)."""
    if isinstance(entry, EffectData):
        return entry.metadata()
    if not isinstance(entry, EffectModel):
        raise TypeError(f"Expected EffectData or EffectModel, got {type(entry).__name__}.")
    provenance = entry.provenance
    if not isinstance(provenance.get("sae"), Mapping):
        raise ValueError(
            "This effect model does not record the SAE its effects index (provenance['sae']), "
            "so loading could not check it: fit it with EffectData.fit, or set "
            "provenance['sae'] = dictionary_identity(sae)."
        )
    return {
        "format": 1,
        "kind": "effect model",
        "sae": provenance["sae"],
        "settings": provenance.get("effects", {}),
        "fit": {k: provenance[k] for k in _FIT_KEYS if k in provenance},
        "hook_name": entry.hook_name,
        "model_name": entry.model_name,
        "d_model": entry.d_model,
        "d_sae": entry.d_sae,
    }


def push_effects(
    entry: EffectData | EffectModel,
    repo_id: str,
    *,
    path_in_repo: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    api: Any | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload ``entry`` to ``repo_id`` (created if needed) and rewrite the repository's card.

    Args:
        entry: effect data, or an effect model that records its SAE.
        repo_id: ``"user/name"``.
        path_in_repo: the subfolder (default: the root); an entry of the same kind there is
            replaced, other entries are kept.
        token, endpoint, api, private: as for :meth:`SteeringVector.push_to_hub`.
        commit_message: default ``"Upload <kind> <folder> with ssae-lens"``.

    Returns:
        The URL of the commit.
    """
    check_repo_id(repo_id)
    folder = check_path_in_repo(path_in_repo, "path_in_repo")
    meta = entry_metadata(entry)
    kind = meta["kind"]
    api = hub_api(api, token=token, endpoint=endpoint)
    entries = _existing_entries(repo_id, api, skip=(folder, kind))
    entries[folder, kind] = meta
    weights, listed = _FILES[kind]
    with tempfile.TemporaryDirectory(prefix="ssae-lens-push-") as staging:
        target = Path(staging) / folder
        entry.save(target / weights)
        write_json_atomic(target / listed, meta)
        write_text_atomic(Path(staging) / CARD_FILENAME, effects_card(repo_id, entries))
        return upload_folder(
            staging,
            repo_id,
            api=api,
            private=private,
            commit_message=commit_message or f"Upload {kind} {folder or '.'} with ssae-lens",
        )


def load_effects(
    repo_id_or_path: str | os.PathLike,
    kind: str,
    *,
    sae: SAE | None,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
) -> EffectData | EffectModel:
    """An entry of ``kind`` (``"effect data"`` or ``"effect model"``) from a local folder or a
    Hub repository, checked against ``sae`` (``None``: not checked).

    Raises:
        ValueError: ``sae`` is not the SAE the effects were measured with.
        FileNotFoundError: no such entry (or, offline, not in the Hugging Face cache).
    """
    if kind not in _FILES:
        raise ValueError(f"kind must be one of {list(_FILES)}, got {kind!r}.")
    weights = _FILES[kind][0]
    sub = check_path_in_repo(subfolder, "subfolder")
    local = Path(repo_id_or_path)
    if local.is_dir():
        if revision is not None:
            raise ValueError(
                f"{str(local)!r} is a local folder; revision= only applies to Hub repositories."
            )
        path = local / sub / weights
    else:
        repo_id = str(repo_id_or_path)
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(
                f"{repo_id!r} is neither a local folder nor a Hub repo id like 'user/name'."
            )
        (path,) = download(
            repo_id,
            [f"{sub}/{weights}" if sub else weights],
            api=hub_api(None, token=token, endpoint=endpoint),
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
    where = f"The {kind} at {str(repo_id_or_path)!r}" + (f" ({sub})" if sub else "")
    if kind == "effect data":
        data = EffectData.load(path, sae=None)
        if sae is not None:
            check_dictionary(data.dictionary, sae, where)
        return data
    effect_model = EffectModel.load(path)
    if sae is not None:
        recorded = effect_model.provenance.get("sae")
        if not isinstance(recorded, Mapping):
            raise ValueError(f"{where} records no SAE to check: pass sae=None to load it anyway.")
        check_dictionary(recorded, sae, where)
    return effect_model


def effects_card(repo_id: str, entries: Mapping[tuple[str, str], Mapping[str, Any]]) -> str:
    """The model card of a repository of effect data and effect models.

    Args:
        repo_id: the repository.
        entries: ``{(folder, kind): metadata}`` for every entry (:func:`entry_metadata`).
    """
    ordered = sorted(entries.items())
    lines = [
        f"# {repo_id}",
        "",
        "SAE-targeted steering (SAE-TS; Chalnev, Siu & Conmy 2024) data saved with ssae-lens: "
        "the effects of steering directions on a sparse autoencoder's features, measured on "
        "text generated under steering, and linear effect models `y(s) = s W + b` fitted on "
        "them. Effects index one SAE's features: loading checks the SAE's content hash.",
        "",
        "| folder | kind | SAE | hook point | directions | tokens per direction |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (folder, kind), meta in ordered:
        settings = meta.get("settings") or {}
        sae = meta.get("sae") or {}
        lines.append(
            f"| `{folder or '.'}` | {kind} | {sae.get('architecture')} "
            f"{sae.get('d_in')} -> {sae.get('d_sae')} | `{settings.get('hook_name')}` "
            f"| {settings.get('n_directions')} | {settings.get('tokens_per_direction')} |"
        )
    for (folder, kind), meta in ordered:
        lines += ["", f"## `{folder or '.'}` ({kind})", "", *_details(meta)]
    lines += ["", "## How to use", "", "```python", *_usage(repo_id, ordered), "```", ""]
    return card_text("ssae-lens", ["ssae-lens", "sae-ts", "sae-lens", "steering"], "\n".join(lines))


def _details(meta: Mapping[str, Any]) -> list[str]:
    sae = meta.get("sae") or {}
    s = meta.get("settings") or {}
    kinds = s.get("kinds") or {}
    low, high = (s.get("scale_range") or [None, None])[:2]
    top = "".join(
        f", {name} {s[key]}" for key, name in (("top_k", "top-k"), ("top_p", "top-p")) if s.get(key)
    )
    sampling = (
        f"temperature {s.get('temperature')}{top}, seed {s.get('seed')} (common random numbers: "
        "rollout j of every direction and of the unsteered baseline shares its uniforms)"
        if s.get("do_sample")
        else "greedy"
    )
    length = (
        f"{s['total_tokens']} tokens in all (prompt included)"
        if s.get("total_tokens")
        else f"{s.get('max_new_tokens')} generated tokens"
    )
    where = "the generated tokens" if s.get("positions") == "generated" else "every position"
    lines = [
        f"- **SAE**: {describe_dictionary(sae)}",
        f"- **SAE content hash** (sha256 of config and every parameter and buffer): "
        f"`{sae.get('sha256')}`",
        f"- **hook point**: `{s.get('hook_name')}`",
        f"- **model**: `{s.get('model_name')}` (weights sha256 `{s.get('model_sha256')}`)",
        f"- **directions**: {s.get('n_directions')}"
        + (" (" + ", ".join(f"{v} {k}" for k, v in kinds.items()) + ")" if kinds else ""),
        f"- **scale protocol**: {s.get('scale_protocol')}; scales from {_number(low)} to "
        f"{_number(high)}",
        f"- **sampling**: {s.get('n_samples')} rollouts of {length} per prompt, {sampling}; "
        "features read "
        + (
            "from the generated text by an unsteered pass"
            if s.get("readout", "text") == "text"
            else "by a steered pass"
        )
        + f", averaged over {where}",
        f"- **tokens per direction**: {s.get('tokens_per_direction')}",
        "- **prompts**: " + ", ".join(f"`{p}`" for p in s.get("prompts", [])),
    ]
    fit = meta.get("fit")
    if fit:
        lines.append(
            f"- **fit**: {fit.get('method')}, weight decay {_number(fit.get('weight_decay'))}, "
            f"{fit.get('n_train')} training / {fit.get('n_test')} held-out directions, "
            f"held-out R^2 {_number(fit.get('held_out_r2'))}"
        )
    return lines


def _usage(repo_id: str, ordered: list[tuple[tuple[str, str], Mapping[str, Any]]]) -> list[str]:
    lines = ["from ssae_lens.sae_ts import EffectData, EffectModel, sae_ts_vector", ""]
    for (folder, kind), _ in ordered:
        sub = f', subfolder="{folder}"' if folder else ""
        cls = "EffectData" if kind == "effect data" else "EffectModel"
        name = "data" if kind == "effect data" else "effect_model"
        lines.append(f'{name} = {cls}.from_pretrained("{repo_id}", sae=sae{sub})')
    kinds = {kind for (_, kind), _ in ordered}
    if "effect data" in kinds and "effect model" not in kinds:
        lines.append("effect_model, report = data.fit()")
    lines.append("vector = sae_ts_vector(effect_model, {feature: 1.0})")
    return lines


def _existing_entries(
    repo_id: str, api: Any, skip: tuple[str, str]
) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(folder, kind): metadata}`` of the entries in the repository, except ``skip``."""
    listed = {meta_file: kind for kind, (_, meta_file) in _FILES.items()}
    found = []
    for name in repo_files(repo_id, api=api):
        folder, _, base = name.rpartition("/")
        if base in listed and (folder, listed[base]) != skip:
            found.append((name, folder, listed[base]))
    paths = download(repo_id, [name for name, _, _ in found], api=api)
    return {
        (folder, kind): json.loads(path.read_text())
        for (_, folder, kind), path in zip(found, paths, strict=True)
    }


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
