"""Steering vectors, applying them, and building them, on the tiny random model.

The reference for generation is teacher forcing: one plain forward pass over the final
sequence (prompt + generated tokens) with a hand-written hook that edits exactly the
columns a selector should edit. Its logits at column ``P - 1 + k`` must equal the logits
``generate`` used for its ``k``-th token, with and without the KV cache, in each precision
(tolerances in ``PARITY_TOL``).
"""

from __future__ import annotations

import contextlib
import json
import warnings

import pytest
import torch
from conftest import build_tiny_bridge, build_tiny_model, require_kv_cache
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens.model_bridge import TransformerBridge

from ssae_lens._core.finite import all_finite
from ssae_lens._core.precision import PRECISIONS, autocast
from ssae_lens.ssae import SSAE, SSAEConfig
from ssae_lens.steering import (
    Steering,
    SteeringCompatibilityWarning,
    SteeringVector,
    apply_steering,
    caa_vector,
    mean_shift_vector,
    pca_vector,
    steer,
    steer_rows,
)
from ssae_lens.steering.apply import _Step

HOOK = "blocks.1.hook_resid_pre"
PROMPTS = ["The cat sat on the mat", "I love this movie"]
N_NEW = 6
SCALE = 8.0
# KV-cache parity tolerance on the logits (atol = rtol): float32 differs only by the order of
# float32 sums. In bfloat16, 2**-7 is two bfloat16 ulps, room for matrix-product kernels that
# block a one-token decode step differently from the full pass (on the avx512_bf16 CPU these
# tests were written on, the bfloat16 and autocast logits agree exactly).
PARITY_TOL = {"float32": 1e-4, "bf16-autocast": 2**-7, "bfloat16": 2**-7}


