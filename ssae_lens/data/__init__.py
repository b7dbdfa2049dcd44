"""Pairs of texts that differ in a few concepts: the container, loaders and named datasets."""

from ssae_lens.data import builtin as _builtin  # noqa: F401  (registers the built-in datasets)
from ssae_lens.data.builtin import attribute_texts
from ssae_lens.data.pairs import (
    ConceptPairs,
    DuplicatePairsWarning,
    IdenticalPairsWarning,
    MissingColumnsError,
    PairsError,
)
from ssae_lens.data.registry import list_pairs, load_pairs, register_pairs
from ssae_lens.data.synthetic import SyntheticShifts, make_synthetic_shifts

__all__ = [
    "ConceptPairs",
    "DuplicatePairsWarning",
    "IdenticalPairsWarning",
    "MissingColumnsError",
    "PairsError",
    "SyntheticShifts",
    "attribute_texts",
    "list_pairs",
    "load_pairs",
    "make_synthetic_shifts",
    "register_pairs",
]
