"""Ordinary SAELens dictionaries: offline reference SAEs that ssae-lens trains itself, and
feature cards that read any SAELens SAE's features."""

from ssae_lens.saes.cards import FeatureCard, FeatureContext, feature_cards
from ssae_lens.saes.reference import reference_corpus, train_reference_sae, train_sae

__all__ = [
    "FeatureCard",
    "FeatureContext",
    "feature_cards",
    "reference_corpus",
    "train_reference_sae",
    "train_sae",
]
