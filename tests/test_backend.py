"""The backend adapter (``ssae_lens._core.backend``) on a tiny ``HookedTransformer`` and a tiny
``TransformerBridge``: each primitive against the backend's own full forward pass; then one
GPT-2 through both backends, where every entry point of the package must agree."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_bridge, require_kv_cache
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

from ssae_lens._core.backend import backend, check_model
from ssae_lens._core.cache import model_fingerprint, refuse_active_hooks
from ssae_lens._core.hooks import check_hook_names
from ssae_lens.activations import harvest_shifts
from ssae_lens.generation import generate_tokens
from ssae_lens.sae_ts import calibrate_scales, measure_effects
from ssae_lens.saes.cards import feature_cards
from ssae_lens.steering import (
    KeywordScorer,
    LikelihoodCoherenceScorer,
    SteeringVector,
    caa_vector,
    evaluate_steering,
    steer,
    steer_rows,
)
from ssae_lens.steering.query import QueryPrototypes, steer_queries

PROMPTS = ["The cat sat on the mat while the dog slept", "hey", "She walked to the market"]


@pytest.fixture
def kv_model(request, any_model):
    """``any_model``, skipping the bridge where this stack does not fill its KV cache."""
    require_kv_cache(request, any_model)
    return any_model


def left_padded(model, prompts):
    """Prompts tokenised one by one, left-padded, and their 0/1 mask."""
    rows = [model.to_tokens(p)[0] for p in prompts]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), model.tokenizer.pad_token_id)
    mask = torch.zeros_like(tokens)
    for i, r in enumerate(rows):
        tokens[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return tokens, mask


def test_check_model_accepts_both_classes_and_explains_anything_else(tiny_model, tiny_bridge):
    assert check_model(tiny_model) is tiny_model
    assert check_model(tiny_bridge) is tiny_bridge
    for wrong in (torch.nn.Linear(2, 2), "gpt2"):
        with pytest.raises(TypeError, match="HookedTransformer or TransformerBridge.*load_model"):
            backend(wrong)


def test_config_accessors(any_model):
    lm = backend(any_model)
    assert lm.n_layers == len(any_model.blocks) == 3
    assert lm.n_ctx == 48  # both tiny models are built with a 48-token context
    assert lm.device == torch.device("cpu")
    assert lm.default_prepend_bos is True
    assert lm.name == ("bridge" if isinstance(any_model, TransformerBridge) else "hooked")


def test_hook_names_are_checked_once_for_both_backends(any_model):
    """Both backends go through _core.hooks: the same names, the same message."""
    assert check_hook_names(any_model, "blocks.1.hook_resid_post") == ["blocks.1.hook_resid_post"]
    with pytest.raises(ValueError, match="Closest valid names.*blocks.1.hook_resid_post"):
        check_hook_names(any_model, ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pst"])


def test_token_ids_control_bos_and_do_not_truncate(any_model):
    lm = backend(any_model)
    text = "The cat sat on the mat."
    plain = any_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert lm.token_ids(text) == [any_model.tokenizer.bos_token_id, *plain]
    assert lm.token_ids(text, prepend_bos=False) == plain
    assert len(lm.token_ids(" ".join(["cat"] * 60))) > lm.n_ctx


@pytest.mark.parametrize("stop", [1, 3])
def test_run_to_layer_fires_the_same_hooks_as_a_full_pass_and_no_deeper(any_model, stop):
    lm = backend(any_model)
    tokens, mask = left_padded(any_model, PROMPTS)
    read = f"blocks.{stop - 1}.hook_resid_post"
    _, full = any_model.run_with_cache(tokens, attention_mask=mask, names_filter=read)
    got, fired = {}, []
    hooks = [(read, lambda act, hook: got.setdefault("act", act.detach()))]
    deeper = [f"blocks.{i}.hook_resid_post" for i in (1, 2)]
    hooks += [(name, lambda act, hook: fired.append(hook.name)) for name in deeper]
    with any_model.hooks(fwd_hooks=hooks):
        lm.run_to_layer(tokens, mask, stop)
    real = mask.bool()
    torch.testing.assert_close(got["act"][real], full[read][real], atol=1e-5, rtol=1e-5)
    # (a bridge also fires blocks.{stop}.hook_resid_pre, the same tensor as `read`)
    assert [any_model.hook_dict[name].name in fired for name in deeper] == [stop > 1, stop > 2]


def test_final_logits_of_the_last_residual_equal_the_forward_logits(any_model):
    lm = backend(any_model)
    tokens, mask = left_padded(any_model, PROMPTS)
    read = "blocks.2.hook_resid_post"
    logits, cache = any_model.run_with_cache(tokens, attention_mask=mask, names_filter=read)
    torch.testing.assert_close(
        lm.final_logits(cache[read][:, -1]), logits[:, -1], atol=1e-5, rtol=1e-5
    )


def test_kv_decoding_matches_full_forward_passes(kv_model):
    lm = backend(kv_model)
    tokens, mask = left_padded(kv_model, PROMPTS)
    with torch.no_grad():
        state = lm.prefill(tokens, mask)
        for _ in range(4):
            full = kv_model(tokens, attention_mask=mask)[:, -1]
            torch.testing.assert_close(state.logits, full, atol=1e-4, rtol=1e-4)
            nxt = full.argmax(-1)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            lm.decode(state, nxt)
            assert torch.equal(state.mask, mask)
        # a last step that stops early: the new token's activation below the stop, no logits
        nxt = state.logits.argmax(-1)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        read = "blocks.1.hook_resid_post"
        _, full = kv_model.run_with_cache(tokens, attention_mask=mask, names_filter=read)
        got = []
        with kv_model.hooks(fwd_hooks=[(read, lambda act, hook: got.append(act.detach()))]):
            lm.decode(state, nxt, stop_at_layer=2)
    assert state.logits is None
    torch.testing.assert_close(got[0][:, -1], full[read][:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_observer_sees_each_call_offset_length_and_mask(kv_model, use_cache):
    lm = backend(kv_model)
    tokens, prompt_mask = left_padded(kv_model, PROMPTS[1:])
    width = tokens.shape[1]
    seen: list[tuple[int, int, torch.Tensor | None]] = []

    def observer(offset, n, mask, device):
        if not seen or seen[-1][:2] != (offset, n):  # a HookedTransformer reports every block
            seen.append((offset, n, mask))

    handles = lm.observe_forward(observer)
    try:
        kv_model.generate(
            PROMPTS[1:], max_new_tokens=3, do_sample=False, stop_at_eos=False,
            use_past_kv_cache=use_cache, verbose=False,
        )  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    if use_cache:
        expected = [(0, width), (width, 1), (width + 1, 1)]
    else:
        expected = [(0, width), (0, width + 1), (0, width + 2)]
    assert [(offset, n) for offset, n, _ in seen] == expected
    for *_, mask in seen:  # the padding of the prompt, then one real column per new token
        assert mask is not None
        assert torch.equal(mask[:, :width].cpu().long(), prompt_mask)
        assert bool(mask[:, width:].all())
    assert not kv_model.blocks[0]._forward_pre_hooks
    if isinstance(kv_model, TransformerBridge):
        assert not kv_model.original_model._forward_pre_hooks


def test_bridge_prefill_raises_exactly_when_the_bridges_own_cache_is_wrong(tiny_bridge):
    """The adapter's refusal is checked against an independent symptom: the bridge's
    own generate with its KV cache differs from generate without it."""

    def greedy(cache: bool) -> torch.Tensor:
        return tiny_bridge.generate(
            PROMPTS[0], max_new_tokens=8, do_sample=False, stop_at_eos=False,
            use_past_kv_cache=cache, verbose=False, return_type="tokens",
        )  # fmt: skip

    cache_is_right = torch.equal(greedy(True), greedy(False))
    tokens, mask = left_padded(tiny_bridge, PROMPTS[:1])
    try:
        backend(tiny_bridge).prefill(tokens, mask)
    except RuntimeError as err:
        assert "transformers<5.24" in str(err)
        assert not cache_is_right
    else:
        assert cache_is_right


def test_bridge_refuses_to_steer_resid_mid_where_it_is_only_the_mlp_input(tiny_model, tiny_bridge):
    backend(tiny_model).check_steerable("blocks.1.hook_resid_mid")
    with pytest.raises(ValueError, match="blocks.1.hook_attn_out"):
        backend(tiny_bridge).check_steerable("blocks.1.hook_resid_mid")
    vector = SteeringVector(torch.ones(32), "blocks.1.hook_resid_mid")
    with pytest.raises(ValueError, match="MLP"), steer(tiny_bridge, vector, scale=1.0):
        pass

    # Why: on the bridge an edit at hook_resid_mid does not reach the residual stream
    # (resid_post - mlp_out is still the unedited resid_mid), and an edit at hook_attn_out
    # moves resid_mid by exactly the added vector.
    tokens = tiny_bridge.to_tokens(PROMPTS[0])
    names = ["blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))

    def run(edit_at: str | None) -> dict[str, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}
        hooks = [(n, lambda act, hook: got.setdefault(hook.name, act.detach())) for n in names]
        if edit_at is not None:
            hooks.insert(0, (edit_at, lambda act, hook: act + v))
        tiny_bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        return {n: got[tiny_bridge.hook_dict[n].name] for n in names}

    plain, at_mid, at_attn = run(None), run(names[0]), run("blocks.1.hook_attn_out")
    skip = at_mid[names[1]] - at_mid[names[2]]
    torch.testing.assert_close(skip, plain[names[0]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(skip, plain[names[0]] + v, atol=1e-2)
    torch.testing.assert_close(at_attn[names[0]], plain[names[0]] + v, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ one model, both backends
# A GPT-2 through the bridge and the same weights in a HookedTransformer compute the same
# function, so every entry point must give the same result on both, to float rounding. The
# HookedTransformer's results are the reference: the other test files check them by hand.
SOURCES = ["The cat sat on the mat.", "king", "I love this movie."]
TARGETS = ["Le chat", "queen of the northern castle", "I hate it"]


@pytest.fixture(scope="module")
def twins(tiny_tokenizer) -> dict[str, HookedTransformer | TransformerBridge]:
    bridge = build_tiny_bridge(tiny_tokenizer, "gpt2", seed=3)
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=48,
        d_vocab=len(tiny_tokenizer), act_fn="gelu_new", normalization_type="LN",
        device="cpu", default_prepend_bos=True,
    )  # fmt: skip
    hooked = HookedTransformer(cfg, tokenizer=tiny_tokenizer).eval()
    hooked.load_state_dict(convert_gpt2_weights(bridge.original_model, cfg), strict=False)
    return {"hooked": hooked, "bridge": bridge}


@pytest.fixture
def kv_twins(request, twins):
    require_kv_cache(request, twins["bridge"])
    return twins


def tiny_sae(hook: str, d_in: int = 32) -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=48, metadata=SAEMetadata(hook_name=hook)))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, 48, generator=generator) * 0.3)
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.fill_(0.05)
    return sae


def on_both(twins, run) -> tuple:
    return run(twins["hooked"]), run(twins["bridge"])


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_same_weights_give_the_same_shifts_and_steering_on_both_backends(
    twins, monkeypatch, padding_side
):
    """Every harvested hook means the same tensor, and steering edits the same activations."""
    hooks = [
        "blocks.0.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.1.attn.hook_z",
        "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out", "blocks.2.hook_resid_post",
    ]  # fmt: skip
    for model in twins.values():
        monkeypatch.setattr(model.tokenizer, "padding_side", padding_side)
    hooked, bridged = on_both(
        twins, lambda m: harvest_shifts(m, (SOURCES, TARGETS), hooks, "mean", progress=False)
    )
    for hook in hooks:
        torch.testing.assert_close(bridged[hook], hooked[hook], atol=1e-5, rtol=0)

    vector = SteeringVector(torch.randn(32, generator=torch.Generator().manual_seed(1)), hooks[0])
    tokens, mask = left_padded(twins["hooked"], SOURCES)

    def steered_logits(model):
        with steer(model, vector, scale=4.0, positions=[1, -1]):
            return model(tokens, attention_mask=mask)

    hooked, bridged = on_both(twins, steered_logits)
    real = mask.bool()
    torch.testing.assert_close(bridged[real], hooked[real], atol=1e-4, rtol=0)


def test_the_harvest_cache_keeps_the_backends_apart(twins, tmp_path):
    """The key's model fingerprint covers the config and parameter names, which differ between
    the backends, so one never reads the other's cache (their numerics differ in rounding)."""
    hooked, bridge = twins["hooked"], twins["bridge"]
    assert model_fingerprint(hooked) != model_fingerprint(bridge)
    hook = "blocks.1.hook_resid_post"
    first = harvest_shifts(hooked, (SOURCES, TARGETS), hook, cache_dir=tmp_path, progress=False)
    calls = []
    with bridge.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        fresh = harvest_shifts(bridge, (SOURCES, TARGETS), hook, progress=False)
    assert calls  # (a cached harvest refuses hooks, so count the fresh run's passes)
    cached = harvest_shifts(bridge, (SOURCES, TARGETS), hook, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 2
    torch.testing.assert_close(cached, fresh, atol=0, rtol=0)
    torch.testing.assert_close(cached, first, atol=1e-5, rtol=0)


def test_generation_and_per_row_steering_agree_across_backends(kv_twins):
    directions = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))

    def run(model):
        with steer_rows(model, directions, "blocks.1.hook_resid_post", [0.0, 3.0, -3.0]):
            greedy, acts = generate_tokens(
                model, SOURCES, 8, do_sample=False, capture="blocks.2.hook_resid_post"
            )
            sampled, _ = generate_tokens(model, SOURCES, 8, seed=4, top_k=20)
        return greedy, acts, sampled

    (greedy, acts, sampled), (greedy_b, acts_b, sampled_b) = on_both(kv_twins, run)
    assert torch.equal(greedy_b, greedy) and torch.equal(sampled_b, sampled)
    torch.testing.assert_close(acts_b, acts, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"])
@pytest.mark.parametrize("steer_readout", [False, True])
def test_sae_ts_effects_agree_across_backends(kv_twins, hook, steer_readout):
    """The rollouts and the (unsteered or steered) readout of their features, also at the
    last block, where the bridge cannot stop early."""
    sae = tiny_sae(hook)
    directions = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    hooked, bridged = on_both(
        kv_twins,
        lambda m: measure_effects(
            m, sae, directions, 4.0, prompts=SOURCES, n_samples=2, max_new_tokens=5, seed=1,
            steer_readout=steer_readout,
        ),
    )  # fmt: skip
    assert hooked.abs().sum() > 1e-3
    torch.testing.assert_close(bridged, hooked, atol=1e-4, rtol=1e-4)


def test_calibration_scorers_queries_and_caa_agree_across_backends(twins):
    direction = torch.randn(2, 32, generator=torch.Generator().manual_seed(6))[1]
    directions = torch.stack([direction, 2 * direction])  # one raises the loss, so does twice it
    sweep = [0.25, 0.5, 1.0, 2.0, 4.0]
    hooked, bridged = on_both(
        twins,
        lambda m: calibrate_scales(
            m, directions, "blocks.1.hook_resid_post", reference_texts=SOURCES,
            target_loss_increase=0.3, scales=sweep,
        ),
    )  # fmt: skip
    torch.testing.assert_close(bridged, hooked, atol=1e-4, rtol=1e-4)

    hooked, bridged = on_both(
        twins, lambda m: LikelihoodCoherenceScorer(m, batch_size=2).nll(TARGETS, SOURCES)
    )
    assert bridged == pytest.approx(hooked, rel=1e-5)

    hooked, bridged = on_both(
        twins,
        lambda m: caa_vector(m, SOURCES, TARGETS, "blocks.1.hook_resid_post").direction,
    )
    torch.testing.assert_close(bridged, hooked, atol=1e-5, rtol=0)

    sae = tiny_sae("blocks.1.attn.hook_q")
    classes = {"a": SOURCES, "b": TARGETS}
    tokens, mask = left_padded(twins["hooked"], SOURCES)

    def query_steering(model):
        """The prototypes, and the change of the logits at real tokens under query steering."""
        protos = QueryPrototypes.fit(model, sae, classes, batch_size=2)
        with torch.no_grad():
            plain = model(tokens, attention_mask=mask)
            with steer_queries(model, sae, protos, "b", steps=5, step_size=5.0):
                steered = model(tokens, attention_mask=mask)
        return protos.prototypes, (steered - plain)[mask.bool()]

    (protos, change), (protos_b, change_b) = on_both(twins, query_steering)
    torch.testing.assert_close(protos_b, protos, atol=1e-5, rtol=1e-5)
    assert change.abs().max() > 1e-2  # the queries moved the output
    torch.testing.assert_close(change_b, change, atol=1e-2 * float(change.abs().max()), rtol=0)


def test_feature_cards_agree_across_backends(twins):
    sae = tiny_sae("blocks.1.hook_resid_post")

    def cards(model):
        return [
            card.to_dict()
            for card in feature_cards(model, sae, [0, 5, 17], SOURCES + TARGETS, n_contexts=3)
        ]

    def numbers(value):  # the numbers of a card, in order
        if isinstance(value, dict):
            return [x for v in value.values() for x in numbers(v)]
        if isinstance(value, (list, tuple)):
            return [x for v in value for x in numbers(v)]
        return [value] if isinstance(value, (int, float)) else []

    def words(value):  # everything else
        if isinstance(value, dict):
            return {k: words(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [words(v) for v in value]
        return None if isinstance(value, (int, float)) else value

    hooked, bridged = on_both(twins, cards)
    assert any(card["contexts"] for card in hooked)  # features that fire somewhere
    for card, card_b in zip(hooked, bridged, strict=True):
        assert words(card_b) == words(card)  # the same contexts and logit tokens
        assert numbers(card_b) == pytest.approx(numbers(card), rel=1e-4, abs=1e-5)


def test_the_evaluation_harness_agrees_across_backends(kv_twins):
    vector = SteeringVector(
        torch.randn(32, generator=torch.Generator().manual_seed(7)), "blocks.1.hook_resid_post"
    )

    def sweep(model):
        result = evaluate_steering(
            model, vector, prompts=SOURCES[:2], scales=[0.0, 6.0], max_new_tokens=5,
            behavior_scorer=KeywordScorer(["king"]),
        )  # fmt: skip
        return [(s.scale, s.text, s.coherence) for s in result.samples]

    hooked, bridged = on_both(kv_twins, sweep)
    assert [row[:2] for row in bridged] == [row[:2] for row in hooked]
    assert [row[2] for row in bridged] == pytest.approx([row[2] for row in hooked], rel=1e-4)


def test_cached_runs_ignore_the_bridges_own_hooks_but_not_a_users(tiny_bridge):
    """The bridge and transformers hook the Hugging Face layers themselves once the model has
    run; those are not edits, so caching stays allowed. A user's hook anywhere is refused."""
    tokens = tiny_bridge.to_tokens(PROMPTS[0])
    tiny_bridge.run_with_cache(tokens)  # installs the bridge's and transformers' hooks
    hf_layer = tiny_bridge.original_model.model.layers[0]
    assert hf_layer._forward_hooks or hf_layer.input_layernorm._forward_pre_hooks
    refuse_active_hooks(tiny_bridge, what="Test")

    handle = hf_layer.register_forward_hook(lambda module, args, out: None)
    try:
        with pytest.raises(RuntimeError, match="Test cannot use its cache"):
            refuse_active_hooks(tiny_bridge, what="Test")
    finally:
        handle.remove()
    vector = SteeringVector(torch.ones(32), "blocks.0.hook_resid_post")
    with (
        steer(tiny_bridge, vector, scale=1.0),
        pytest.raises(RuntimeError, match="blocks.0.hook_out"),
    ):
        refuse_active_hooks(tiny_bridge, what="Test")
    refuse_active_hooks(tiny_bridge, what="Test")
