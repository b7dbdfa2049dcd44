"""Prototype steering of attention-query codes on the tiny model."""

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from ssae_lens.activations import harvest_activations
from ssae_lens.steering.query import QueryPrototypes, move_codes, steer_queries

HOOK = "blocks.1.attn.hook_q"
FORMAL = [
    "Could you kindly let me know whether the meeting is confirmed?",
    "The king wrote a letter.",
]
CASUAL = ["hey, is the meeting still on or what?", "the cat sat on the mat"]


@pytest.fixture(scope="module")
def query_sae(tiny_model):
    torch.manual_seed(0)
    d_in = tiny_model.cfg.n_heads * tiny_model.cfg.d_head
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=64, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        sae.W_enc.normal_(std=0.3)
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.fill_(0.05)
    return sae


@pytest.fixture(scope="module")
def protos(tiny_model, query_sae):
    return QueryPrototypes.fit(tiny_model, query_sae, {"formal": FORMAL, "casual": CASUAL})


def test_prototypes_are_the_mean_code_of_each_class(tiny_model, query_sae, protos):
    q = harvest_activations(tiny_model, FORMAL, HOOK, position="all", progress=False)
    torch.testing.assert_close(protos.prototypes[0], query_sae.encode(q).mean(0))
    assert protos.classes == ["formal", "casual"] and protos.hook_name == HOOK


def test_distance_steps_interpolate_toward_the_prototype():
    codes, protos = torch.rand(5, 8), torch.rand(2, 8)
    moved = move_codes(codes, protos, 1, steps=3, step_size=0.5, loss="distance")
    expected = 0.5**3 * codes + (1 - 0.5**3) * protos[1]
    torch.testing.assert_close(moved, expected)


def test_prototype_step_is_a_gradient_step_on_the_classifier_loss():
    torch.manual_seed(2)
    protos, codes = torch.rand(3, 5), torch.rand(4, 5, requires_grad=True)
    temp = torch.cdist(protos, protos).pow(2).sum() / 6
    sq = (codes.unsqueeze(-2) - protos).pow(2).sum(-1)
    loss = -torch.log_softmax(-sq / temp, dim=-1)[:, 1].sum()
    (grad,) = torch.autograd.grad(loss, codes)
    moved = move_codes(codes.detach(), protos, 1, steps=1, step_size=0.1, nonnegative=False)
    torch.testing.assert_close(moved, codes.detach() - 0.1 * temp * grad)


def test_prototype_loss_raises_the_target_class_probability():
    torch.manual_seed(1)
    protos = torch.rand(3, 6) * 2
    codes = protos[0] + 0.1 * torch.rand(4, 6)

    def p_target(c):
        sq = (c.unsqueeze(-2) - protos).pow(2).sum(-1)
        temp = torch.cdist(protos, protos).pow(2).sum() / 6
        return torch.softmax(-sq / temp, dim=-1)[:, 2]

    before = p_target(codes)
    moved = move_codes(codes, protos, 2, steps=5, step_size=0.3)
    assert (p_target(moved) > before).all()
    assert (moved >= 0).all()


def test_a_soft_classifier_moves_codes_along_the_prototype_difference():
    # T far above the squared distances: softmax ~ uniform, so with two classes each step
    # adds step_size * (p_target - p_other).
    protos, codes = torch.rand(2, 6), torch.rand(3, 6)
    moved = move_codes(codes, protos, 1, steps=4, step_size=0.5, temperature=1e9, nonnegative=False)
    torch.testing.assert_close(moved, codes + 4 * 0.5 * (protos[1] - protos[0]))
    with pytest.raises(ValueError, match="temperature must be positive"):
        move_codes(codes, protos, 1, temperature=0.0)


def test_a_hard_classifier_jumps_from_the_nearest_prototype_to_the_target():
    # T far below the squared distances: softmax is one-hot on the nearest prototype, so a
    # step of 0.5 from prototype 0 moves by 2 * 0.5 * (p_target - p_0), onto the target.
    protos = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [4.0, 4.0, 0.0]])
    moved = move_codes(protos[:1], protos, 1, steps=1, step_size=0.5, temperature=1e-3)
    torch.testing.assert_close(moved, protos[1:2])


def test_zero_steps_change_nothing_and_hooks_are_removed(tiny_model, query_sae, protos):
    tokens = tiny_model.to_tokens(["the cat sat"])
    plain = tiny_model(tokens)
    with steer_queries(tiny_model, query_sae, protos, "formal", steps=0):
        same = tiny_model(tokens)
    torch.testing.assert_close(same, plain)
    assert not tiny_model.hook_dict[HOOK]._forward_hooks


def test_steering_changes_output_identically_with_and_without_cache(tiny_model, query_sae, protos):
    tokens = tiny_model.to_tokens(["hey, is the"])
    plain = tiny_model(tokens)
    with steer_queries(tiny_model, query_sae, protos, "formal", steps=5, step_size=0.5):
        steered = tiny_model(tokens)
        kw = dict(max_new_tokens=6, do_sample=False, verbose=False, return_type="tokens")
        cached = tiny_model.generate(tokens, use_past_kv_cache=True, **kw)
        uncached = tiny_model.generate(tokens, use_past_kv_cache=False, **kw)
    assert not torch.allclose(steered, plain)
    assert torch.equal(cached, uncached)


