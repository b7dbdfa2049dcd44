"""Measured SAE-TS effects with what produced them: the data an effect model is fitted on.

:class:`EffectData` keeps the directions, the scale each was added at and their effects on an
SAE's features (:func:`~ssae_lens.sae_ts.measure_effects`), together with the SAE's identity
(a full content hash, :func:`~ssae_lens._core.cache.dictionary_fingerprint`) and the
measurement settings (hook, scale protocol, sampling, prompts). Effects index one SAE's
features, so loading checks the SAE given against the hash and refuses another one.

::

    data = EffectData.measure(model, sae, directions, scale, prompts=prompts, n_samples=4)
    data.save("effects.safetensors")
    data.push_to_hub("me/gemma-3-270m-sae-ts")          # + a model card
    data = EffectData.from_pretrained("me/gemma-3-270m-sae-ts", sae=sae)
    effect_model, report = data.fit()
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ssae_lens._core.cache import dictionary_fingerprint, model_fingerprint
from ssae_lens._core.hooks import dictionary_hook_name
from ssae_lens._core.io import atomic_path
from ssae_lens.sae_ts._checks import check_directions, per_row_scales
from ssae_lens.sae_ts._hub_entry import HubEntry
from ssae_lens.sae_ts.effect_model import EffectModel, FitReport
from ssae_lens.sae_ts.effects import DEFAULT_TOTAL_TOKENS, measure_effects, rollout_lengths

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = ["EFFECT_DATA_FILENAME", "EffectData", "check_dictionary", "dictionary_identity"]

EFFECT_DATA_FILENAME = "effects.safetensors"
_HEADER_KEY = "ssae_lens.effect_data"
_FORMAT = 1
# measure_effects' options recorded with the data (the others do not change the values).
_RECORDED = (
    "prompts",
    "n_samples",
    "total_tokens",
    "max_new_tokens",
    "positions",
    "seed",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
)


def dictionary_identity(sae: SAE, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What identifies an SAE: its full content hash, shape, hook and where it came from.

    Args:
        sae: a SAELens SAE.
        source: how to get it again, e.g. ``{"release": ..., "sae_id": ...}`` for
            ``SAE.from_pretrained``, ``{"path": ...}`` or the settings of a reference SAE.
    """
    meta = sae.cfg.metadata
    return {
        "sha256": dictionary_fingerprint(sae),
        "architecture": sae.cfg.architecture(),
        "d_in": int(sae.W_dec.shape[1]),
        "d_sae": int(sae.W_dec.shape[0]),
        "hook_name": meta.hook_name,
        "model_name": meta.model_name,
        "source": json.loads(json.dumps(dict(source or {}), default=str)),
    }


def describe_dictionary(identity: Mapping[str, Any]) -> str:
    """A one-line description of an SAE identity for messages and cards."""
    source = identity.get("source") or {}
    if "release" in source:
        where = f"SAE.from_pretrained({source['release']!r}, {source.get('sae_id')!r})"
    elif "path" in source:
        where = f"SAE.load_from_disk({source['path']!r})"
    elif "reference" in source:
        where = "train_reference_sae(...) with " + json.dumps(source["reference"], sort_keys=True)
    else:
        where = "an SAE of unrecorded origin"
    return (
        f"{where}: {identity.get('architecture')} {identity.get('d_in')} -> "
        f"{identity.get('d_sae')} at {identity.get('hook_name')} of "
        f"{identity.get('model_name') or 'an unrecorded model'}"
    )


def check_dictionary(identity: Mapping[str, Any], sae: SAE, what: str) -> None:
    """Raise a ``ValueError`` unless ``sae`` has the content hash recorded in ``identity``."""
    found = dictionary_fingerprint(sae)
    wanted = identity.get("sha256")
    if found != wanted:
        raise ValueError(
            f"{what} was measured with another SAE: {describe_dictionary(identity)} "
            f"(sha256 {str(wanted)[:16]}...), not this one (sha256 {found[:16]}...). Effects "
            "index one SAE's features: load that SAE, or measure effects for this one "
            "(measure_effects or `ssae-lens effects`)."
        )


