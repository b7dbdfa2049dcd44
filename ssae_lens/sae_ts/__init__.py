"""SAE-Targeted Steering (SAE-TS): steering vectors that hit chosen SAE features.

The method of Chalnev, Siu & Conmy (2024), for any SAELens dictionary, one module per step:

1. :mod:`~ssae_lens.sae_ts.calibration`: per unit-norm direction, the scale at which the LM
   loss on a reference text rises by a fixed amount.
2. :mod:`~ssae_lens.sae_ts.effects`: the effect ``y(s) = E_steered[f(x)] - E_unsteered[f(x)]``
   of each direction on the mean SAE feature activations of text generated under steering.
3. :mod:`~ssae_lens.sae_ts.effect_model`: the linear map ``y ~ s W + b``.
4. :mod:`~ssae_lens.sae_ts.vectors`: vectors for a weighted feature set ``t``: SAE-TS
   (``normalise(normalise(W t) - lambda normalise(W b))``), the pseudo-inverse
   (``normalise((t / |t| - b) W^+)``) and rotation variants, and the decoder-row baseline.

::

    scales = calibrate_scales(model, dirs, hook, reference_texts=texts)  # each direction's own
    effects = measure_effects(model, sae, dirs, scales, cache_dir="effects")  # reference protocol
    effect_model, report = EffectModel.fit(dirs, effects)
    v = sae_ts_vector(effect_model, {123: 0.5, 456: 0.5})

:func:`effect_directions` builds the directions (decoder rows, mixes, random);
:class:`EffectData` keeps measured effects with the SAE's identity and the settings, and
with :class:`EffectModel` goes to and from the Hugging Face Hub with a model card
(:mod:`ssae_lens.sae_ts.hub`). ``ssae-lens effects`` and ``ssae-lens sae-ts`` run these steps
from a config, also under ``torchrun``.
"""

from ssae_lens.sae_ts.calibration import calibrate_scales, interpolate_scales
from ssae_lens.sae_ts.directions import effect_directions
from ssae_lens.sae_ts.effect_data import EffectData, dictionary_identity
from ssae_lens.sae_ts.effect_model import EffectModel, FitReport
from ssae_lens.sae_ts.effects import EFFECT_PROMPTS, measure_effects, side_effect_ratio
from ssae_lens.sae_ts.vectors import (
    Target,
    decoder_rotation,
    decoder_row_vector,
    pinv_vector,
    rotation_vector,
    sae_ts_vector,
)

__all__ = [
    "EFFECT_PROMPTS",
    "EffectData",
    "EffectModel",
    "FitReport",
    "Target",
    "calibrate_scales",
    "decoder_rotation",
    "decoder_row_vector",
    "dictionary_identity",
    "effect_directions",
    "interpolate_scales",
    "measure_effects",
    "pinv_vector",
    "rotation_vector",
    "sae_ts_vector",
    "side_effect_ratio",
]
