"""The Sparse Shift Autoencoder: the SAELens architecture ``"ssae"`` and its training."""

from ssae_lens.ssae.loading import SAELoadError, load
from ssae_lens.ssae.model import SSAE, SSAEConfig, TrainingSSAE, TrainingSSAEConfig
from ssae_lens.ssae.selection import SparsityPoint, SparsitySelection, select_sparsity_target
from ssae_lens.ssae.training import SSAETrainer, TrainingRecord, load_or_train_ssae, train_ssae

__all__ = [
    "SAELoadError",
    "SSAE",
    "SSAEConfig",
    "SSAETrainer",
    "SparsityPoint",
    "SparsitySelection",
    "TrainingRecord",
    "TrainingSSAE",
    "TrainingSSAEConfig",
    "load",
    "load_or_train_ssae",
    "select_sparsity_target",
    "train_ssae",
]