@dataclass
class EffectData(HubEntry):
    """Directions, their scales and their effects on an SAE's features, with provenance.

    Attributes:
        directions: ``(n, d_model)`` steering directions.
        scales: ``(n,)`` the scale each direction was added at.
        effects: ``(n, d_sae)`` the change of the mean feature activations.
        dictionary: the SAE's identity (:func:`dictionary_identity`).
        settings: the measurement: ``hook_name``, ``model_name``, ``model_sha256``, the
            sampling options and prompts, ``scale_protocol`` and the ``kinds`` of directions.
    """

    hub_kind: ClassVar[str] = "effect data"
    directions: Float[Tensor, "n d_model"]
    scales: Float[Tensor, " n"]
    effects: Float[Tensor, "n d_sae"]
    dictionary: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directions = check_directions(self.directions)
        n = self.directions.shape[0]
        self.scales = per_row_scales(self.scales, n)
        self.effects = torch.as_tensor(self.effects).detach().float().cpu()
        if self.effects.ndim != 2 or self.effects.shape[0] != n:
            raise ValueError(
                f"effects must be (n, d_sae) with n = {n} directions, got "
                f"{tuple(self.effects.shape)}."
            )

    @property
    def tokens_per_direction(self) -> int:
        """Token positions each effect averages over (all rollouts of one direction)."""
        s = self.settings
        if "tokens_per_direction" in s:
            return int(s["tokens_per_direction"])
        # settings given by hand in the old form: generated tokens only
        return (
            len(s.get("prompts", []))
            * int(s.get("n_samples", 0))
            * int(s.get("max_new_tokens") or 0)
        )

    @classmethod
    def measure(
        cls,
        model: HookedTransformer,
        sae: SAE,
        directions: Float[Tensor, "n d"],
        scales: float | Tensor,
        *,
        source: Mapping[str, Any] | None = None,
        scale_protocol: str = "given",
        kinds: Mapping[str, int] | None = None,
        **options: Any,
    ) -> EffectData:
        """:func:`~ssae_lens.sae_ts.measure_effects` (``options`` are its keyword arguments),
        recorded with the SAE's identity (``source``: how to load it), a description of how
        the scales were chosen and the number of directions of each kind."""
        effects = measure_effects(model, sae, directions, scales, **options)
        bound = inspect.signature(measure_effects).bind(model, sae, directions, scales, **options)
        bound.apply_defaults()
        args = bound.arguments
        settings: dict[str, Any] = {k: args[k] for k in _RECORDED}
        settings["prompts"] = [str(p) for p in settings["prompts"]]
        lengths = rollout_lengths(
            model, settings["prompts"], args["total_tokens"], args["max_new_tokens"]
        )
        if settings["total_tokens"] is None and settings["max_new_tokens"] is None:
            settings["total_tokens"] = DEFAULT_TOTAL_TOKENS
        read = 0 if args["positions"] == "generated" else 1  # count the prompt's positions?
        settings["tokens_per_direction"] = args["n_samples"] * sum(
            read * lengths[p][0] + lengths[p][1] for p in settings["prompts"]
        )
        settings.update(
            hook_name=dictionary_hook_name(sae, args["hook_name"]),
            readout="steered" if args["steer_readout"] else "text",
            model_name=model.cfg.model_name,
            model_sha256=model_fingerprint(model),
            scale_protocol=scale_protocol,
            kinds=dict(kinds or {}),
        )
        return cls(directions, scales, effects, dictionary_identity(sae, source), settings)

    def check_sae(self, sae: SAE) -> None:
        """Raise a ``ValueError`` unless ``sae`` is the SAE these effects were measured with."""
        check_dictionary(self.dictionary, sae, "This effect data")

    def summary(self) -> dict[str, Any]:
        """The settings with the number of directions, the tokens per direction and the
        range of the scales (for cards and for an effect model's provenance)."""
        return {
            **self.settings,
            "n_directions": self.directions.shape[0],
            "tokens_per_direction": self.tokens_per_direction,
            "scale_range": [float(self.scales.min()), float(self.scales.max())],
        }

    def fit(self, **options: Any) -> tuple[EffectModel, FitReport]:
        """:meth:`EffectModel.fit` on these effects (``options`` are its keyword arguments).

        The model's provenance records the SAE's identity (checked by
        :meth:`EffectModel.from_pretrained`), this data's summary and the held-out R^2.
        """
        options.setdefault("hook_name", self.settings.get("hook_name"))
        options.setdefault("model_name", self.settings.get("model_name"))
        effect_model, report = EffectModel.fit(self.directions, self.effects, **options)
        effect_model.provenance.update(
            sae=self.dictionary, effects=self.summary(), held_out_r2=report.r2
        )
        return effect_model, report

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        """The JSON facts saved with the tensors (also the Hub's ``effects.json``)."""
        return {
            "format": _FORMAT,
            "kind": "effect data",
            "sae": self.dictionary,
            "settings": self.summary(),
            "d_model": self.directions.shape[1],
            "d_sae": self.effects.shape[1],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tensors and :meth:`metadata` to one safetensors file, atomically (a
        folder gets ``effects.safetensors``)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / EFFECT_DATA_FILENAME
        tensors = {"directions": self.directions, "scales": self.scales, "effects": self.effects}
        tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
        header = {_HEADER_KEY: json.dumps(self.metadata())}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, tmp, metadata=header)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, sae: SAE | None) -> EffectData:
        """Read a file written by :meth:`save` (or a folder holding one).

        Args:
            path: the file or its folder.
            sae: the SAE the effects are used with; a different one (content hash) raises.
                Pass ``None`` explicitly to skip the check.
        """
        path = Path(path)
        if path.is_dir():
            path = path / EFFECT_DATA_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"No effect data at {str(path)!r}: write it with EffectData.save or "
                "`ssae-lens effects`."
            )
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(_HEADER_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
        if raw is None or not {"directions", "scales", "effects"} <= set(tensors):
            raise ValueError(f"{str(path)!r} is not an effect data file (EffectData.save).")
        meta = json.loads(raw)
        settings = {
            k: v for k, v in meta["settings"].items() if k not in ("n_directions", "scale_range")
        }
        data = cls(
            tensors["directions"], tensors["scales"], tensors["effects"], meta["sae"], settings
        )
        if sae is not None:
            check_dictionary(data.dictionary, sae, f"The effect data {str(path)!r}")
        return data
