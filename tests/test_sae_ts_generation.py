"""generate_tokens: the lean KV-cache loop used for SAE-TS effects matches model.generate."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import build_tiny_model

from ssae_lens.generation import generate_tokens, sample_tokens
from ssae_lens.steering import steer_rows

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["The cat sat", "She walked to the market and", "hey", "le roi, la reine"]


@pytest.fixture(scope="module", params=["standard", "rotary"])
def model(request, tiny_tokenizer):
    if request.param == "standard":
        return build_tiny_model(tiny_tokenizer)
    return build_tiny_model(
        tiny_tokenizer, positional_embedding_type="rotary", rotary_dim=8, normalization_type="RMS"
    )


def steering(model, on: bool):
    if not on:
        return contextlib.nullcontext()
    directions = torch.randn(len(PROMPTS), 32, generator=torch.Generator().manual_seed(0))
    return steer_rows(model, directions, HOOK, [0.0, 3.0, -2.0, 5.0])


@pytest.mark.parametrize("steered", [False, True])
def test_greedy_matches_model_generate_token_for_token(model, steered):
    with steering(model, steered):
        expected = model.generate(
            PROMPTS, max_new_tokens=10, do_sample=False, stop_at_eos=False,
            verbose=False, return_type="tokens", padding_side="left",
        )  # fmt: skip
        tokens, acts = generate_tokens(model, PROMPTS, 10, do_sample=False)
    assert acts is None
    assert torch.equal(tokens, expected)


def test_sampling_is_seeded(model):
    a, _ = generate_tokens(model, PROMPTS, 8, seed=3)
    b, _ = generate_tokens(model, PROMPTS, 8, seed=3)
    c, _ = generate_tokens(model, PROMPTS, 8, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_tokens_follows_the_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, -30.0])
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    draws = sample_tokens(logits.expand(200_000, -1), u, temperature=0.5)
    freq = torch.bincount(draws, minlength=5).double() / len(draws)
    expected = torch.softmax(logits.double() / 0.5, dim=0)
    # binomial standard error <= 0.0012; 5 of them
    torch.testing.assert_close(freq, expected, atol=5e-3, rtol=0)
    assert int(draws.max()) < 5


def test_sample_tokens_inverts_the_cdf_at_given_uniforms():
    probs = torch.tensor([0.2, 0.3, 0.5])
    logits = probs.log().expand(4, -1)
    # cumulative 0.2, 0.5, 1.0: u below 0.2 -> token 0, below 0.5 -> token 1, else token 2
    u = torch.tensor([0.1, 0.3, 0.49, 0.9])
    assert sample_tokens(logits, u).tolist() == [0, 1, 1, 2]


def test_rows_with_the_same_uniforms_sample_the_same_tokens(model):
    uniforms = torch.rand(2, 8, generator=torch.Generator().manual_seed(0))
    tokens, _ = generate_tokens(model, PROMPTS[:2] * 2, 8, uniforms=uniforms.repeat(2, 1))
    assert torch.equal(tokens[:2], tokens[2:])
    other, _ = generate_tokens(model, PROMPTS[:2], 8, uniforms=1 - uniforms)
    assert not torch.equal(tokens[:2], other)
    with pytest.raises(ValueError, match="uniforms must have shape"):
        generate_tokens(model, PROMPTS[:2], 8, uniforms=uniforms[:, :4])


def test_steering_changes_the_tokens(model):
    plain, _ = generate_tokens(model, PROMPTS, 10, do_sample=False)
    with steering(model, True):
        steered, _ = generate_tokens(model, PROMPTS, 10, do_sample=False)
    assert torch.equal(plain[0], steered[0])  # row 0 has scale 0
    assert not torch.equal(plain[1:], steered[1:])


def test_sampling_leaves_the_global_rng_alone(model):
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    generate_tokens(model, PROMPTS, 4, seed=123)
    assert torch.equal(torch.rand(3), expected)


def test_captured_activations_equal_a_full_steered_pass(model):
    with steering(model, True):
        tokens, acts = generate_tokens(model, PROMPTS, 6, seed=2, capture=HOOK)
        mask = (torch.cumsum(tokens != model.tokenizer.pad_token_id, 1) > 0).long()
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=HOOK)
    assert acts.shape == (len(PROMPTS), 6, 32)
    torch.testing.assert_close(acts, cache[HOOK][:, -6:], atol=1e-5, rtol=1e-5)
