"""The Sparse Shift Autoencoder: the SAELens architecture ``"ssae"`` and its training."""

from ssae_lens.ssae.loading import SAELoadError, load
from ssae_lens.ssae.model import SSAE, SSAEConfig, TrainingSSAE, TrainingSSAEConfig
from ssae_lens.ssae.training import SSAETrainer, TrainingRecord, load_or_train_ssae, train_ssae

__all__ = [
    "SAELoadError",
    "SSAE",
    "SSAEConfig",
    "SSAETrainer",
    "TrainingRecord",
    "TrainingSSAE",
    "TrainingSSAEConfig",
    "load",
    "load_or_train_ssae",
    "train_ssae",
]
