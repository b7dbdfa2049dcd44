"""Ordinary SAELens dictionaries that ssae-lens trains itself (offline reference SAEs)."""

from ssae_lens.saes.reference import reference_corpus, train_reference_sae, train_sae

__all__ = ["reference_corpus", "train_reference_sae", "train_sae"]