def test_under_autocast_the_sae_runs_in_float32_and_queries_stay_bfloat16(
    tiny_model, query_sae, protos
):
    """Inside a bf16-autocast pass the queries are bfloat16; the SAE still encodes and decodes
    them in float32 and the edit is rounded once (an SAE under autocast would differ)."""
    from ssae_lens._core.precision import autocast

    tokens = tiny_model.to_tokens(["hey, is the"])
    seen = {}
    with autocast("bf16-autocast", "cpu"):
        _, plain = tiny_model.run_with_cache(tokens, names_filter=HOOK)
        with steer_queries(tiny_model, query_sae, protos, "formal", steps=3):
            # the unsteered query at this hook is plain[HOOK]: earlier layers are unchanged
            seen["q"] = tiny_model.run_with_cache(tokens, names_filter=HOOK)[1][HOOK]
    q = plain[HOOK]
    assert q.dtype == seen["q"].dtype == torch.bfloat16
    with torch.no_grad():
        flat = q.flatten(-2).float()
        codes = query_sae.encode(flat)
        moved = move_codes(codes, protos.prototypes, protos.index("formal"), steps=3)
        expected = flat + query_sae.decode(moved) - query_sae.decode(codes)
    torch.testing.assert_close(
        seen["q"], expected.to(torch.bfloat16).view_as(q), atol=0, rtol=2**-8
    )


def test_bad_inputs_are_named(tiny_model, query_sae, protos):
    with pytest.raises(ValueError, match="Unknown class"):
        protos.index("pirate")
    with pytest.raises(ValueError, match="attn.hook_q"):
        QueryPrototypes.fit(
            tiny_model, query_sae, {"a": FORMAL, "b": CASUAL}, hook_name="blocks.1.hook_resid_post"
        )
    with pytest.raises(ValueError, match="at least 2 classes"):
        QueryPrototypes.fit(tiny_model, query_sae, {"a": FORMAL})


def test_the_evaluation_harness_sweeps_query_steering(tiny_model, query_sae, protos):
    from ssae_lens.steering import KeywordScorer, evaluate_steering

    result = evaluate_steering(
        tiny_model,
        lambda steps: steer_queries(tiny_model, query_sae, protos, "formal", steps=int(steps)),
        prompts=["the cat"],
        scales=[0, 3],
        behavior_scorer=KeywordScorer(["king"]),
        max_new_tokens=4,
    )
    assert [r.scale for r in result.results] == [0.0, 3.0]
    tokens = tiny_model.to_tokens("the cat")
    out = tiny_model.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False)
    expected = tiny_model.tokenizer.decode(out[0, tokens.shape[1] :], skip_special_tokens=True)
    baseline = [s for s in result.samples if s.scale == 0.0][0]
    assert baseline.text == expected
    assert not tiny_model.hook_dict[HOOK]._forward_hooks


def test_steered_logits_equal_a_hand_written_query_hook(tiny_model, query_sae, protos):
    # q' = q + dec(move(enc q)) - dec(enc q), with the distance loss's k steps in closed
    # form: move(c) = (1 - eta)^k c + (1 - (1 - eta)^k) p_target.
    tokens = tiny_model.to_tokens(["hey, is the meeting still on"])
    steps, eta = 3, 0.4
    keep = (1 - eta) ** steps
    for target in ("formal", "casual"):
        proto = protos.prototypes[protos.classes.index(target)]

        def hand(q, hook, proto=proto):
            flat = q.flatten(-2)
            codes = query_sae.encode(flat)
            moved = keep * codes + (1 - keep) * proto
            return (flat + query_sae.decode(moved) - query_sae.decode(codes)).view_as(q)

        with torch.no_grad():
            plain = tiny_model(tokens)
            with tiny_model.hooks(fwd_hooks=[(HOOK, hand)]):
                expected = tiny_model(tokens)
            with steer_queries(
                tiny_model, query_sae, protos, target, steps=steps, step_size=eta, loss="distance"
            ):
                got = tiny_model(tokens)
        assert (expected - plain).abs().max() > 1e-3
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_steered_query_codes_move_toward_the_target_prototype(tiny_model):
    # An orthogonal SAE re-encodes an edited query to the edited code wherever the pre-code
    # was positive (and nearer the prototype elsewhere), so the codes read back after the
    # steering hook show where the steps moved them.
    d = tiny_model.cfg.n_heads * tiny_model.cfg.d_head
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d, metadata=SAEMetadata(hook_name=HOOK)))
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        sae.W_dec.copy_(q)
        sae.W_enc.copy_(q.T)
        sae.b_enc.zero_()
    protos = QueryPrototypes.fit(tiny_model, sae, {"formal": FORMAL, "casual": CASUAL})
    tokens = tiny_model.to_tokens(["hey, is the meeting still on", "The king wrote a letter."])

    def codes_at_hook():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=HOOK)
        return sae.encode(cache[HOOK].flatten(-2))

    with torch.no_grad():
        before = codes_at_hook()
        for t, target in enumerate(protos.classes):
            p_target, p_other = protos.prototypes[t], protos.prototypes[1 - t]
            # distance loss: each code is pulled straight toward the target prototype
            with steer_queries(tiny_model, sae, protos, target, steps=3, loss="distance"):
                pulled = codes_at_hook()  # the cache hook runs after the steering hook
            to_target = [(c - p_target).norm(dim=-1).mean() for c in (before, pulled)]
            assert to_target[1] < 0.5 * to_target[0], (target, to_target)
            # prototype loss: codes move along p_target - p_other, and more of them are
            # classified as the target (nearer its prototype than the other's)
            with steer_queries(tiny_model, sae, protos, target, steps=5, step_size=0.5):
                after = codes_at_hook()
            along = ((after - before) @ (p_target - p_other)).mean()
            nearer = [
                ((c - p_target).norm(dim=-1) < (c - p_other).norm(dim=-1)).float().mean()
                for c in (before, after)
            ]
            assert along > 0
            assert nearer[1] > nearer[0] and nearer[1] > 0.9, (target, nearer)
