"""generate_tokens: the lean KV-cache loop used for SAE-TS effects matches model.generate, on
both backends (HookedTransformer and TransformerBridge) and in each precision."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from conftest import build_tiny_bridge, build_tiny_model

from ssae_lens._core.precision import PRECISIONS, autocast
from ssae_lens.generation import generate_tokens, greedy_tokens, sample_tokens
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
    if kind == "bridge":  # a tiny Gemma 3 through TransformerBridge
        bridge = build_tiny_bridge(tokenizer)
        return bridge.to(overrides["dtype"]) if "dtype" in overrides else bridge
    return build_tiny_model(
        tokenizer,
        positional_embedding_type="rotary",
        rotary_dim=8,
        normalization_type="RMS",
        **overrides,
    )


@pytest.fixture(scope="module", params=["standard", "rotary", "bridge"])
def models(request, tiny_tokenizer):
    """One architecture in each precision (bfloat16: the same weights, cast)."""
    if request.param == "bridge":
        request.getfixturevalue("bridge_kv_cache")
    model = build(tiny_tokenizer, request.param)
    bf16 = build(tiny_tokenizer, request.param, dtype=torch.bfloat16)
    if request.param == "bridge":  # refused: test_a_bridge_refuses_bf16_autocast
        return {"float32": model, "bfloat16": bf16}
    return {"float32": model, "bf16-autocast": model, "bfloat16": bf16}


def in_precision(models, precision):
    if precision not in models:
        pytest.skip(f"a TransformerBridge refuses {precision!r} (tested below)")
    return models[precision]


@pytest.fixture(scope="module")
def model(models):
    return models["float32"]


def steering(model, on: bool, hook: str = HOOK):
    if not on:
        return contextlib.nullcontext()
    directions = torch.randn(len(PROMPTS), 32, generator=torch.Generator().manual_seed(0))
    return steer_rows(model, directions, hook, [0.0, 3.0, -2.0, 5.0])


# (the bridge warns that a hooked norm's output is rebuilt from the hooked values: intended)
@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale/hook_normalized")
@pytest.mark.parametrize("precision", PRECISIONS)
# steered in a block, or at the final norm (which generate_tokens runs on the last column only)
@pytest.mark.parametrize("steered", [None, HOOK, "ln_final.hook_normalized"])
def test_greedy_matches_model_generate_token_for_token(models, steered, precision):
    model = in_precision(models, precision)
    with steering(model, steered is not None, steered):
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


def test_u_at_the_total_mass_draws_the_last_token_with_positive_probability():
    # u = 1 is where rounding can put a uniform number: no CDF entry exceeds it. The draw
    # must be the last token that has probability, not one past the vocabulary nor a
    # zero-probability tail token.
    logits = torch.tensor([[0.0, 1.0, -math.inf, -math.inf], [0.0, 1.0, 2.0, 0.5]])
    u = torch.ones(2)
    assert sample_tokens(logits, u).tolist() == [1, 3]
    # top_p = 0.5 keeps each row's most likely token alone; top_k = 2 its two most likely.
    assert sample_tokens(logits, u, top_p=0.5).tolist() == [1, 2]
    assert sample_tokens(logits, u, top_k=2).tolist() == [1, 2]


@pytest.mark.parametrize("vocab", [2, 7, 1000, 10_007])
def test_sample_tokens_inverts_the_float64_cdf_at_any_vocabulary_size(vocab):
    # At vocabulary sizes with and without a short last block, with a zero-probability
    # stretch in the middle: each draw is a token with probability whose interval of the
    # float64 CDF, [P(tokens < i), P(tokens <= i)), holds u up to float32 rounding.
    g = torch.Generator().manual_seed(vocab)
    u = torch.rand(256, generator=g).double()
    logits = torch.randn(256, vocab, generator=g) * 3
    logits[:, vocab // 3 : vocab // 2] = -math.inf
    for dtype in (torch.float32, torch.bfloat16):
        rounded = logits.to(dtype)
        probs = torch.softmax(rounded.double(), -1)
        cdf = probs.cumsum(-1)
        draws = sample_tokens(rounded, u.float())[:, None]
        upper = cdf.gather(-1, draws)[:, 0]
        lower = upper - probs.gather(-1, draws)[:, 0]
        assert bool((probs.gather(-1, draws) > 0).all())
        assert bool((lower - 1e-5 <= u).all()) and bool((u < upper + 1e-5).all())
        # Exactly the float64 answer wherever no boundary lies within rounding of u.
        clear = ((cdf - u[:, None]).abs() > 1e-5).all(-1)
        expected = torch.searchsorted(cdf, u[:, None], right=True)[:, 0]
        assert torch.equal(draws[clear, 0], expected[clear])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_tokens_take_the_first_of_tied_maxima(dtype):
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, -1.0, 5.0, 5.0], [0.0, 0.0, 0.0, 7.0]])
    assert greedy_tokens(logits.to(dtype)).tolist() == [1, 0, 3]


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
@pytest.mark.parametrize("hook", [HOOK, "blocks.2.hook_resid_post"])  # the last block too
def test_captured_activations_equal_a_full_steered_pass(models, hook, precision):
    model = in_precision(models, precision)
    with steering(model, True):
        tokens, acts = generate_tokens(model, PROMPTS, 6, seed=2, capture=hook, precision=precision)
        mask = (torch.cumsum(tokens != model.tokenizer.pad_token_id, 1) > 0).long()
        with autocast(precision, "cpu"):
            _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=hook)
    assert acts.shape == (len(PROMPTS), 6, 32)
    assert acts.dtype == torch.float32  # returned in float32 whatever the precision
    tol = CAPTURE_TOL[precision]
    torch.testing.assert_close(acts, cache[hook][:, -6:].float(), atol=tol, rtol=tol)


def test_prompt_and_new_tokens_must_fit_the_context(model):
    n_prompt = len(model.to_tokens(PROMPTS[1])[0])
    tokens, _ = generate_tokens(model, PROMPTS[1:2], 48 - n_prompt, do_sample=False)
    assert tokens.shape == (1, 48)  # exactly the 48-token context of the tiny models
    with pytest.raises(ValueError, match="exceeds the model's context of 48"):
        generate_tokens(model, PROMPTS[1:2], 49 - n_prompt, do_sample=False)


@pytest.mark.parametrize("steered", [False, True])
def test_an_empty_prompt_is_the_bos_token_alone(model, steered):
    # Reference: model.generate from the one-token BOS sequence, built by hand.
    bos = model.tokenizer.bos_token_id
    with steering(model, steered):
        expected = model.generate(
            torch.tensor([[bos]] * len(PROMPTS)), max_new_tokens=7, do_sample=False,
            stop_at_eos=False, verbose=False, return_type="tokens",
        )  # fmt: skip
        tokens, _ = generate_tokens(model, [""] * len(PROMPTS), 7, do_sample=False)
    assert tokens.shape == (len(PROMPTS), 8)
    assert torch.equal(tokens, expected)


def test_an_empty_prompt_without_bos_is_refused(tiny_tokenizer):
    no_bos = build_tiny_model(tiny_tokenizer, default_prepend_bos=False)
    with pytest.raises(ValueError, match="prepends no BOS"):
        generate_tokens(no_bos, ["The cat", ""], 3, do_sample=False)


def filtered_softmax(logits, temperature=1.0, top_k=None, top_p=None):
    """The filtered next-token distribution written out token by token (a naive reference)."""
    probs = [math.exp(x / temperature) for x in logits]
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    keep = set(order if top_k is None else order[:top_k])
    total = sum(probs[i] for i in keep)
    probs = [p / total if i in keep else 0.0 for i, p in enumerate(probs)]
    if top_p is not None:
        mass, nucleus = 0.0, set()
        for i in order:
            if i in keep and mass < top_p:
                nucleus.add(i)
                mass += probs[i]
        total = sum(probs[i] for i in nucleus)
        probs = [p / total if i in nucleus else 0.0 for i, p in enumerate(probs)]
    return torch.tensor(probs, dtype=torch.float64)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 3, None), (1.0, None, 0.7), (0.7, 4, 0.8), (2.0, 2, 0.99)],
)
def test_filtered_sampling_follows_the_filtered_softmax(temperature, top_k, top_p):
    logits = [0.3, 2.0, -1.0, 1.2, 0.9, -3.0]
    n = 200_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(1))
    draws = sample_tokens(
        torch.tensor(logits).expand(n, -1), u, temperature=temperature, top_k=top_k, top_p=top_p
    )
    freq = torch.bincount(draws, minlength=6).double() / n
    expected = filtered_softmax(logits, temperature, top_k, top_p)
    assert bool((freq[expected == 0] == 0).all())  # filtered tokens are never drawn
    torch.testing.assert_close(freq, expected, atol=5e-3, rtol=0)  # binomial s.e. <= 0.0012


def test_filtered_rows_that_agree_draw_the_same_tokens():
    # Two rows whose logits differ only on a token outside the top 3: their filtered
    # distributions are equal, so every uniform number draws the same token from both.
    a = torch.tensor([0.3, 2.0, -1.0, 1.2, 0.9, -3.0])
    b = a.clone()
    b[5] = -0.5  # still outside the top 3
    u = torch.rand(1000, generator=torch.Generator().manual_seed(2))
    for options in (dict(top_k=3), dict(top_k=3, top_p=0.8)):
        from_a = sample_tokens(a.expand(1000, -1), u, **options)
        from_b = sample_tokens(b.expand(1000, -1), u, **options)
        assert torch.equal(from_a, from_b)
    # Without top_k the rows differ in the tail, and some draws differ.
    assert not torch.equal(
        sample_tokens(a.expand(1000, -1), u), sample_tokens(b.expand(1000, -1), u)
    )


def test_same_uniforms_same_tokens_with_top_k_and_top_p(model):
    uniforms = torch.rand(2, 8, generator=torch.Generator().manual_seed(3))
    options = dict(top_k=5, top_p=0.9, temperature=1.3)
    tokens, _ = generate_tokens(
        model, PROMPTS[:2] * 2, 8, uniforms=uniforms.repeat(2, 1), **options
    )
    assert torch.equal(tokens[:2], tokens[2:])
    seeded, _ = generate_tokens(model, PROMPTS[:2], 8, seed=3, **options)
    again, _ = generate_tokens(model, PROMPTS[:2], 8, seed=3, **options)
    assert torch.equal(seeded, again)


def test_top_k_one_is_greedy(model):
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(4))
    u = torch.rand(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sample_tokens(logits, u, top_k=1), logits.argmax(-1))
    assert torch.equal(sample_tokens(logits, u, top_p=1e-6), logits.argmax(-1))
    greedy, _ = generate_tokens(model, PROMPTS, 10, do_sample=False)
    sampled, _ = generate_tokens(model, PROMPTS, 10, do_sample=True, top_k=1, seed=9)
    assert torch.equal(sampled, greedy)


def test_sample_tokens_rejects_bad_options():
    logits, u = torch.zeros(2, 5), torch.rand(2)
    with pytest.raises(ValueError, match="temperature must be positive"):
        sample_tokens(logits, u, temperature=0.0)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        sample_tokens(logits, u, top_k=0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        sample_tokens(logits, u, top_p=1.5)
    with pytest.raises(ValueError, match="one number per row"):
        sample_tokens(logits, torch.rand(3))


def test_a_bridge_refuses_bf16_autocast(tiny_bridge):
    # Under autocast the bridge's Hugging Face attention mask (float32's minimum) rounds to
    # -inf in bfloat16 and a left-padded row becomes NaN; the option is refused up front.
    with pytest.raises(ValueError, match="cannot run a TransformerBridge.*precision='bfloat16'"):
        generate_tokens(tiny_bridge, PROMPTS, 2, precision="bf16-autocast")
