"""`SteeringVector`: a direction in one hook point's activation space, with its metadata.

A steering vector lives at a TransformerLens hook point (``blocks.6.hook_resid_post``)
and is applied there by :func:`ssae_lens.steering.steer`. It is stored on disk as a
folder holding ``vector.safetensors`` (the direction) and ``vector.json`` (everything
else, human readable)::

    v = SteeringVector.from_sae(sae, feature_index=123)
    v.save("vectors/feature_123")
    v = SteeringVector.load("vectors/feature_123", model=model)

The same folder layout is what :meth:`SteeringVector.push_to_hub` uploads (one subfolder
per vector, plus a model card) and :meth:`SteeringVector.from_pretrained` reads back;
:meth:`SteeringVector.to_gguf` exports a llama.cpp control vector
(:mod:`ssae_lens.steering.gguf`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens import HookedTransformer

from ssae_lens._core.hooks import check_steerable_hook, dictionary_hook_name, hook_width
from ssae_lens._core.io import atomic_path, write_text_atomic

if TYPE_CHECKING:
    from ssae_lens.ssae.model import SSAE

_COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
VECTOR_WEIGHTS_FILENAME = "vector.safetensors"
VECTOR_METADATA_FILENAME = "vector.json"
_FORMAT_VERSION = 1


class SteeringCompatibilityWarning(UserWarning):
    """A steering vector is used with a model other than the one it was made for."""


class VectorFileError(ValueError):
    """A saved steering vector folder whose files cannot be read as one (names the file)."""


_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "model_name": (str, type(None)),
    "method": (str,),
    "normalized": (bool,),
    "default_scale": (int, float),
    "provenance": (dict,),
    "extra": (dict,),
}


def _read_metadata(path: Path) -> tuple[dict[str, Any], int | None]:
    """``vector.json`` checked key by key: the keyword arguments of ``SteeringVector``, and
    the width it records."""
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise VectorFileError(f"{path} is not valid JSON ({err}); save the vector again.") from None
    if not isinstance(meta, dict):
        raise VectorFileError(f"{path} must hold a JSON object, got {type(meta).__name__}.")
    version = meta.pop("format_version", None)
    if version != _FORMAT_VERSION:
        raise VectorFileError(
            f"{path} has format_version {version!r}; this ssae-lens reads "
            f"{_FORMAT_VERSION}. Upgrade ssae-lens or re-save the vector."
        )
    d = meta.pop("d", None)
    meta.pop("norm", None)
    if not isinstance(meta.get("hook_name"), str):
        raise VectorFileError(f"{path} has no hook_name string; save the vector again.")
    for key, value in meta.items():
        types = _OPTIONAL_TYPES.get(key)
        if key == "hook_name":
            continue
        if types is None:
            known = ["hook_name", *_OPTIONAL_TYPES]
            raise VectorFileError(f"{path} has an unknown key {key!r}; known keys: {known}.")
        if not isinstance(value, types) or (key == "default_scale" and isinstance(value, bool)):
            raise VectorFileError(f"{path}: {key} is {value!r}, not a {types[0].__name__}.")
    if d is not None and (not isinstance(d, int) or isinstance(d, bool)):
        raise VectorFileError(f"{path}: d is {d!r}, not an integer.")
    return meta, d


@dataclass
class SteeringVector:
    """A direction ``d`` in the space of one hook point, plus where it came from.

    Attributes:
        direction: the vector, ``Float[Tensor, "d"]``.
        hook_name: the TransformerLens hook point it belongs to.
        model_name: the model it was made for (``model.cfg.model_name``), if known.
        method: how it was made: ``"raw"``, ``"caa"``, ``"mean_shift"``, ``"pca"``,
            ``"sae"``, ``"ssae"``, ``"sae-ts"``, ``"combination"``, ...
        normalized: whether ``direction`` has unit norm.
        default_scale: the scale used by :func:`~ssae_lens.steering.steer` when none is
            given. The constructors in this package set it to the magnitude at which the
            vector reproduces the shift it was estimated from (1.0 for raw differences).
        provenance: JSON-serialisable facts about the source (dictionary path or repo,
            feature index, number of prompts, raw norm, ...).
        extra: free-form JSON-serialisable user metadata.
    """

    direction: Float[Tensor, " d"]
    hook_name: str
    model_name: str | None = None
    method: str = "raw"
    normalized: bool = False
    default_scale: float = 1.0
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        direction = torch.as_tensor(self.direction).detach().clone()
        if direction.ndim != 1:
            raise ValueError(
                f"A SteeringVector direction must be 1-D (d,), got shape "
                f"{tuple(direction.shape)}. For one vector per batch row use "
                "ssae_lens.steering.steer_rows."
            )
        if direction.numel() == 0:
            raise ValueError(f"The steering direction for {self.hook_name!r} is empty.")
        if direction.dtype not in _COMPUTE_DTYPES:  # integers, bools, float8: float32
            direction = direction.float()
        if not torch.isfinite(direction).all():
            raise ValueError(f"The steering direction for {self.hook_name!r} contains NaN or inf.")
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ValueError(f"hook_name must be a non-empty string, got {self.hook_name!r}.")
        self.direction = direction
        self.default_scale = float(self.default_scale)
        if not math.isfinite(self.default_scale):
            raise ValueError(f"default_scale must be a finite number, got {self.default_scale}.")

    # ------------------------------------------------------------------ properties
    @property
    def d(self) -> int:
        """Width of the hook point's (flattened) activation space."""
        return self.direction.shape[0]

    @property
    def norm(self) -> float:
        """Euclidean norm of the direction."""
        return float(self.direction.norm())

    def metadata(self) -> dict[str, Any]:
        """Everything but the direction, as a JSON-serialisable dict."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)[1:]}

    def __repr__(self) -> str:
        model = f", model_name={self.model_name!r}" if self.model_name else ""
        return (
            f"SteeringVector(hook_name={self.hook_name!r}, d={self.d}, norm={self.norm:.4g}, "
            f"method={self.method!r}{model}, default_scale={self.default_scale:g})"
        )

    # ------------------------------------------------------------------ arithmetic
    def _derived(self, direction: Tensor, **changes: Any) -> SteeringVector:
        return replace(self, direction=direction, **changes)

    def _check_same_space(self, other: SteeringVector, op: str) -> None:
        if not isinstance(other, SteeringVector):
            raise TypeError(f"Cannot {op} a SteeringVector and {type(other).__name__}.")
        if other.hook_name != self.hook_name:
            raise ValueError(
                f"Cannot {op} vectors at different hook points ({self.hook_name!r} and "
                f"{other.hook_name!r}): steer with both instead (steer(model, [v1, v2]))."
            )
        if other.d != self.d:
            raise ValueError(f"Cannot {op} vectors of widths {self.d} and {other.d}.")
        if self.model_name and other.model_name and self.model_name != other.model_name:
            raise ValueError(
                f"Cannot {op} vectors made for different models "
                f"({self.model_name!r} and {other.model_name!r})."
            )

    def _combine(self, other: SteeringVector, sign: float, symbol: str) -> SteeringVector:
        self._check_same_space(other, "combine")
        other_dir = other.direction.to(self.direction)
        return SteeringVector(
            self.direction + sign * other_dir,
            self.hook_name,
            model_name=self.model_name or other.model_name,
            method="combination",
            provenance={"op": symbol, "operands": [self.metadata(), other.metadata()]},
        )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0, "-")

    def __mul__(self, factor: float) -> SteeringVector:
        if not isinstance(factor, (int, float)):
            return NotImplemented
        return self._derived(
            self.direction * factor, normalized=self.normalized and abs(factor) == 1
        )

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> SteeringVector:
        if not isinstance(divisor, (int, float)):
            return NotImplemented
        return self * (1.0 / divisor)

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def normalize(self) -> SteeringVector:
        """Unit-norm copy; the previous norm is kept in ``provenance["norm_before_normalize"]``."""
        norm = self.norm
        if norm == 0:
            raise ValueError("Cannot normalise a zero steering vector.")
        provenance = {**self.provenance, "norm_before_normalize": norm}
        return self._derived(self.direction / norm, normalized=True, provenance=provenance)

    def orthogonalize(self, other: SteeringVector) -> SteeringVector:
        """Copy without the component along ``other`` (``v - (v . u) u``, ``u`` its unit)."""
        self._check_same_space(other, "orthogonalise")
        unit = other.direction.to(self.direction)
        unit = unit / unit.norm().clamp_min(torch.finfo(unit.dtype).tiny)
        direction = self.direction - (self.direction @ unit) * unit
        provenance = {**self.provenance, "orthogonalized_against": other.metadata()}
        return self._derived(direction, normalized=False, provenance=provenance)

    def cosine(self, other: SteeringVector) -> float:
        """Cosine similarity with another vector at the same hook point."""
        self._check_same_space(other, "compare")
        return float(
            torch.nn.functional.cosine_similarity(
                self.direction, other.direction.to(self.direction), dim=0
            )
        )

    def to(self, *args: Any, **kwargs: Any) -> SteeringVector:
        """Copy with the direction moved/cast like ``Tensor.to``."""
        return self._derived(self.direction.to(*args, **kwargs))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_sae(
        cls, sae: SAE, feature_index: int, *, hook_name: str | None = None
    ) -> SteeringVector:
        """Decoder row ``sae.W_dec[feature_index]`` of any SAELens ``SAE``.

        The hook point and model come from ``sae.cfg.metadata`` unless ``hook_name`` is
        given. The vector is used as stored (SAELens decoders usually have unit rows);
        ``provenance["decoder_norm"]`` records its norm.
        """
        d_sae = sae.W_dec.shape[0]
        if not -d_sae <= feature_index < d_sae:
            raise IndexError(f"feature_index {feature_index} out of range for d_sae={d_sae}.")
        metadata = sae.cfg.metadata
        if metadata.hook_head_index is not None:
            raise ValueError(
                "This SAE reads a single attention head (hook_head_index="
                f"{metadata.hook_head_index}); its decoder rows are not vectors of the whole "
                "hook point. Build a SteeringVector from a full-width direction instead."
            )
        direction = sae.W_dec[feature_index].detach().float().cpu()
        norm = float(direction.norm())
        provenance: dict[str, Any] = {
            "sae_class": type(sae).__name__,
            "architecture": sae.cfg.architecture(),
            "d_sae": d_sae,
            "feature_index": int(feature_index) % d_sae,
            "decoder_norm": norm,
        }
        for key in ("release", "sae_id", "repo_id", "neuronpedia_id", "path"):
            if metadata.get(key) is not None:
                provenance[key] = metadata.get(key)
        return cls(
            direction,
            dictionary_hook_name(sae, hook_name),
            model_name=metadata.model_name,
            method="sae",
            normalized=abs(norm - 1.0) < 1e-4,
            provenance=provenance,
        )

    @classmethod
    def from_ssae(cls, ssae: SSAE, index: int, *, hook_name: str | None = None) -> SteeringVector:
        """Unit-norm decoder row ``index`` of a Sparse Shift Autoencoder.

        Uses ``ssae.steering_vector(index)`` (the direction in the model's activation
        space); the hook point and model come from ``ssae.cfg.metadata``.
        """
        direction = ssae.steering_vector(index).detach().float().cpu()
        metadata = ssae.cfg.metadata
        provenance: dict[str, Any] = {
            "sae_class": type(ssae).__name__,
            "d_sae": ssae.cfg.d_sae,
            "feature_index": int(index) % ssae.cfg.d_sae,
        }
        for key in ("release", "sae_id", "repo_id", "path"):
            if metadata.get(key) is not None:
                provenance[key] = metadata.get(key)
        return cls(
            direction,
            dictionary_hook_name(ssae, hook_name),
            model_name=metadata.model_name,
            method="ssae",
            normalized=True,
            provenance=provenance,
        )

    # ------------------------------------------------------------------ persistence
    def file_metadata(self) -> dict[str, Any]:
        """The content of ``vector.json``: format version, width, norm and :meth:`metadata`."""
        return {
            "format_version": _FORMAT_VERSION,
            "d": self.d,
            "norm": self.norm,
            **self.metadata(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``vector.safetensors`` and ``vector.json`` into folder ``path`` atomically."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.file_metadata(), indent=2, sort_keys=False) + "\n"
        weights = {"direction": self.direction.detach().cpu().contiguous()}
        with atomic_path(folder / VECTOR_WEIGHTS_FILENAME, suffix=".safetensors") as tmp:
            save_file(weights, tmp)
        write_text_atomic(folder / VECTOR_METADATA_FILENAME, text)
        return folder

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        model: HookedTransformer | None = None,
        strict: bool = False,
        device: str | torch.device | None = None,
    ) -> SteeringVector:
        """Load a vector saved by :meth:`save`.

        With ``model``, check that the vector fits it: a different ``model_name`` warns
        (:class:`SteeringCompatibilityWarning`), or raises with ``strict=True``; an unknown
        hook point or a width that does not match the hook point always raises.

        Raises:
            FileNotFoundError: a file is missing.
            VectorFileError: a file is damaged or is not a steering vector's.
        """
        folder = Path(path)
        weights_path = folder / VECTOR_WEIGHTS_FILENAME
        meta_path = folder / VECTOR_METADATA_FILENAME
        missing = [p.name for p in (weights_path, meta_path) if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a saved SteeringVector: missing {', '.join(missing)}."
            )
        meta, d = _read_metadata(meta_path)
        try:
            tensors = load_file(str(weights_path), device=str(device or "cpu"))
        except (SafetensorError, OSError) as err:
            raise VectorFileError(
                f"{weights_path} is damaged or not a safetensors file ({err}); save the vector "
                "again."
            ) from None
        direction = tensors.get("direction")
        if direction is None:
            raise VectorFileError(
                f"{weights_path} holds no 'direction' tensor (it has {sorted(tensors)}); save "
                "the vector again."
            )
        try:
            vector = cls(direction, **meta)
        except (TypeError, ValueError) as err:
            raise VectorFileError(
                f"{folder} does not hold a valid steering vector: {err}"
            ) from None
        if d is not None and d != vector.d:
            raise VectorFileError(
                f"{meta_path} says d={d} but {weights_path} holds {vector.d} values: the "
                "two files come from different vectors."
            )
        if model is not None:
            vector.check_compatible(model, strict=strict)
        return vector

    def push_to_hub(
        self,
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
        """Upload this vector to a Hub repository, with a model card listing every vector there.

        See :func:`ssae_lens.steering.hub.push_vector` (``path_in_repo`` is the subfolder,
        default the repository root). Returns the commit URL.
        """
        from ssae_lens.steering.hub import push_vector

        return push_vector(
            self,
            repo_id,
            path_in_repo=path_in_repo,
            positions=positions,
            token=token,
            endpoint=endpoint,
            api=api,
            private=private,
            commit_message=commit_message,
        )

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | None = None,
        endpoint: str | None = None,
        local_files_only: bool = False,
        model: HookedTransformer | None = None,
        strict: bool = False,
        device: str | torch.device | None = None,
    ) -> SteeringVector:
        """Load a vector from a local folder or a Hub repository (through the HF cache).

        See :func:`ssae_lens.steering.hub.load_vector`; ``model``/``strict``/``device`` are
        as in :meth:`load`.
        """
        from ssae_lens.steering.hub import load_vector

        return load_vector(
            repo_id_or_path,
            subfolder=subfolder,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            endpoint=endpoint,
            local_files_only=local_files_only,
            model=model,
            strict=strict,
            device=device,
        )

    def to_gguf(
        self,
        path: str | os.PathLike,
        *,
        scale: float | None = None,
        n_layers: int | None = None,
        model_hint: str | None = None,
    ) -> Path:
        """Write this vector as a llama.cpp control vector (one ``direction.N`` tensor).

        The tensor is ``scale * direction`` (default ``default_scale``), so llama.cpp at
        strength 1 adds what ``steer(model, self, scale=scale, positions="all")`` adds. See
        :func:`ssae_lens.steering.gguf.write_control_vector` for the layer convention.
        """
        from ssae_lens.steering.gguf import write_control_vector

        return write_control_vector(
            [self], path, scale=scale, n_layers=n_layers, model_hint=model_hint
        )

    def check_compatible(self, model: HookedTransformer, *, strict: bool = False) -> None:
        """Check that this vector can steer ``model`` (see :meth:`load`)."""
        check_steerable_hook(model, self.hook_name)
        expected = hook_width(model, self.hook_name)
        if expected is not None and expected != self.d:
            raise ValueError(
                f"Vector has width {self.d} but {self.hook_name!r} of this model has width "
                f"{expected}: the vector was made for a different model or hook point."
            )
        model_name = getattr(model.cfg, "model_name", None)
        if self.model_name and model_name and self.model_name != model_name:
            message = (
                f"Steering vector for {self.hook_name!r} was made for model "
                f"{self.model_name!r} but is used with {model_name!r}. Its direction may mean "
                "nothing in this model; rebuild it from this model's activations (or pass "
                "strict=False to only warn)."
            )
            if strict:
                raise ValueError(message)
            warnings.warn(message, SteeringCompatibilityWarning, stacklevel=3)
