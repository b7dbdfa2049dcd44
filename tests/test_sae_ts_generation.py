"""generate_tokens: the lean KV-cache loop used for SAE-TS effects matches model.generate,
in each precision."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import build_tiny_model

from ssae_lens._core.precision import PRECISIONS, autocast
from ssae_lens.generation import generate_tokens, sample_tokens
from ssae_lens.steering import steer_rows

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["The cat sat", "She walked to the market and", "hey", "le roi, la reine"]


# Captured activations against a full pass (atol = rtol): float32 differs only by the order
# of float32 sums; bfloat16 by kernels that may block one-token steps differently (2**-7 is two
# bfloat16 ulps; on the avx512_bf16 CPU these tests were written on they agree exactly).
CAPTURE_TOL = {"float32": 1e-5, "bf16-autocast": 2**-7, "bfloat16": 2**-7}


def build(tokenizer, kind: str, **overrides):
    if kind == "standard":
        return build_tiny_model(tokenizer, **overrides)
    return build_tiny_model(
        tokenizer,
        positional_embedding_type="rotary",
        rotary_dim=8,
        normalization_type="RMS",
        **overrides,
    )


@pytest.fixture(scope="module", params=["standard", "rotary"])
def models(request, tiny_tokenizer):
    """One architecture in each precision (bfloat16: the same weights, cast)."""
    model = build(tiny_tokenizer, request.param)
    bf16 = build(tiny_tokenizer, request.param, dtype=torch.bfloat16)
    return {"float32": model, "bf16-autocast": model, "bfloat16": bf16}


@pytest.fixture(scope="module")
def model(models):
    return models["float32"]


def steering(model, on: bool):
    if not on:
        return contextlib.nullcontext()
    directions = torch.randn(len(PROMPTS), 32, generator=torch.Generator().manual_seed(0))
    return steer_rows(model, directions, HOOK, [0.0, 3.0, -2.0, 5.0])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("steered", [False, True])
def test_greedy_matches_model_generate_token_for_token(models, steered, precision):
    model = models[precision]
    with steering(model, steered):
        with autocast(precision, "cpu"):
            expected = model.generate(
                PROMPTS, max_new_tokens=10, do_sample=False, stop_at_eos=False,
                verbose=False, return_type="tokens", padding_side="left",
            )  # fmt: skip
        tokens, acts = generate_tokens(model, PROMPTS, 10, do_sample=False, precision=precision)
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


@pytest.mark.parametrize("precision", PRECISIONS)
def test_captured_activations_equal_a_full_steered_pass(models, precision):
    model = models[precision]
    with steering(model, True):
        tokens, acts = generate_tokens(model, PROMPTS, 6, seed=2, capture=HOOK, precision=precision)
        mask = (torch.cumsum(tokens != model.tokenizer.pad_token_id, 1) > 0).long()
        with autocast(precision, "cpu"):
            _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=HOOK)
    assert acts.shape == (len(PROMPTS), 6, 32)
    assert acts.dtype == torch.float32  # returned in float32 whatever the precision
    tol = CAPTURE_TOL[precision]
    torch.testing.assert_close(acts, cache[HOOK][:, -6:].float(), atol=tol, rtol=tol)
