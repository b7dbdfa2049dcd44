"""Library calls leave process-wide state alone: threads, the global RNG, matplotlib's backend,
autocast."""

from __future__ import annotations

from collections.abc import Callable

import matplotlib
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from ssae_lens import (
    SteeringVector,
    TrainingSSAEConfig,
    harvest_shifts,
    measure_effects,
    train_reference_sae,
    train_ssae,
)
from ssae_lens.steering import KeywordScorer, evaluate_steering

HOOK = "blocks.1.hook_resid_post"
PAIRS = (["The cat sat.", "He was writing."], ["The dog slept.", "He wrote a letter."])
TEXTS = ["The cat sat on the mat.", "She walked to the market.", "He was writing a letter."]


def _state() -> tuple[int, torch.Tensor, str, bool]:
    autocast = torch.is_autocast_enabled("cpu")
    return torch.get_num_threads(), torch.get_rng_state(), matplotlib.get_backend(), autocast


def _sae() -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    sae.cfg.metadata.hook_name = HOOK
    return sae


SAE = _sae()  # built here: SAELens's own initialisation draws from the global RNG


CALLS: dict[str, Callable] = {
    "train_ssae": lambda model, tmp: train_ssae(
        torch.randn(64, 8, generator=torch.Generator().manual_seed(0)),
        TrainingSSAEConfig(d_in=8, d_sae=2, training_steps=20, batch_size=16),
        seed=3,
        progress=False,
    ),
    "harvest_shifts": lambda model, tmp: harvest_shifts(model, PAIRS, HOOK, progress=False),
    "harvest_shifts (bf16-autocast)": lambda model, tmp: harvest_shifts(
        model, PAIRS, HOOK, progress=False, precision="bf16-autocast"
    ),
    "evaluate_steering": lambda model, tmp: evaluate_steering(
        model,
        SteeringVector(torch.ones(32), HOOK),
        prompts=["The cat"],
        scales=[2.0],
        behavior_scorer=KeywordScorer(["cat"]),
        max_new_tokens=3,
        n_samples=2,
        do_sample=True,
    ),
    "measure_effects": lambda model, tmp: measure_effects(
        model, SAE, torch.eye(32)[:2], 2.0, prompts=["The cat"], n_samples=2, max_new_tokens=3
    ),
    "train_reference_sae": lambda model, tmp: train_reference_sae(
        model, HOOK, d_sae=16, k=2, n_tokens=256, batch_size=32, texts=TEXTS, cache_dir=tmp
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_call_leaves_threads_rng_and_backend_unchanged(name, tiny_model, tmp_path):
    torch.set_num_threads(1)  # the test session's setting, which the call must keep
    torch.manual_seed(1234)
    before = _state()
    CALLS[name](tiny_model, tmp_path)
    threads, rng, backend, autocast = _state()
    assert threads == before[0]
    assert torch.equal(rng, before[1]), f"{name} consumed or reseeded the global RNG"
    assert backend == before[2]
    assert autocast == before[3]
