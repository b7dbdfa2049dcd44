"""Steering Gemma-3-270M with a CAA sentiment vector (slow: loads the real model)."""

from __future__ import annotations

import pytest
import torch

from ssae_lens.data.builtin import attribute_texts
from ssae_lens.steering import caa_vector, steer

pytestmark = pytest.mark.slow

HOOK = "blocks.6.hook_resid_post"
PROMPTS = ["I think the movie was", "My day today has been"]
SCALE = 8.0


@pytest.fixture(scope="module")
def sentiment_vector(gemma):
    negative, positive = attribute_texts("sentiment", n=16, seed=0)
    return caa_vector(gemma, positive, negative, HOOK, position="mean", batch_size=16)


def greedy(model, cache: bool):
    return model.generate(
        PROMPTS,
        max_new_tokens=8,
        do_sample=False,
        stop_at_eos=False,
        use_past_kv_cache=cache,
        verbose=False,
        return_type="tokens",
    )


def test_caa_vector_moves_sentiment_logits(gemma, sentiment_vector):
    tokens = gemma.to_tokens("The food at the restaurant was")
    great, terrible = gemma.to_single_token(" great"), gemma.to_single_token(" terrible")

    def preference(scale: float) -> float:
        with torch.inference_mode(), steer(gemma, sentiment_vector, scale=scale):
            logits = gemma(tokens)[0, -1]
        return float(logits[great] - logits[terrible])

    assert preference(-SCALE) < preference(0.0) < preference(SCALE)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_steered_generation_changes_and_agrees_with_and_without_cache(
    gemma, sentiment_vector, positions
):
    unsteered = greedy(gemma, cache=True)
    with steer(gemma, sentiment_vector, scale=SCALE, positions=positions):
        cached = greedy(gemma, cache=True)
        uncached = greedy(gemma, cache=False)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, unsteered)
    width = gemma.to_tokens(PROMPTS).shape[1]
    if positions == "generated":
        # the first new token is sampled from the unsteered prompt
        assert torch.equal(cached[:, : width + 1], unsteered[:, : width + 1])
    assert all(not hp.fwd_hooks for hp in gemma.hook_dict.values())
