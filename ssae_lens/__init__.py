"""ssae-lens: Sparse Shift Autoencoders and steering for SAELens / TransformerLens.

``import ssae_lens`` registers the ``"ssae"`` architecture with SAELens, so
``sae_lens.SAE.load_from_disk`` and ``SAE.from_pretrained`` return an :class:`SSAE`
(in the ``ssae-lens`` command itself, importing :mod:`ssae_lens.ssae` does).

The subpackages follow the pipeline: ``data`` (pairs) -> ``activations`` (shifts) ->
``ssae`` (model, training) -> ``metrics`` -> ``steering`` (vectors, applying, evaluating) and
``sae_ts`` (SAE-targeted steering), with ``generation``, ``models`` and ``saes`` (reference
SAELens dictionaries) beside them. ``shift_data`` and ``compare`` fit and score the SSAE and its
baselines the same way for the demo (``demo``), the command line (``cli``, ``config``) and the
studies in ``benchmarks/``.
"""

import os
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any


def _command_line_process() -> bool:
    """Whether this process is the ``ssae-lens`` command (console script or ``-m ssae_lens``)."""
    argv = getattr(sys, "argv", None) or [""]
    if os.path.basename(argv[0]).removesuffix(".exe") == "ssae-lens":
        return True
    orig = getattr(sys, "orig_argv", [])  # argv[0] is still "-m" while the package imports
    return any(a == "-m" and b == "ssae_lens" for a, b in zip(orig, orig[1:], strict=False))


# The public API is imported eagerly (importing SAELens and registering "ssae"), except in the
# ``ssae-lens`` command, whose ``--help`` would otherwise wait for torch and SAELens: there each
# command imports what it needs, and these names load on first use (``__getattr__``).
if TYPE_CHECKING or not _command_line_process():
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
        SAELoadError,
        SparsitySelection,
        SSAEConfig,
        SSAETrainer,
        TrainingSSAE,
        TrainingSSAEConfig,
        load,
        select_sparsity_target,
        train_ssae,
    )
    from ssae_lens.steering import SteeringVector, caa_vector, steer, steer_rows
else:
    _HOMES = ("activations", "config", "data", "publish", "sae_ts", "saes", "ssae", "steering")

    def __getattr__(name: str) -> Any:
        """A public name, imported on first use (``ssae-lens`` process only)."""
        if name == "models":
            return import_module("ssae_lens.models")
        if name in __all__:
            for home in _HOMES:
                module = import_module(f"ssae_lens.{home}")
                if hasattr(module, name):
                    return getattr(module, name)
        raise AttributeError(f"module 'ssae_lens' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "SAELoadError",
    "SSAE",
    "ConceptPairs",
    "ConfigError",
    "DuplicatePairsWarning",
    "EffectModel",
    "ExperimentConfig",
    "PairedActivationStore",
    "SSAEConfig",
    "SSAETrainer",
    "SparsitySelection",
    "SteeringVector",
    "TrainingSSAE",
    "TrainingSSAEConfig",
    "attribute_texts",
    "caa_vector",
    "harvest_activations",
    "harvest_shifts",
    "list_pairs",
    "load",
    "load_config",
    "load_pairs",
    "model_fingerprint",
    "measure_effects",
    "models",
    "publish",
    "reference_corpus",
    "register_pairs",
    "sae_ts_vector",
    "select_sparsity_target",
    "steer",
    "steer_rows",
    "train_reference_sae",
    "train_ssae",
]
