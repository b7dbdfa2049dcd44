"""Labelled activation shifts of one dataset, split into training and held-out pairs.

:class:`ShiftData` is what :mod:`ssae_lens.compare` fits and scores (the demo, ``ssae-lens
evaluate`` and the paper study all use it): per split the shifts ``z(target) - z(source)``,
the activations of both sides (steering accuracy needs them), the concept labels, and one
supervised reference direction per concept. :func:`harvest_shift_data` builds it from a model
and pairs, :func:`synthetic_shift_data` from synthetic shifts with a known mixing; one
safetensors file holds it (:meth:`ShiftData.save`, :meth:`ShiftData.load`; ``ssae-lens
harvest`` writes it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import torch
from jaxtyping import Float
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformer_lens import HookedTransformer

from ssae_lens import models
from ssae_lens._core.io import atomic_path
from ssae_lens.activations import harvest_shifts
from ssae_lens.config import ConfigError
from ssae_lens.data.pairs import ConceptPairs, MissingColumnsError, split_indices
from ssae_lens.data.registry import load_pairs
from ssae_lens.data.synthetic import SyntheticShifts, make_synthetic_shifts
from ssae_lens.metrics import concept_directions, regression_directions

if TYPE_CHECKING:
    from ssae_lens.config import ExperimentConfig

__all__ = [
    "ShiftData",
    "experiment_data",
    "harvest_shift_data",
    "label_encoding",
    "load_dataset",
    "reference_directions",
    "synthetic_shift_data",
]

Encoding = Literal["change", "onehot"]
_SPLITS = ("train", "test")


@dataclass
class ShiftData:
    """Shifts, labels and reference directions of one dataset at one hook, split in two.

    ``src_*`` / ``tgt_*`` (the activations of both sides) and ``train`` / ``test`` (the pairs)
    are ``None`` for synthetic shifts. Labels have one column per concept (none for unlabelled
    pairs); ``reference`` has one row per concept.
    """

    name: str
    concepts: list[str]
    reference: Float[Tensor, "c d"]
    shifts_tr: Float[Tensor, "n_train d"]
    labels_tr: Float[Tensor, "n_train c"]
    shifts_te: Float[Tensor, "n_test d"]
    labels_te: Float[Tensor, "n_test c"]
    src_tr: Float[Tensor, "n_train d"] | None = None
    tgt_tr: Float[Tensor, "n_train d"] | None = None
    src_te: Float[Tensor, "n_test d"] | None = None
    tgt_te: Float[Tensor, "n_test d"] | None = None
    train: ConceptPairs | None = None
    test: ConceptPairs | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # model, hook_name, ...

    def median_shift_norm(self) -> float:
        """The median norm of the training shifts (the natural unit of a steering scale)."""
        return float(self.shifts_tr.norm(dim=-1).median())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tensors (``{train,test}.{shifts,labels,source,target}``, ``reference``) and
        the name, concepts and metadata to one safetensors file, atomically (no pair texts)."""
        tensors = {"reference": self.reference}
        for split in _SPLITS:
            suffix = "tr" if split == "train" else "te"
            for key, attr in (("shifts", "shifts"), ("labels", "labels")):
                tensors[f"{split}.{key}"] = getattr(self, f"{attr}_{suffix}")
            for key, attr in (("source", "src"), ("target", "tgt")):
                value = getattr(self, f"{attr}_{suffix}")
                if value is not None:
                    tensors[f"{split}.{key}"] = value
        # Copies: the file format forbids tensors that share memory.
        tensors = {k: v.detach().float().cpu().clone() for k, v in tensors.items()}
        meta = {**self.metadata, "name": self.name, "concepts": json.dumps(self.concepts)}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, tmp, metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShiftData:
        """Read a file written by :meth:`save` (``ssae-lens harvest``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"shifts file {str(path)!r} does not exist.")
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no iteration)
                meta = dict(f.metadata() or {})
            concepts = json.loads(meta.pop("concepts", "[]"))
        except (SafetensorError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{path} is not a shifts file ({err}); pass the shifts.safetensors that "
                "`ssae-lens harvest` (or ShiftData.save) wrote."
            ) from None
        required = ("reference", "train.shifts", "train.labels", "test.shifts", "test.labels")
        missing = [k for k in required if k not in tensors]
        if missing:
            raise ValueError(
                f"{path} holds no {missing[0]!r}; write it with `ssae-lens harvest` "
                "(or ShiftData.save)."
            )
        name = meta.pop("name", path.stem)
        return cls(
            name,
            concepts,
            tensors["reference"],
            tensors["train.shifts"],
            tensors["train.labels"],
            tensors["test.shifts"],
            tensors["test.labels"],
            tensors.get("train.source"),
            tensors.get("train.target"),
            tensors.get("test.source"),
            tensors.get("test.target"),
            metadata=meta,
        )


def label_encoding(pairs: ConceptPairs) -> Encoding:
    """``"onehot"`` for categorical factors (one direction per value), else ``"change"``."""
    first = pairs.labels[0] if pairs.labels else {}
    return "onehot" if any(isinstance(v, tuple) for v in first.values()) else "change"


def reference_directions(
    shifts: Float[Tensor, "n d"], labels: Float[Tensor, "n c"], encoding: Encoding
) -> Float[Tensor, "c d"]:
    """Supervised concept directions: single-concept mean shifts
    (:func:`~ssae_lens.metrics.concept_directions`); least squares
    (:func:`~ssae_lens.metrics.regression_directions`) for one-hot labels, where no pair
    changes a single column, and whenever some concept never changes alone."""
    changed = labels != 0
    alone = (changed & (changed.sum(-1, keepdim=True) == 1)).any(0)
    if encoding == "onehot" or not bool(alone.all()):
        return regression_directions(shifts, labels)
    return concept_directions(shifts, labels)


@overload
def harvest_shift_data(
    model: HookedTransformer, pairs: ConceptPairs, hook_name: str, **options: object
) -> ShiftData: ...
@overload
def harvest_shift_data(
    model: HookedTransformer, pairs: ConceptPairs, hook_name: Sequence[str], **options: object
) -> dict[str, ShiftData]: ...
def harvest_shift_data(
    model: HookedTransformer,
    pairs: ConceptPairs,
    hook_name: str | Sequence[str],
    *,
    name: str = "pairs",
    position: Literal["last", "mean"] = "last",
    test_fraction: float = 0.25,
    split_seed: int = 0,
    encoding: Encoding = "change",
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> ShiftData | dict[str, ShiftData]:
    """Harvest both sides of every pair at one or more hooks (in one pass) and split them.

    The split is ``pairs.split_indices(test_fraction, split_seed)``; labels are
    ``pairs.label_matrix(encoding=encoding)`` (no columns for unlabelled pairs); the reference
    directions come from the training split only (:func:`reference_directions`).

    Returns:
        A :class:`ShiftData`, or a dict of them by hook if ``hook_name`` is a list.
    """
    hooks = [hook_name] if isinstance(hook_name, str) else list(hook_name)
    train, test = pairs.split_indices(test_fraction, seed=split_seed)
    if pairs.labels is not None:
        labels, concepts = pairs.label_matrix(encoding=encoding)
    else:
        labels, concepts = torch.zeros(len(pairs), 0), []
    acts = harvest_shifts(
        model,
        pairs,
        hooks,
        position,
        batch_size=batch_size,
        cache_dir=cache_dir,
        return_both=True,
        progress=progress,
    )
    meta = {"dataset": name, "model": model.cfg.model_name, "position": position}
    out = {}
    for hook in hooks:
        src, tgt = acts[hook]
        shifts = tgt - src
        reference = (
            reference_directions(shifts[train], labels[train], encoding)
            if concepts
            else shifts.new_zeros(0, shifts.shape[1])
        )
        out[hook] = ShiftData(
            name,
            concepts,
            reference,
            shifts[train],
            labels[train],
            shifts[test],
            labels[test],
            src[train],
            tgt[train],
            src[test],
            tgt[test],
            pairs.subset(train),
            pairs.subset(test),
            metadata={**meta, "hook_name": hook},
        )
    return out[hook_name] if isinstance(hook_name, str) else out


def synthetic_shift_data(
    data: SyntheticShifts, *, test_fraction: float = 0.25, split_seed: int = 0
) -> ShiftData:
    """Synthetic shifts split like pairs; the references are the true mixing columns."""
    train, test = split_indices(len(data.shifts), test_fraction, split_seed)
    n_concepts = data.mixing.shape[1]
    return ShiftData(
        "synthetic",
        [f"concept_{i}" for i in range(n_concepts)],
        data.mixing.T.contiguous(),
        data.shifts[train],
        data.concept_changes[train],
        data.shifts[test],
        data.concept_changes[test],
        metadata={"dataset": "synthetic"},
    )


def load_dataset(
    dataset: str,
    *,
    source_key: str = "source",
    target_key: str = "target",
    label_keys: Sequence[str] | None = None,
) -> ConceptPairs:
    """A registered dataset by name (:func:`~ssae_lens.data.load_pairs`), or a ``.jsonl`` /
    ``.csv`` pairs file (relative paths from the working directory) read with the given
    fields."""
    if dataset.endswith((".jsonl", ".csv")):
        path = Path(dataset)
        if not path.is_file():
            raise FileNotFoundError(
                f"pairs file {dataset!r} does not exist (relative paths are from the working "
                f"directory, {Path.cwd()})."
            )
        read = ConceptPairs.from_jsonl if dataset.endswith(".jsonl") else ConceptPairs.from_csv
        return read(path, source_key=source_key, target_key=target_key, label_keys=label_keys)
    return load_pairs(dataset)


def experiment_data(cfg: ExperimentConfig, model: HookedTransformer | None = None) -> ShiftData:
    """The shift data an :class:`~ssae_lens.config.ExperimentConfig` describes: its dataset
    harvested at ``cfg.hook_name`` (``model``, or ``cfg.model`` loaded on ``cfg.device``) with
    the ``harvest:`` options, or ``synthetic`` shifts from the ``synthetic:`` options."""
    h = cfg.harvest
    if cfg.dataset == "synthetic":
        data = synthetic_shift_data(
            make_synthetic_shifts(**cfg.synthetic),
            test_fraction=h.test_fraction,
            split_seed=h.split_seed,
        )
    else:
        try:
            pairs = load_dataset(
                cfg.dataset,
                source_key=cfg.columns.source,
                target_key=cfg.columns.target,
                label_keys=cfg.columns.labels,
            )
        except MissingColumnsError as err:
            raise ConfigError(
                f"{err.where} has no {', '.join(map(repr, err.missing))} "
                f"column{'s' if len(err.missing) > 1 else ''}; available: "
                f"{err.available}. Name the right ones in the config's columns: section, e.g. "
                f"--set columns.source={err.available[0] if err.available else 'NAME'}."
            ) from None
        data = harvest_shift_data(
            model if model is not None else models.load_model(cfg.model, device=cfg.device),
            pairs,
            cfg.hook_name,
            name=cfg.dataset,
            position=cfg.position,
            test_fraction=h.test_fraction,
            split_seed=h.split_seed,
            batch_size=h.batch_size,
            cache_dir=models.cache_root() / "activations" if h.use_cache else None,
        )
    if cfg.dataset == "synthetic":  # no model ran: say so rather than name the config's model
        data.metadata.update(model="synthetic", hook_name="synthetic")
    # Harvested data names the model as model.cfg.model_name (what SteeringVector compares
    # against), not as the config spelled it (an alias, say).
    return data
