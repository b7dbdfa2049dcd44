"""ssae-lens: Sparse Shift Autoencoders and steering for SAELens / TransformerLens.

``import ssae_lens`` registers the ``"ssae"`` architecture with SAELens, so
``sae_lens.SAE.load_from_disk`` and ``SAE.from_pretrained`` return an :class:`SSAE`.

The subpackages follow the pipeline: ``data`` (pairs) -> ``activations`` (shifts) ->
``ssae`` (model, training) -> ``metrics`` -> ``steering`` (vectors, applying, evaluating) and
``sae_ts`` (SAE-targeted steering), with ``generation``, ``models`` and ``saes`` (reference
SAELens dictionaries) beside them.
"""

from ssae_lens import models
from ssae_lens.activations import (
    PairedActivationStore,
    harvest_activations,
    harvest_shifts,
    model_fingerprint,
)
from ssae_lens.config import ConfigError, ExperimentConfig, load_config
from ssae_lens.data import (
    ConceptPairs,
    DuplicatePairsWarning,
    attribute_texts,
    list_pairs,
    load_pairs,
    register_pairs,
)
from ssae_lens.publish import publish
from ssae_lens.sae_ts import EffectModel, measure_effects, sae_ts_vector
from ssae_lens.saes import reference_corpus, train_reference_sae
from ssae_lens.ssae import (
    SSAE,
    SSAEConfig,
    SSAETrainer,
    TrainingSSAE,
    TrainingSSAEConfig,
    train_ssae,
)
from ssae_lens.steering import SteeringVector, caa_vector, steer, steer_rows

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
    "register_pairs",
    "sae_ts_vector",
    "steer",
    "steer_rows",
    "train_reference_sae",
    "train_ssae",
]
