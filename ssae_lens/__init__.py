"""ssae-lens: Sparse Shift Autoencoders and steering for SAELens / TransformerLens.

``import ssae_lens`` registers the ``"ssae"`` architecture with SAELens, so
``sae_lens.SAE.load_from_disk`` and ``SAE.from_pretrained`` return an :class:`SSAE`.

The modules follow the pipeline: pairs -> activations -> ssae -> training ->
metrics / synthetic -> steering.
"""

from ssae_lens import models
from ssae_lens.activations import (
    PairedActivationStore,
    harvest_activations,
    harvest_shifts,
    model_fingerprint,
)
from ssae_lens.builtin_pairs import attribute_texts
from ssae_lens.config import ConfigError, ExperimentConfig, load_config
from ssae_lens.dictionary import reference_corpus, train_reference_sae
from ssae_lens.pairs import ConceptPairs, DuplicatePairsWarning, list_pairs, load_pairs
from ssae_lens.publish import publish
from ssae_lens.sae_ts import EffectModel, measure_effects, sae_ts_vector
from ssae_lens.ssae import SSAE, SSAEConfig, TrainingSSAE, TrainingSSAEConfig
from ssae_lens.steering import SteeringVector, caa_vector, steer, steer_rows
from ssae_lens.training import SSAETrainer, train_ssae

__version__ = "0.1.0"

__all__ = [
    "SSAE",
    "ConceptPairs",
    "ConfigError",
    "DuplicatePairsWarning",
    "EffectModel",
    "ExperimentConfig",
    "PairedActivationStore",
    "SSAEConfig",
    "SSAETrainer",
    "SteeringVector",
    "TrainingSSAE",
    "TrainingSSAEConfig",
    "attribute_texts",
    "caa_vector",
    "harvest_activations",
    "harvest_shifts",
    "list_pairs",
    "load_config",
    "load_pairs",
    "model_fingerprint",
    "measure_effects",
    "models",
    "publish",
    "reference_corpus",
    "sae_ts_vector",
    "steer",
    "steer_rows",
    "train_reference_sae",
    "train_ssae",
]