def unit(d: int, seed: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@pytest.fixture(scope="module", params=["hooked", "bridge"])
def model(request, tiny_model, tiny_bridge):
    return tiny_model if request.param == "hooked" else tiny_bridge


@pytest.fixture(scope="module")
def models(model, tiny_tokenizer):
    """The model for each precision it runs in (bfloat16: the same weights, cast)."""
    if isinstance(model, TransformerBridge):  # refuses bf16-autocast
        return {"float32": model, "bfloat16": build_tiny_bridge(tiny_tokenizer).to(torch.bfloat16)}
    bf16 = build_tiny_model(tiny_tokenizer, dtype=torch.bfloat16)
    return {"float32": model, "bf16-autocast": model, "bfloat16": bf16}


@pytest.fixture(scope="module")
def vector(model) -> SteeringVector:
    return SteeringVector(unit(model.cfg.d_model, 0), HOOK, model_name=model.cfg.model_name)


def assert_clean(model) -> None:
    """No steering hook, forward observer, logits check or generate wrapper is left."""
    assert all(not hp.fwd_hooks and not hp._forward_hooks for hp in model.hook_dict.values())
    assert all(not block._forward_pre_hooks for block in model.blocks)
    assert not getattr(model, "original_model", model)._forward_pre_hooks
    assert not model.unembed._forward_hooks
    assert "generate" not in model.__dict__


def generate(model, prompts, cache: bool, n: int = N_NEW):
    return model.generate(
        prompts,
        max_new_tokens=n,
        do_sample=False,
        stop_at_eos=False,
        use_past_kv_cache=cache,
        verbose=False,
        return_type="tokens",
        output_logits=True,
    )


def prompt_layout(model, prompts):
    """Prompt width P and per-row left-padding, from each prompt tokenised alone."""
    lengths = torch.tensor([model.to_tokens(p).shape[1] for p in prompts])
    width = int(lengths.max())
    return width, width - lengths


def teacher_forced_logits(model, sequences, pads, select, direction, scale, hook=HOOK):
    """Logits of one forward over ``sequences`` adding ``scale * direction`` where
    ``select(row, column, pad)`` is true, written independently of the steering code."""
    batch, width = sequences.shape
    mask = torch.ones(batch, width, dtype=torch.long)
    for b in range(batch):
        mask[b, : pads[b]] = 0
    chosen = torch.tensor(
        [
            [bool(select(b, c, int(pads[b]))) and c >= pads[b] for c in range(width)]
            for b in range(batch)
        ]
    )

    def add(act, hook):  # in float32, rounded once to the activations' dtype (as steer does)
        edit = scale * chosen[..., None].float() * direction.float()
        return (act.float() + edit).to(act.dtype)

    with torch.inference_mode():
        return model.run_with_hooks(sequences, attention_mask=mask, fwd_hooks=[(hook, add)])


SELECTORS = {
    "all": lambda P, n_real: lambda b, c, pad: True,
    "prompt": lambda P, n_real: lambda b, c, pad: c < P,
    "generated": lambda P, n_real: lambda b, c, pad: c >= P,
    # indices over real tokens: the second and the last prompt token of each row
    "indices": lambda P, n_real: lambda b, c, pad: c - pad in (1, n_real[b] - 1),
}
POSITIONS = {"all": "all", "prompt": "prompt", "generated": "generated", "indices": [1, -1]}


# ---------------------------------------------------------------------------- generation
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("selector", list(SELECTORS))
def test_generate_matches_teacher_forcing_with_and_without_cache(
    request, models, vector, selector, precision
):
    if precision not in models:
        pytest.skip(f"a TransformerBridge refuses {precision!r} (test_sae_ts_generation.py)")
    model = models[precision]
    require_kv_cache(request, model)
    tol = PARITY_TOL[precision]
    width, pads = prompt_layout(model, PROMPTS)
    n_real = (width - pads).tolist()
    runs = {}
    with autocast(precision, "cpu"):
        for cache in (True, False):
            with steer(model, vector, scale=SCALE, positions=POSITIONS[selector]):
                runs[cache] = generate(model, PROMPTS, cache)
            assert_clean(model)
        assert torch.equal(runs[True].sequences, runs[False].sequences)

        select = SELECTORS[selector](width, n_real)
        reference = teacher_forced_logits(
            model, runs[True].sequences, pads, select, vector.direction, SCALE
        )
        for cache, out in runs.items():
            for k, step_logits in enumerate(out.logits):
                torch.testing.assert_close(
                    step_logits,
                    reference[:, width - 1 + k],
                    atol=tol,
                    rtol=tol,
                    msg=f"step {k}, cache={cache}",
                )

        unsteered = generate(model, PROMPTS, cache=True)
    assert not torch.equal(runs[True].sequences, unsteered.sequences), "steering had no effect"


def test_generated_positions_leave_the_prompt_unsteered(request, model, vector):
    """The first generated token comes from the unsteered prompt; later ones are steered."""
    require_kv_cache(request, model)
    unsteered = generate(model, PROMPTS, cache=True)
    with steer(model, vector, scale=SCALE, positions="generated"):
        steered = generate(model, PROMPTS, cache=True)
    torch.testing.assert_close(steered.logits[0], unsteered.logits[0], atol=0, rtol=0)
    assert not torch.allclose(steered.logits[1], unsteered.logits[1])


@pytest.mark.parametrize("prefill_steered", [True, False])
def test_manual_kv_cache_prefill_is_prompt_and_continuation_is_generated(
    request, model, vector, prefill_steered
):
    """run_with_cache on an empty KV cache is the prompt; later calls are generated tokens,
    also when the prompt went into the cache before steering began (its columns then count
    as the prompt)."""
    require_kv_cache(request, model)
    if isinstance(model, TransformerBridge):  # a Hugging Face cache, no attention mask
        from transformers import DynamicCache

        kv = {
            "past_key_values": DynamicCache(config=model.original_model.config),
            "use_cache": True,
        }
    else:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        kv = {"past_kv_cache": TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 1)}

    tokens = model.to_tokens(PROMPTS[0])
    _, plain = model.run_with_cache(tokens)
    next_token = plain["blocks.2.hook_resid_post"][:, -1:].new_tensor([[5]]).long()
    steering = steer(model, vector, scale=SCALE, positions="generated")
    with contextlib.ExitStack() as stack:
        if prefill_steered:
            stack.enter_context(steering)
        _, prefill = model.run_with_cache(tokens, **kv)
        if not prefill_steered:
            stack.enter_context(steering)
        decode_logits = model(next_token, **kv)
    for name in plain:
        torch.testing.assert_close(prefill[name], plain[name], atol=1e-5, rtol=1e-5)

    width = tokens.shape[1]
    sequence = torch.cat([tokens, next_token], dim=1)
    reference = teacher_forced_logits(
        model, sequence, [0], lambda b, c, pad: c >= width, vector.direction, SCALE
    )
    torch.testing.assert_close(decode_logits[:, -1], reference[:, -1], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- forward passes
def steered_minus_plain(model, tokens, mask=None, **steer_kwargs):
    _, plain = model.run_with_cache(tokens, attention_mask=mask, names_filter=HOOK)
    with steer(model, **steer_kwargs):
        _, steered = model.run_with_cache(tokens, attention_mask=mask, names_filter=HOOK)
    return steered[HOOK] - plain[HOOK]


def test_indices_count_real_tokens_of_each_left_padded_row(model, vector, monkeypatch):
    monkeypatch.setattr(model.tokenizer, "padding_side", "left")
    tokens = model.to_tokens(PROMPTS)
    width, pads = prompt_layout(model, PROMPTS)
    # (a HookedTransformer infers this mask from the left padding; a bridge needs it given)
    mask = (torch.arange(width)[None] >= pads[:, None]).long()
    diff = steered_minus_plain(
        model, tokens, mask, vector_or_vectors=vector, scale=2.0, positions=[0, 2, -1]
    )
    for b in range(len(PROMPTS)):
        pad = int(pads[b])
        expected_columns = {pad, pad + 2, width - 1}
        for c in range(width):
            expected = 2.0 * vector.direction if c in expected_columns else torch.zeros(32)
            torch.testing.assert_close(diff[b, c], expected, atol=1e-5, rtol=0)


def test_plain_forward_is_all_prompt_and_boolean_masks_pick_columns(model, vector):
    tokens = model.to_tokens(PROMPTS[0])
    all_diff = steered_minus_plain(model, tokens, vector_or_vectors=vector, scale=3.0)
    prompt_diff = steered_minus_plain(
        model, tokens, vector_or_vectors=vector, scale=3.0, positions="prompt"
    )
    generated_diff = steered_minus_plain(
        model, tokens, vector_or_vectors=vector, scale=3.0, positions="generated"
    )
    expected = (3.0 * vector.direction).expand_as(all_diff[0])
    torch.testing.assert_close(all_diff[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(prompt_diff, all_diff, atol=0, rtol=0)
    assert generated_diff.abs().max() == 0

    mask = torch.zeros(1, tokens.shape[1], dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask_diff = steered_minus_plain(
        model, tokens, vector_or_vectors=vector, scale=3.0, positions=mask
    )
    torch.testing.assert_close(mask_diff, all_diff * mask[..., None], atol=1e-5, rtol=0)


@pytest.mark.parametrize("operator", ["add", "ablate_then_add", "projection_cap"])
def test_operators_match_hand_formulas(model, operator):
    v = 3.0 * unit(32, 1)
    u = v / v.norm()
    scale = 0.5
    tokens = model.to_tokens(PROMPTS[0])
    _, plain = model.run_with_cache(tokens, names_filter=HOOK)
    x = plain[HOOK]
    with steer(model, SteeringVector(v, HOOK), scale=scale, operator=operator):
        _, steered = model.run_with_cache(tokens, names_filter=HOOK)
    if operator == "add":
        expected = x + scale * v
    elif operator == "ablate_then_add":
        expected = x - (x @ u)[..., None] * u + scale * v
        torch.testing.assert_close(steered[HOOK] @ u, torch.full_like(x[..., 0], scale * 3.0))
    else:
        projection = x @ u
        expected = x + (torch.minimum(projection, torch.tensor(scale)) - projection)[..., None] * u
        assert (steered[HOOK] @ u).max() <= scale + 1e-5
        assert (projection > scale).any() and (projection < scale).any()
    torch.testing.assert_close(steered[HOOK], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("operator", ["add", "ablate_then_add", "projection_cap"])
def test_bfloat16_activations_get_the_float32_edit_rounded_once(models, operator):
    """In a bfloat16 model the edit is computed in float32 and rounded once: the steered
    activations are the float64 hand formula rounded to bfloat16, and stay bfloat16."""
    model = models["bfloat16"]
    v = 3.0 * unit(32, 1)
    u = (v / v.norm()).double()
    scale = 0.37
    tokens = model.to_tokens(PROMPTS[0])
    _, plain = model.run_with_cache(tokens, names_filter=HOOK)
    x = plain[HOOK].double()
    with steer(model, SteeringVector(v, HOOK), scale=scale, operator=operator):
        _, steered = model.run_with_cache(tokens, names_filter=HOOK)
    if operator == "add":
        expected = x + scale * v.double()
    elif operator == "ablate_then_add":
        expected = x - (x @ u)[..., None] * u + scale * v.double()
    else:
        projection = x @ u
        expected = x - (projection - scale).clamp_min(0)[..., None] * u
    assert steered[HOOK].dtype == torch.bfloat16
    rounded = expected.to(torch.bfloat16)
    differs = steered[HOOK] != rounded
    # float32 arithmetic moves a value across a bfloat16 rounding boundary only when the
    # exact result lies within float32 error of it: one bfloat16 ulp there, nowhere else.
    assert differs.float().mean() < 0.01
    ulp = rounded.double().abs() * 2**-7
    assert ((steered[HOOK].double() - rounded.double()).abs()[differs] <= ulp[differs]).all()


def test_several_vectors_each_with_its_own_settings(model):
    v1 = SteeringVector(unit(32, 2), "blocks.0.hook_resid_post")
    v2 = SteeringVector(unit(64, 3), "blocks.2.mlp.hook_post", default_scale=-1.5)
    tokens = model.to_tokens(PROMPTS[0])
    with steer(model, [Steering(v1, scale=4.0, positions="prompt"), v2], positions=[-1]):
        logits = model(tokens)

    last = tokens.shape[1] - 1

    def edit1(act, hook):
        return act + 4.0 * v1.direction

    def edit2(act, hook):
        act = act.clone()
        act[:, last] += -1.5 * v2.direction
        return act

    reference = model.run_with_hooks(
        tokens, fwd_hooks=[(v1.hook_name, edit1), (v2.hook_name, edit2)]
    )
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    assert_clean(model)


# ---------------------------------------------------------------------------- per-row steering
def test_steer_rows_equals_each_row_alone(request, model):
    require_kv_cache(request, model)
    directions = torch.stack([unit(32, 4), unit(32, 5)])
    scales = [SCALE, -SCALE]
    with steer_rows(model, directions, HOOK, scales=scales, positions="all"):
        batched = generate(model, PROMPTS, cache=True)
    width, pads = prompt_layout(model, PROMPTS)
    for b, prompt in enumerate(PROMPTS):
        alone_vector = SteeringVector(directions[b], HOOK)
        for cache in (True, False):
            with steer(model, alone_vector, scale=scales[b]):
                alone = generate(model, prompt, cache)
            assert torch.equal(batched.sequences[b, pads[b] :], alone.sequences[0])
            for k in range(N_NEW):
                torch.testing.assert_close(
                    batched.logits[k][b], alone.logits[k][0], atol=1e-4, rtol=1e-4
                )
    assert_clean(model)


PER_ROW = {  # three rows of something for a batch of two
    "directions": lambda m, v, width: steer_rows(m, torch.randn(3, 32), HOOK),
    "scales": lambda m, v, width: steer(m, v, scale=[1.0, 2.0, 3.0]),
    "position mask rows": lambda m, v, width: steer(
        m, v, positions=torch.ones(3, width, dtype=torch.bool)
    ),
}


@pytest.mark.parametrize("what", list(PER_ROW))
def test_per_row_settings_need_one_row_per_batch_row(model, vector, what):
    tokens = model.to_tokens(PROMPTS)
    with (
        PER_ROW[what](model, vector, tokens.shape[1]),
        pytest.raises(
            ValueError, match=f"Steering at '{HOOK}' has 3 {what} but the batch has 2 rows"
        ),
    ):
        model(tokens)
    assert_clean(model)


@pytest.mark.parametrize("operator", ["ablate_then_add", "projection_cap"])
def test_projection_operators_use_each_rows_own_direction_norm(model, operator):
    # rows of norms 1 and 2.5 (a unit row too: only a zero row is refused)
    directions = torch.stack([unit(32, 6), 2.5 * unit(32, 7)])
    scales = [0.5, -0.3]
    tokens = model.to_tokens(PROMPTS)
    _, plain = model.run_with_cache(tokens, names_filter=HOOK)
    with steer_rows(model, directions, HOOK, scales=scales, operator=operator):
        _, steered = model.run_with_cache(tokens, names_filter=HOOK)
    for b in range(2):
        x, v, s = plain[HOOK][b], directions[b], scales[b]
        u = v / v.norm()
        projection = x @ u
        if operator == "ablate_then_add":
            expected = x - projection[:, None] * u + s * v
        else:
            expected = x - (projection - s).clamp_min(0)[:, None] * u
        torch.testing.assert_close(steered[HOOK][b], expected, atol=1e-5, rtol=1e-5)
    assert_clean(model)


def test_non_additive_operators_refuse_a_zero_direction(model):
    directions = torch.stack([unit(32, 6), torch.zeros(32)])
    for operator in ("ablate_then_add", "projection_cap"):
        with (
            pytest.raises(ValueError, match="needs a non-zero direction"),
            steer_rows(model, directions, HOOK, operator=operator),
        ):
            pass
    with steer_rows(model, directions, HOOK, operator="add"):  # adding zero is fine
        pass
    assert_clean(model)


@pytest.mark.parametrize("how", ["steer", "steer_rows"])
def test_a_raw_tensor_without_a_scale_is_added_once(model, how):
    v = unit(32, 8)
    tokens = model.to_tokens(PROMPTS[0])
    _, plain = model.run_with_cache(tokens, names_filter=HOOK)
    steering = (
        steer(model, Steering(v, hook_name=HOOK))
        if how == "steer"
        else steer_rows(model, v[None], HOOK)
    )
    with steering:
        _, steered = model.run_with_cache(tokens, names_filter=HOOK)
    torch.testing.assert_close(steered[HOOK], plain[HOOK] + v, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- hook hygiene
def test_hooks_removed_after_exception_and_nesting(model, vector):
    with pytest.raises(KeyError), steer(model, vector):
        model(model.to_tokens(PROMPTS[0]))
        raise KeyError("boom")
    assert_clean(model)

    other = SteeringVector(unit(32, 6), "blocks.2.hook_resid_post")
    with steer(model, vector), steer(model, other):
        assert len(model.hook_dict[HOOK].fwd_hooks) == 1
        assert len(model.hook_dict[other.hook_name].fwd_hooks) == 1
    assert_clean(model)

    handle_a = apply_steering(model, vector)
    handle_b = apply_steering(model, other)
    handle_a.remove()
    handle_a.remove()
    assert "generate" in model.__dict__ and model.hook_dict[other.hook_name].fwd_hooks
    handle_b.remove()
    assert_clean(model)


def test_repr_shows_the_vector_hook_scale_positions_and_state(model, vector):
    handle = apply_steering(model, vector, scale=2.5, positions="prompt")
    assert repr(handle) == (
        f"SteeringHandle(active, [steer(raw vector at {HOOK!r}, scale=2.5, "
        "positions=prompt, operator='add')])"
    )
    handle.remove()
    assert repr(handle).startswith("SteeringHandle(removed, ")
    per_row = Steering(torch.ones(2, 32), scale=[1.0, 2.0], positions=[0], hook_name=HOOK)
    with steer(model, per_row) as rows:
        assert repr(rows.interventions[0]) == (
            f"steer(2 per-row directions at {HOOK!r}, scale=2 per-row scales, "
            "positions=custom, operator='add')"
        )


def test_an_instance_level_generate_is_wrapped_and_restored(model, vector, monkeypatch):
    calls = []

    def custom(*args, **kwargs):
        calls.append(args)
        return "custom"

    monkeypatch.setitem(model.__dict__, "generate", custom)
    for _ in range(2):  # and again after the first steering is removed
        with steer(model, vector):
            assert model.generate is not custom  # the steering wrapper, around ours
            assert model.generate("x") == "custom"
        assert model.__dict__["generate"] is custom
    assert calls == [("x",), ("x",)]


def test_a_mask_of_only_the_new_columns_counts_the_cached_ones_as_real():
    # _Step with 3 cached columns and a [batch, n] mask of the 2 new ones: the cached
    # columns are real tokens, so row 1 (its first new column padding) has indices 2, 3.
    step = _Step(3, 2, torch.tensor([[1, 1], [0, 1]]), prompt_len=3, device="cpu")
    assert step.batch == 2
    assert step.valid.tolist() == [[True, True], [False, True]]
    assert step.real_index.tolist() == [[3, 4], [2, 3]]
    assert step.prompt_real_len.tolist() == [3, 3]


def test_nan_producing_scale_is_reported_not_generated(model, vector):
    with (
        pytest.raises(FloatingPointError, match=r"produced NaN/inf activations .* smaller scale"),
        steer(model, vector, scale=1e39),
    ):
        model.generate(PROMPTS, max_new_tokens=3, do_sample=False, verbose=False)
    assert_clean(model)
    with pytest.raises(ValueError, match="finite"), steer(model, vector, scale=float("nan")):
        pass
    assert_clean(model)


def test_non_finite_activations_before_steering_are_blamed_on_the_model(model, vector):
    tokens = model.to_tokens(PROMPTS[0])

    def poison(act, hook):
        return torch.full_like(act, float("nan"))

    with (
        pytest.raises(FloatingPointError, match="already non-finite before steering"),
        model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", poison)]),
        steer(model, vector),
    ):
        model(tokens)
    assert_clean(model)
    if isinstance(model, TransformerBridge):
        return  # its Gemma 3 RMS norms map a huge residual stream to 0, not to NaN
    # finite steered activations (1e38 per entry) whose layer norm overflows: the logits check
    with (
        pytest.raises(
            FloatingPointError, match=r"logits became NaN/inf .* Use a smaller scale \(if"
        ),
        steer(model, SteeringVector(torch.ones(32), HOOK), scale=1e38),
    ):
        model(tokens)
    assert_clean(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_finite_agrees_with_the_elementwise_check(dtype):
    """The non-finite checks of steering and generation: the fast sum path must neither miss
    a NaN or inf nor flag finite values whose sum overflows."""
    big = torch.finfo(dtype).max
    cases = [
        torch.randn(4, 7),
        torch.empty(0),
        torch.full((3,), big),  # finite, but the sum overflows
        torch.tensor([big, -big, 1.0]),
    ]
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in (0, 13, 27):
            x = torch.randn(4, 7)
            x.view(-1)[where] = bad
            cases.append(x)
    cases.append(torch.tensor([float("inf"), -float("inf")]))  # sums to NaN
    for x in cases:
        x = x.to(dtype)
        assert all_finite(x) == bool(torch.isfinite(x).all()), x


# ---------------------------------------------------------------------------- bad input
BAD_INPUT = {  # each error names the problem and the fix (or the accepted forms)
    "wrong width": (
        lambda m, v: apply_steering(m, SteeringVector(torch.ones(31), HOOK)),
        ValueError,
        "width 31 .* has width 32",
    ),
    "misspelt hook": (
        lambda m, v: apply_steering(m, SteeringVector(torch.ones(32), "blocks.1.hook_resid_per")),
        ValueError,
        "blocks.1.hook_resid_pre",
    ),
    "embedding hook": (
        lambda m, v: apply_steering(m, SteeringVector(torch.ones(32), "hook_embed")),
        ValueError,
        "blocks.0.hook_resid_pre",
    ),
    "positions name": (
        lambda m, v: apply_steering(m, v, positions="decode"),
        ValueError,
        "Unknown positions",
    ),
    "operator": (
        lambda m, v: apply_steering(m, v, operator="multiply"),
        ValueError,
        "Unknown steering operator",
    ),
    "bare tensor": (lambda m, v: apply_steering(m, torch.ones(32)), TypeError, "hook point"),
    "nothing": (lambda m, v: apply_steering(m, []), ValueError, "No steering vectors given"),
    "a hook name as vector": (
        lambda m, v: apply_steering(m, [HOOK]),
        TypeError,
        "Expected SteeringVector or Steering, got str",
    ),
    "two hook points": (
        lambda m, v: apply_steering(m, Steering(v, hook_name="blocks.0.hook_resid_post")),
        ValueError,
        "hook_name='blocks.0.hook_resid_post' differs from the vector's hook point "
        "'blocks.1.hook_resid_pre'; leave hook_name unset",
    ),
    "tensor without hook": (
        lambda m, v: apply_steering(m, Steering(torch.ones(32))),
        ValueError,
        "Steering with a raw tensor needs hook_name=",
    ),
    "3-D directions": (
        lambda m, v: apply_steering(m, Steering(torch.ones(1, 2, 32), hook_name=HOOK)),
        ValueError,
        r"must be \(d,\) or \(batch, d\), got \(1, 2, 32\)",
    ),
    "1-D steer_rows": (
        lambda m, v: steer_rows(m, torch.ones(32), HOOK),
        ValueError,
        r"steer_rows needs directions of shape \(batch, d\), got \(32,\)",
    ),
    "3-D mask": (
        lambda m, v: apply_steering(m, v, positions=torch.ones(1, 1, 4, dtype=torch.bool)),
        ValueError,
        r"position mask must be \(pos,\) or \(batch, pos\), got \(1, 1, 4\)",
    ),
    "empty indices": (
        lambda m, v: apply_steering(m, v, positions=[]),
        TypeError,
        "positions must be a name, a non-empty 1-D list of int token indices, or a boolean",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_errors_name_the_fix(model, vector, case):
    call, error, message = BAD_INPUT[case]
    with pytest.raises(error, match=message):
        call(model, vector)
    assert_clean(model)


def test_a_width_known_only_from_the_activation_is_checked_when_it_arrives(model):
    hook = "blocks.0.attn.hook_k"  # [batch, pos, key heads, d_head]: not in the config's widths
    tokens = model.to_tokens(PROMPTS[0])
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    width = cache[hook].flatten(2).shape[-1]
    with (
        steer(model, SteeringVector(torch.ones(15), hook)),
        pytest.raises(
            ValueError, match=f"width 15 but activations at '{hook}' have width {width} "
        ),
    ):
        model(tokens)
    assert_clean(model)


# ---------------------------------------------------------------------------- SteeringVector
def test_save_load_round_trip_and_model_checks(model, tmp_path):
    v = SteeringVector(
        unit(32, 7) * 2.5,
        HOOK,
        model_name=model.cfg.model_name,
        method="caa",
        default_scale=4.0,
        provenance={"n_positive": 3},
        extra={"note": "test"},
    )
    v.save(tmp_path / "v")
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [
        "vector.json",
        "vector.safetensors",
    ]
    meta = json.loads((tmp_path / "v" / "vector.json").read_text())
    assert meta["hook_name"] == HOOK and meta["d"] == 32 and meta["norm"] == pytest.approx(2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = SteeringVector.load(tmp_path / "v", model=model)
    assert torch.equal(loaded.direction, v.direction)
    assert loaded.metadata() == v.metadata()

    SteeringVector(v.direction, HOOK, model_name="gpt2").save(tmp_path / "other")
    with pytest.warns(SteeringCompatibilityWarning, match="'gpt2'"):
        SteeringVector.load(tmp_path / "other", model=model)
    with pytest.raises(ValueError, match="made for model 'gpt2'"):
        SteeringVector.load(tmp_path / "other", model=model, strict=True)
    SteeringVector(torch.ones(48), HOOK).save(tmp_path / "wide")
    with pytest.raises(ValueError, match="width 48"):
        SteeringVector.load(tmp_path / "wide", model=model)


def test_model_names_match_across_backends(model):
    """A bridge names a Hub model by its full id (google/gemma-3-270m), a HookedTransformer by
    its last part (gemma-3-270m): the same model, so no warning and arithmetic works."""
    name = model.cfg.model_name.rsplit("/", 1)[-1]
    for made_for in (f"google/{name}", name.upper(), name):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            SteeringVector(unit(32, 1), HOOK, model_name=made_for).check_compatible(model)
    for other in ("google/gemma-2-2b", f"{name}-it"):
        with pytest.warns(SteeringCompatibilityWarning, match=other):
            SteeringVector(unit(32, 1), HOOK, model_name=other).check_compatible(model)
    a = SteeringVector(unit(32, 1), HOOK, model_name="google/gemma-3-270m")
    b = SteeringVector(unit(32, 2), HOOK, model_name="gemma-3-270m")
    assert (a + b).model_name == "google/gemma-3-270m"
    with pytest.raises(ValueError, match="different models"):
        a + SteeringVector(unit(32, 2), HOOK, model_name="gpt2")


def test_arithmetic():
    a = SteeringVector(torch.tensor([3.0, 4.0, 0.0]), HOOK)
    b = SteeringVector(torch.tensor([1.0, 0.0, 0.0]), HOOK)
    assert torch.equal((a + b).direction, torch.tensor([4.0, 4.0, 0.0]))
    assert torch.equal((a - b).direction, torch.tensor([2.0, 4.0, 0.0]))
    assert torch.equal((2 * a).direction, torch.tensor([6.0, 8.0, 0.0]))
    assert torch.equal((a / 2).direction, torch.tensor([1.5, 2.0, 0.0]))
    assert torch.equal((-a).direction, torch.tensor([-3.0, -4.0, 0.0]))
    assert (-a.normalize()).normalized and not (2 * a.normalize()).normalized
    assert a.norm == pytest.approx(5.0) and a.normalize().norm == pytest.approx(1.0)
    assert a.normalize().provenance["norm_before_normalize"] == pytest.approx(5.0)
    assert torch.allclose(a.orthogonalize(b).direction, torch.tensor([0.0, 4.0, 0.0]))
    assert a.cosine(b) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="different hook points"):
        a + SteeringVector(torch.ones(3), "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="NaN"):
        SteeringVector(torch.tensor([1.0, float("nan")]), HOOK)


def test_from_sae_and_from_ssae(model):
    metadata = SAEMetadata(hook_name=HOOK, model_name=model.cfg.model_name)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16, metadata=metadata))
    v = SteeringVector.from_sae(sae, 5)
    assert torch.equal(v.direction, sae.W_dec[5].detach())
    assert (v.hook_name, v.method, v.model_name) == (HOOK, "sae", model.cfg.model_name)
    assert v.provenance["feature_index"] == 5 and v.provenance["d_sae"] == 16
    with pytest.raises(ValueError, match="hook_name"):
        SteeringVector.from_sae(StandardSAE(StandardSAEConfig(d_in=32, d_sae=16)), 0)

    ssae = SSAE(SSAEConfig(d_in=32, d_sae=4, metadata=SAEMetadata(hook_name=HOOK)))
    s = SteeringVector.from_ssae(ssae, 2)
    assert torch.allclose(s.direction, ssae.steering_vector(2).detach())
    assert s.norm == pytest.approx(1.0) and s.normalized and s.method == "ssae"
    with steer(model, s, scale=2.0):
        model(model.to_tokens(PROMPTS[0]))
    assert_clean(model)


# ---------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("position", ["last", "mean"])
def test_caa_vector_is_the_mean_difference(model, position):
    positive = ["I love this movie", "what a wonderful brilliant film", "I love it"]
    negative = ["I hate this movie", "a terrible boring film"]

    def read(text):
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter=HOOK)
        acts = cache[HOOK][0]
        return acts[-1] if position == "last" else acts[1:].mean(0)  # BOS left out

    expected = torch.stack([read(t) for t in positive]).mean(0) - torch.stack(
        [read(t) for t in negative]
    ).mean(0)
    v = caa_vector(model, positive, negative, HOOK, position=position, batch_size=2)
    torch.testing.assert_close(v.direction, expected, atol=1e-5, rtol=1e-5)
    assert v.method == "caa" and v.default_scale == 1.0 and not v.normalized
    assert v.provenance["raw_norm"] == pytest.approx(float(expected.norm()), rel=1e-5)

    n = caa_vector(model, positive, negative, HOOK, position=position, normalize=True)
    assert n.norm == pytest.approx(1.0) and n.default_scale == pytest.approx(v.norm, rel=1e-5)


def test_mean_shift_and_pca_vectors():
    generator = torch.Generator().manual_seed(0)
    concept = unit(16, 8)
    z = torch.randn(200, 16, generator=generator)
    amounts = 2.0 + 0.5 * torch.rand(200, 1, generator=generator)
    z_tilde = z + amounts * concept + 0.1 * torch.randn(200, 16, generator=generator)
    shifts = z_tilde - z

    mean = mean_shift_vector((z, z_tilde), HOOK)
    torch.testing.assert_close(mean.direction, shifts.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        mean_shift_vector(shifts, HOOK, normalize=True).direction, mean.normalize().direction
    )

    first = pca_vector(-shifts, HOOK)  # shifts the other way: the sign must follow them
    eigenvalues, eigenvectors = torch.linalg.eigh(shifts.double().T @ shifts.double())
    top = eigenvectors[:, -1].float()
    assert abs(first.cosine(SteeringVector(top, HOOK))) == pytest.approx(1.0, abs=1e-5)
    assert first.direction @ concept < -0.99
    assert first.default_scale == pytest.approx(float((-shifts @ first.direction).mean()), rel=1e-4)

    two = pca_vector(shifts, HOOK, k=2)
    assert len(two) == 2 and abs(two[0].cosine(two[1])) < 1e-5
    assert two[0].provenance["explained_variance_ratio"] == pytest.approx(
        float(eigenvalues[-1] / eigenvalues.sum()), rel=1e-4
    )
    with pytest.raises(ValueError, match="k must be"):
        pca_vector(shifts, HOOK, k=17)
