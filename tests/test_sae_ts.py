"""SAE-TS: effect measurement, scale calibration, the effect model and targeted vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

import ssae_lens.sae_ts.calibration as sae_ts_calibration
import ssae_lens.sae_ts.effects as sae_ts_effects
from ssae_lens.sae_ts import (
    EffectModel,
    calibrate_scales,
    decoder_rotation,
    decoder_row_vector,
    interpolate_scales,
    measure_effects,
    pinv_vector,
    rotation_vector,
    sae_ts_vector,
    side_effect_ratio,
)
from ssae_lens.steering import SteeringVector, steer

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["The cat sat", "She walked to the market and"]
SQRT2 = math.sqrt(2.0)


@pytest.fixture(scope="module")
def tiny_sae() -> StandardSAE:
    cfg = StandardSAEConfig(d_in=32, d_sae=32)
    cfg.metadata.hook_name = HOOK
    torch.manual_seed(0)
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.b_enc.fill_(0.1)  # some features fire on the random model's activations
    return sae


def unit_directions(n: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def effects(model, sae, directions, **kwargs):
    options = dict(prompts=PROMPTS, n_samples=1, max_new_tokens=5, do_sample=False, batch_size=8)
    options.update(kwargs)
    return measure_effects(model, sae, directions, 3.0, **options)


# ---------------------------------------------------------------------------- effects
def test_zero_direction_has_exactly_zero_effect(tiny_model, tiny_sae):
    y = measure_effects(
        tiny_model, tiny_sae, torch.zeros(1, 32), 5.0, prompts=PROMPTS, n_samples=2,
        max_new_tokens=5, batch_size=8, seed=3,
    )  # fmt: skip
    assert y.shape == (1, 32)
    assert torch.equal(y, torch.zeros(1, 32))


def test_nonzero_direction_changes_features(tiny_model, tiny_sae):
    y = effects(tiny_model, tiny_sae, unit_directions(2))
    assert bool((y.abs().sum(dim=1) > 1e-3).all())


def test_greedy_effects_equal_a_hand_computation_from_unsteered_readouts(tiny_model, tiny_sae):
    # Reference: model.generate under a hand-written hook adding 3 * direction everywhere,
    # then an unsteered run_with_cache of each rollout alone (no padding), sae.encode of the
    # activations at the generated tokens (the last n_new inputs), averaged over tokens and
    # prompts; the same for unsteered rollouts is subtracted.
    dirs, n_new = unit_directions(2, seed=3), 4

    def mean_features(direction):
        rows = []
        for prompt in PROMPTS:
            hooks = [] if direction is None else [(HOOK, lambda act, hook: act + 3.0 * direction)]
            with tiny_model.hooks(fwd_hooks=hooks):
                tokens = tiny_model.generate(
                    prompt, max_new_tokens=n_new, do_sample=False, stop_at_eos=False,
                    verbose=False, return_type="tokens",
                )  # fmt: skip
            _, cache = tiny_model.run_with_cache(tokens, names_filter=HOOK)
            rows.append(tiny_sae.encode(cache[HOOK][0, -n_new:]).mean(0))
        return torch.stack(rows).mean(0)

    with torch.no_grad():
        baseline = mean_features(None)
        expected = torch.stack([mean_features(d) for d in dirs]) - baseline
    got = effects(tiny_model, tiny_sae, dirs, max_new_tokens=n_new, positions="generated")
    assert float(expected.abs().sum(1).min()) > 0.05  # the vectors change the text
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_effects_over_a_total_length_with_bos_only_prompts(tiny_model, tiny_sae):
    # Reference protocol, by hand: each rollout is `total` tokens long with its prompt (the
    # empty prompt is BOS alone, so it generates total - 1 tokens), its features are averaged
    # over every position (BOS and prompt included), and rollouts weigh equally.
    prompts, total, dirs = ["", "The cat sat", ""], 9, unit_directions(2, seed=5)
    bos = tiny_model.tokenizer.bos_token_id

    def mean_features(direction):
        rows = []
        for prompt in prompts:
            start = torch.tensor([[bos]]) if prompt == "" else tiny_model.to_tokens(prompt)
            hooks = [] if direction is None else [(HOOK, lambda act, hook: act + 3.0 * direction)]
            with tiny_model.hooks(fwd_hooks=hooks):
                tokens = tiny_model.generate(
                    start, max_new_tokens=total - start.shape[1], do_sample=False,
                    stop_at_eos=False, verbose=False, return_type="tokens",
                )  # fmt: skip
            assert tokens.shape == (1, total)
            _, cache = tiny_model.run_with_cache(tokens, names_filter=HOOK)
            rows.append(tiny_sae.encode(cache[HOOK][0]).mean(0))
        return torch.stack(rows).mean(0)

    with torch.no_grad():
        expected = torch.stack([mean_features(d) for d in dirs]) - mean_features(None)
    got = measure_effects(
        tiny_model, tiny_sae, dirs, 3.0, prompts=prompts, n_samples=1, total_tokens=total,
        do_sample=False, batch_size=3,
    )  # fmt: skip
    assert float(expected.abs().sum(1).min()) > 0.05
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # The prompt positions are the same with and without steering: "all" is the generated
    # positions' effect scaled by n_new / total per prompt.
    n_prompt = tiny_model.to_tokens("The cat sat").shape[1]
    per_prompt = [
        measure_effects(
            tiny_model,
            tiny_sae,
            dirs,
            3.0,
            prompts=[p],
            n_samples=1,
            total_tokens=total,
            do_sample=False,
            positions="generated",
        )  # fmt: skip
        for p in prompts
    ]
    weights = [(total - 1) / total, (total - n_prompt) / total, (total - 1) / total]
    scaled = sum(w * y for w, y in zip(weights, per_prompt, strict=True)) / 3
    torch.testing.assert_close(got, scaled, atol=1e-5, rtol=1e-4)


def test_sampled_total_length_effects_do_not_depend_on_the_batching(tiny_model, tiny_sae):
    # Prompts of three lengths, sampled with top-k: each length is its own group of batches.
    dirs, prompts = unit_directions(3, seed=6), ["", "The cat sat", "hey", ""]
    options = dict(prompts=prompts, n_samples=2, total_tokens=10, seed=4, top_k=20)
    batched = measure_effects(tiny_model, tiny_sae, dirs, 3.0, batch_size=16, **options)
    single = torch.cat(
        [
            measure_effects(tiny_model, tiny_sae, dirs[i : i + 1], 3.0, batch_size=3, **options)
            for i in range(3)
        ]
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert bool((batched.abs().sum(dim=1) > 1e-3).all())


def test_batched_effects_equal_one_vector_at_a_time(tiny_model, tiny_sae):
    dirs = unit_directions(4)
    batched = effects(tiny_model, tiny_sae, dirs, batch_size=8)  # 4 vectors x 2 prompts
    single = torch.cat(
        [effects(tiny_model, tiny_sae, dirs[i : i + 1], batch_size=2) for i in range(4)]
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_sampled_effects_do_not_depend_on_the_batching(tiny_model, tiny_sae):
    dirs = unit_directions(3, seed=2)
    options = dict(do_sample=True, n_samples=2, seed=5)
    batched = effects(tiny_model, tiny_sae, dirs, batch_size=12, **options)
    single = torch.cat(
        [effects(tiny_model, tiny_sae, dirs[i : i + 1], batch_size=3, **options) for i in range(3)]
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert bool((batched.abs().sum(dim=1) > 1e-3).all())


def test_rollouts_share_their_random_numbers_with_the_baseline(tiny_model, tiny_sae):
    # A vector too small to change any next-token distribution's CDF crossing leaves every
    # sampled token as in the unsteered rollouts, so the effect of the text is exactly zero;
    # independent draws would make other texts (and a nonzero difference).
    options = dict(do_sample=True, n_samples=3, seed=7)
    tiny = measure_effects(
        tiny_model, tiny_sae, unit_directions(2), 1e-6, prompts=PROMPTS, max_new_tokens=5,
        **options,
    )  # fmt: skip
    assert torch.equal(tiny, torch.zeros(2, 32))


def test_effect_of_the_text_alone_differs_from_steered_readout(tiny_model, tiny_sae):
    dirs = unit_directions(2)
    readout = effects(tiny_model, tiny_sae, dirs, steer_readout=True)
    text_only = effects(tiny_model, tiny_sae, dirs)
    # The steered readout sees the added vector itself at the hook point.
    assert not torch.allclose(readout, text_only)


def test_effect_cache_resumes_after_interruption(tiny_model, tiny_sae, tmp_path, monkeypatch):
    dirs = unit_directions(3, seed=1)
    reference = effects(tiny_model, tiny_sae, dirs, chunk_size=1)

    calls = {"n": 0}
    original = sae_ts_effects.generate_tokens
    # one generate call per prompt length (rollouts of equal-length prompts share a batch)
    per_chunk = len({tiny_model.to_tokens(p).shape[1] for p in PROMPTS})

    def failing_generate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * per_chunk + 1:  # baseline, chunk 0, then fail in chunk 1
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(sae_ts_effects, "generate_tokens", failing_generate)
    with pytest.raises(KeyboardInterrupt):
        effects(tiny_model, tiny_sae, dirs, chunk_size=1, cache_dir=tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [
        "baseline.safetensors",
        "chunk_0000000000_0000000001.safetensors",
        "manifest.json",
    ]

    calls["n"] = -100  # no more failures; count the generate calls of the resumed run
    resumed = effects(tiny_model, tiny_sae, dirs, chunk_size=1, cache_dir=tmp_path)
    assert calls["n"] == -100 + 2 * per_chunk  # only chunks 1 and 2 were generated
    torch.testing.assert_close(resumed, reference, atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="max_new_tokens differ"):
        effects(tiny_model, tiny_sae, dirs, chunk_size=1, cache_dir=tmp_path, max_new_tokens=4)


def test_effect_cache_cannot_lie(
    tiny_model, tiny_tokenizer, tmp_path, tmp_path_factory, monkeypatch
):
    from conftest import TOKENIZER_CORPUS, build_tiny_model

    from ssae_lens._core.cache import CacheWarning
    from ssae_lens.testing import bpe_tokenizer

    dirs = unit_directions(2, seed=4)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=32))
    sae.cfg.metadata.hook_name = HOOK
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
    first = effects(tiny_model, sae, dirs, chunk_size=1, cache_dir=tmp_path)

    # A damaged chunk or baseline is recomputed with a warning naming it, never returned.
    chunk = tmp_path / "chunk_0000000001_0000000002.safetensors"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    baseline = tmp_path / "baseline.safetensors"
    data = bytearray(baseline.read_bytes())
    data[-4:] = bytes(4)  # zero the last float of the payload
    baseline.write_bytes(bytes(data))
    with pytest.warns(CacheWarning) as caught:
        again = effects(tiny_model, sae, dirs, chunk_size=1, cache_dir=tmp_path)
    named = " ".join(str(w.message) for w in caught)
    assert chunk.name in named and baseline.name in named
    torch.testing.assert_close(again, first, atol=1e-6, rtol=0)

    # Weights that the old key sampled only in part (W_dec, the model's) now change the key.
    saved = sae.W_dec.detach().clone()
    with torch.no_grad():
        sae.W_dec[3, 5] += 1.0
    with pytest.raises(ValueError, match=r"settings\.sae differ"):
        effects(tiny_model, sae, dirs, chunk_size=1, cache_dir=tmp_path)
    with torch.no_grad():
        sae.W_dec.copy_(saved)
    other = build_tiny_model(tiny_tokenizer, seed=9)
    with pytest.raises(ValueError, match=r"settings\.model differ"):
        effects(other, sae, dirs, chunk_size=1, cache_dir=tmp_path)
    # The tokenizer is not in the model's fingerprint: one of the same size with fewer merges
    # starts the rollouts from other token ids, with the same weights.
    fewer_merges = bpe_tokenizer(str(tmp_path_factory.mktemp("tok")), TOKENIZER_CORPUS, 300)
    assert fewer_merges(PROMPTS[1]).input_ids != tiny_tokenizer(PROMPTS[1]).input_ids
    monkeypatch.setattr(tiny_model, "tokenizer", fewer_merges)
    with pytest.raises(ValueError, match=r"\(settings\.prompt_tokens differ\)"):
        effects(tiny_model, sae, dirs, chunk_size=1, cache_dir=tmp_path)
    monkeypatch.undo()

    # Steering already on the model would be measured into every effect: refused.
    with (
        steer(tiny_model, SteeringVector(dirs[0], HOOK), scale=2.0),
        pytest.raises(RuntimeError, match="hooks are active"),
    ):
        effects(tiny_model, sae, dirs, chunk_size=1, cache_dir=tmp_path)


def test_effect_cache_key_covers_the_sampling_protocol_hook_and_directions(
    tiny_model, tiny_sae, tmp_path
):
    # each of these changes the effects, so a cache made without it must be refused
    dirs = unit_directions(2, seed=5)
    effects(tiny_model, tiny_sae, dirs, chunk_size=2, cache_dir=tmp_path, max_new_tokens=2)
    changed = {
        "seed": dict(seed=1),
        "do_sample": dict(do_sample=True),
        "temperature": dict(temperature=0.5),
        "hook_name": dict(hook_name="blocks.0.hook_resid_post"),
        "positions": dict(positions="generated"),
        "top_k": dict(top_k=3),
        "total_tokens": dict(total_tokens=16, max_new_tokens=None),
    }
    for key, change in changed.items():
        with pytest.raises(ValueError, match=rf"settings\.{key} differ"):
            effects(
                tiny_model, tiny_sae, dirs, cache_dir=tmp_path, **{"max_new_tokens": 2, **change}
            )
    with pytest.raises(ValueError, match=r"settings\.directions_checksum differ"):
        measure_effects(
            tiny_model, tiny_sae, dirs, 2.0, prompts=PROMPTS, n_samples=1, max_new_tokens=2,
            do_sample=False, batch_size=8, cache_dir=tmp_path,
        )  # fmt: skip
    other = dirs.clone()
    other[1] = -other[1]  # same scales, same count: only a direction differs
    with pytest.raises(ValueError, match=r"settings\.directions_checksum differ"):
        effects(tiny_model, tiny_sae, other, cache_dir=tmp_path, max_new_tokens=2)


def test_temperature_reaches_the_sampler(tiny_model, tiny_sae):
    # the same seed, so the same uniforms: only the temperature can change the rollouts
    dirs = unit_directions(2, seed=6)
    sampled = dict(do_sample=True, n_samples=2, max_new_tokens=4, seed=3)
    cool = effects(tiny_model, tiny_sae, dirs, temperature=0.2, **sampled)
    again = effects(tiny_model, tiny_sae, dirs, temperature=0.2, **sampled)
    hot = effects(tiny_model, tiny_sae, dirs, temperature=5.0, **sampled)
    torch.testing.assert_close(cool, again, atol=0, rtol=0)
    assert not torch.allclose(cool, hot)


def test_effect_cache_key_covers_the_pad_token(tiny_model, tiny_sae, tmp_path):
    dirs = unit_directions(2, seed=5)
    effects(tiny_model, tiny_sae, dirs, chunk_size=2, cache_dir=tmp_path, max_new_tokens=2)
    tokenizer = tiny_model.tokenizer
    pad = tokenizer.pad_token
    tokenizer.pad_token_id = next(i for i in (1, 2, 3) if i != tokenizer.pad_token_id)
    try:
        with pytest.raises(ValueError, match=r"settings\.pad_token_id differ"):
            effects(tiny_model, tiny_sae, dirs, chunk_size=2, cache_dir=tmp_path, max_new_tokens=2)
    finally:
        tokenizer.pad_token = pad


def test_top_k_reaches_the_sampler(tiny_model, tiny_sae):
    # the same seed and temperature: top-1 sampling is greedy decoding, the full vocabulary is not
    dirs = unit_directions(2, seed=6)
    sampled = dict(do_sample=True, n_samples=1, max_new_tokens=4, seed=3, temperature=2.0)
    greedy = effects(tiny_model, tiny_sae, dirs, do_sample=False, max_new_tokens=4)
    top1 = effects(tiny_model, tiny_sae, dirs, top_k=1, **sampled)
    full = effects(tiny_model, tiny_sae, dirs, top_k=None, **sampled)
    torch.testing.assert_close(top1, greedy, atol=1e-6, rtol=0)
    assert not torch.allclose(full, greedy)


def test_a_prompt_exactly_total_tokens_long_leaves_none_to_generate(tiny_model, tiny_sae):
    n = tiny_model.to_tokens(PROMPTS[0]).shape[1]
    one = effects(tiny_model, tiny_sae, unit_directions(1), prompts=PROMPTS[:1],
                  max_new_tokens=None, total_tokens=n + 1)  # fmt: skip
    assert one.shape == (1, 32)  # one token to generate is enough
    with pytest.raises(ValueError, match="leaves none to generate"):
        effects(tiny_model, tiny_sae, unit_directions(1), prompts=PROMPTS[:1],
                max_new_tokens=None, total_tokens=n)  # fmt: skip


def test_batch_and_chunk_sizes_are_each_checked(tiny_model, tiny_sae):
    for bad in (dict(batch_size=0), dict(chunk_size=0)):
        with pytest.raises(ValueError, match="batch_size and chunk_size must be >= 1"):
            effects(tiny_model, tiny_sae, unit_directions(1), **bad)


def test_a_cached_run_refuses_hooks_on_the_sae(tiny_model, tiny_sae, tmp_path):
    # a hook on the SAE would change the cached features behind the cache key's back
    tiny_sae.hook_sae_acts_post.add_hook(lambda act, hook: act * 0)
    try:
        with pytest.raises(RuntimeError, match="hook"):
            effects(tiny_model, tiny_sae, unit_directions(1), cache_dir=tmp_path)
    finally:
        tiny_sae.reset_hooks()


def test_measure_effects_rejects_bad_input(tiny_model, tiny_sae):
    with pytest.raises(ValueError, match="not both"):
        effects(tiny_model, tiny_sae, unit_directions(1), total_tokens=8)
    with pytest.raises(ValueError, match="leaves none to generate"):
        effects(tiny_model, tiny_sae, unit_directions(1), total_tokens=4, max_new_tokens=None)
    with pytest.raises(ValueError, match="positions"):
        effects(tiny_model, tiny_sae, unit_directions(1), positions="prompt")
    with pytest.raises(ValueError, match="Closest valid names"):
        effects(tiny_model, tiny_sae, unit_directions(1), hook_name="blocks.1.hook_resid_pots")
    with pytest.raises(ValueError, match="do_sample=True"):
        effects(tiny_model, tiny_sae, unit_directions(1), n_samples=2)
    with pytest.raises(ValueError, match="one per direction"):
        measure_effects(tiny_model, tiny_sae, unit_directions(2), [1.0, 2.0, 3.0], prompts=PROMPTS)
    with pytest.raises(ValueError, match=r"^measure_effects needs at least one prompt\.$"):
        effects(tiny_model, tiny_sae, unit_directions(1), prompts=[])
    with pytest.raises(ValueError, match="total_tokens must be a positive integer, got 0"):
        effects(tiny_model, tiny_sae, unit_directions(1), total_tokens=0, max_new_tokens=None)


# ---------------------------------------------------------------------------- calibration
def test_interpolate_scales_on_hand_curves():
    scales = torch.tensor([1.0, 2.0, 3.0, 4.0])
    a = scales
    curves = torch.stack([0.1 * a**2, 0.1 * a, 1.0 * a])
    result, reached = interpolate_scales(scales, curves, 0.5)
    # Row 0 crosses 0.5 between (2, 0.4) and (3, 0.9): 2 + 0.1 / 0.5. Row 1 never reaches
    # it (clamped to 4). Row 2 crosses between (0, 0) and (1, 1.0).
    torch.testing.assert_close(result, torch.tensor([2.2, 4.0, 0.5]))
    assert reached.tolist() == [True, False, True]


def test_calibrate_scales_with_stubbed_loss(tiny_model, monkeypatch):
    base = 2.0

    def stub_losses(
        model, directions, hook_name, tokens, mask, sweep, batch_size, precision, stop_at=None
    ):
        # Loss rises as c_i * a^2 with c = |first coordinate| of each direction.
        c = directions[:, 0].abs()[:, None]
        return base + c * sweep[None] ** 2

    monkeypatch.setattr(sae_ts_calibration, "_steered_losses", stub_losses)
    dirs = torch.zeros(2, 32)
    dirs[0, 0], dirs[1, 0] = 0.5, 1e-4
    with pytest.warns(UserWarning, match=r"directions \[1\]"):
        scales = calibrate_scales(
            tiny_model, dirs, HOOK, reference_texts=["The cat sat."], scales=[0.5, 1.0, 1.5]
        )
    # Row 0: increases 0.125, 0.5 (reached exactly at 1.0). Row 1: never; clamped to 1.5.
    torch.testing.assert_close(scales, torch.tensor([1.0, 1.5]))


def test_default_scale_sweep_is_geometric_in_the_mean_activation_norm(tiny_model, monkeypatch):
    texts = ["The cat sat on the mat.", "hey"]
    seen = {}

    def stub_losses(
        model, directions, hook_name, tokens, mask, sweep, batch_size, precision, stop_at=None
    ):
        if len(directions) == 1 and bool(directions.any()):  # not the unsteered loss
            seen["sweep"] = sweep
        return 2.0 + directions[:, :1].abs() * sweep[None] ** 2

    monkeypatch.setattr(sae_ts_calibration, "_steered_losses", stub_losses)
    dirs = torch.zeros(1, 32)
    dirs[0, 0] = 1.0
    with pytest.warns(UserWarning):  # whatever the loss, the stub is not the point here
        calibrate_scales(tiny_model, dirs, HOOK, reference_texts=texts, target_loss_increase=1e9)
    with torch.no_grad():  # each text alone (no padding): norms at every real token
        norms = torch.cat(
            [
                tiny_model.run_with_cache(t, names_filter=HOOK)[1][HOOK][0].norm(dim=-1)
                for t in texts
            ]
        )
    expected = float(norms.mean()) * torch.tensor([0.05 * 80 ** (i / 11) for i in range(12)])
    torch.testing.assert_close(seen["sweep"], expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("target_kind", ["increase", "absolute"])
def test_calibrate_scales_end_to_end(tiny_model, target_kind):
    texts = ["The cat sat on the mat.", "I love this movie, it is brilliant."]
    dirs = unit_directions(3)  # on this random model, steering along dirs[1] lowers the loss
    sweep = torch.linspace(0.05, 2.0, 40)
    lengths = [(t, tiny_model.to_tokens(t).shape[1] - 1) for t in texts]
    total = sum(n for _, n in lengths)

    @torch.no_grad()
    def loss(direction, scale):
        with steer(tiny_model, SteeringVector(direction, HOOK), scale=float(scale)):
            return sum(float(tiny_model(t, return_type="loss")) * n for t, n in lengths) / total

    base = loss(dirs[0], 0.0)
    goal = base + 0.01  # the loss the scales must reach
    target = (
        dict(target_loss_increase=0.01) if target_kind == "increase" else dict(target_loss=goal)
    )
    with pytest.warns(UserWarning, match=r"directions \[1\]"):
        scales = calibrate_scales(
            tiny_model, dirs, HOOK, reference_texts=texts, scales=sweep, **target
        )
    assert float(scales[1]) == pytest.approx(2.0)
    for i in (0, 2):
        assert 0 < scales[i] < sweep[-1]
        assert loss(dirs[i], scales[i]) == pytest.approx(goal, abs=0.002)


def test_calibration_sweep_stops_at_each_directions_crossing(tiny_model, monkeypatch):
    # The scales run in order and a direction leaves the sweep once its loss reaches the
    # target; the result is that of the full sweep, interpolated by hand.
    texts = ["The cat sat on the mat.", "hey"]
    dirs = unit_directions(3)
    sweep = torch.linspace(0.1, 2.0, 12)
    seen: list[tuple[tuple[float, ...], float]] = []
    original = sae_ts_calibration.steer_rows

    def spy(model, directions, hook_name, scales):
        for row, scale in zip(directions.tolist(), torch.as_tensor(scales).tolist(), strict=True):
            seen.append((tuple(row), scale))
        return original(model, directions, hook_name, scales)

    monkeypatch.setattr(sae_ts_calibration, "steer_rows", spy)
    with pytest.warns(UserWarning, match=r"directions \[1\]"):
        scales = calibrate_scales(
            tiny_model, dirs, HOOK, reference_texts=texts, target_loss_increase=0.01, scales=sweep
        )
    monkeypatch.setattr(sae_ts_calibration, "steer_rows", original)
    tokens, mask = sae_ts_calibration._right_padded(tiny_model, texts)
    full = sae_ts_calibration._steered_losses(
        tiny_model, dirs, HOOK, tokens, mask, sweep, 4, "float32"
    )
    base = sae_ts_calibration._steered_losses(
        tiny_model, dirs[:1] * 0, HOOK, tokens, mask, sweep[:1], 4, "float32"
    )[0, 0]
    for i, direction in enumerate(dirs):
        increase = (full[i] - base).tolist()
        crossing = next((j for j, v in enumerate(increase) if v >= 0.01), None)
        # every text at every scale up to the crossing (all scales if never reached)
        steps = len(sweep) if crossing is None else crossing + 1
        row = tuple(direction.tolist())
        assert sorted(a for r, a in seen if r == row) == sorted(
            float(a) for a in sweep[:steps] for _ in texts
        )
        if crossing is None:
            assert float(scales[i]) == pytest.approx(float(sweep[-1]))
            continue
        assert crossing < len(sweep) - 1  # the sweep did stop early for this direction
        a0, l0 = (
            (0.0, 0.0) if crossing == 0 else (float(sweep[crossing - 1]), increase[crossing - 1])
        )
        a1, l1 = float(sweep[crossing]), increase[crossing]
        assert float(scales[i]) == pytest.approx(a0 + (0.01 - l0) / (l1 - l0) * (a1 - a0), rel=1e-4)


def test_calibration_targets_are_checked(tiny_model):
    texts, dirs = ["The cat sat on the mat."], unit_directions(1)
    with pytest.raises(ValueError, match="not both"):
        calibrate_scales(
            tiny_model, dirs, HOOK, reference_texts=texts, target_loss=9.0,
            target_loss_increase=0.5,
        )  # fmt: skip
    with pytest.raises(ValueError, match="not above the unsteered loss"):
        calibrate_scales(tiny_model, dirs, HOOK, reference_texts=texts, target_loss=0.1)


# ---------------------------------------------------------------------------- effect model
def synthetic_pairs(n=400, d=8, d_sae=12, noise=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d_sae, generator=g)
    b = torch.randn(d_sae, generator=g)
    s = torch.randn(n, d, generator=g)
    s = s / s.norm(dim=1, keepdim=True)
    y = s @ w + b + noise * torch.randn(n, d_sae, generator=g)
    return s, y, w, b


@pytest.mark.parametrize("method", ["ridge", "adam"])
def test_effect_model_recovers_a_linear_map(method):
    s, y, w, b = synthetic_pairs()
    options = dict(weight_decay=0.0) if method == "ridge" else dict(steps=1500, weight_decay=0.0)
    model, report = EffectModel.fit(s, y, method=method, seed=1, **options)
    torch.testing.assert_close(model.W, w, atol=0.03, rtol=0)
    torch.testing.assert_close(model.b, b, atol=0.01, rtol=0)
    assert report.n_train == 320 and report.n_test == 80
    assert report.r2 > 0.99
    assert report.test_mse == pytest.approx(1e-4, rel=0.5)  # the noise variance
    assert report.r2_per_feature.shape == (12,)


def test_ridge_matches_the_centred_closed_form_and_leaves_the_bias_unshrunk():
    # Ridge with an unpenalised intercept = ridge on centred data, intercept from the means:
    # W = (Xc^T Xc + alpha n I)^-1 Xc^T Yc, b = mean(y) - mean(x) W.
    s, y, _, _ = synthetic_pairs(n=60, noise=0.3)
    y = y + 5.0  # a large shared effect: a penalised bias would be pulled toward 0
    xs, ys = s.double().numpy(), y.double().numpy()
    for alpha in (0.01, 1.0, 1e6):
        model, _ = EffectModel.fit(s, y, weight_decay=alpha, test_fraction=0.0)
        xc, yc = xs - xs.mean(0), ys - ys.mean(0)
        w = np.linalg.solve(xc.T @ xc + alpha * 60 * np.eye(xs.shape[1]), xc.T @ yc)
        b = ys.mean(0) - xs.mean(0) @ w
        np.testing.assert_allclose(model.W.numpy(), w, atol=1e-5)
        np.testing.assert_allclose(model.b.numpy(), b, atol=1e-5)
    # an overwhelming penalty leaves only the intercept: the mean effect
    np.testing.assert_allclose(model.b.numpy(), ys.mean(0), atol=1e-4)


def test_fit_report_r2_matches_its_definition():
    s, y, _, _ = synthetic_pairs(n=50, noise=0.5)
    model, report = EffectModel.fit(s, y, test_fraction=0.2, seed=4)
    test = torch.randperm(50, generator=torch.Generator().manual_seed(4))[:10]
    resid = y[test] - model.predict(s[test])
    centred = y[test] - y[test].mean(0)
    assert report.r2 == pytest.approx(float(1 - (resid**2).sum() / (centred**2).sum()), abs=1e-5)
    assert report.test_mse == pytest.approx(float((resid**2).mean()), rel=1e-4)


def test_fit_without_a_held_out_split_reports_nan_and_serialises():
    s, y, _, _ = synthetic_pairs(n=30)
    model, report = EffectModel.fit(s, y, test_fraction=0.0)
    assert (report.n_train, report.n_test) == (30, 0)
    assert math.isnan(report.r2) and math.isnan(report.test_mse)
    assert report.train_mse == pytest.approx(float(((model.predict(s) - y) ** 2).mean()), rel=1e-4)
    as_dict = report.to_dict()
    assert as_dict["n_train"] == 30 and len(as_dict["r2_per_feature"]) == 12
    with pytest.raises(ValueError, match="same n"):
        EffectModel.fit(s, y[:-1])
    with pytest.raises(ValueError, match="Unknown fit method"):
        EffectModel.fit(s, y, method="lbfgs")


def test_effect_model_save_load_roundtrip(tmp_path):
    s, y, _, _ = synthetic_pairs(n=40)
    model, _ = EffectModel.fit(s, y, hook_name=HOOK, model_name="tiny")
    path = model.save(tmp_path / "fit")
    loaded = EffectModel.load(tmp_path / "fit")
    assert path.name == "effect_model.safetensors"
    assert torch.equal(loaded.W, model.W) and torch.equal(loaded.b, model.b)
    assert (loaded.hook_name, loaded.model_name) == (HOOK, "tiny")
    assert loaded.provenance == model.provenance
    with pytest.raises(FileNotFoundError, match="save"):
        EffectModel.load(tmp_path / "missing")


def test_adam_fit_reaches_the_closed_form_minimum_of_its_objective():
    # The Adam objective mean((s W + b - y)^2) + decay |W|^2 / 2, the mean over n * d_sae
    # entries, has its minimum where (Xc^T Xc + decay * n * d_sae / 2 * I) W = Xc^T Yc (centred
    # data; b = mean(y) - mean(s) W). A heavy decay makes the factor 1/2 matter.
    s, y, _, _ = synthetic_pairs(n=40, d=3, d_sae=2, noise=0.3)
    decay = 0.5
    model, _ = EffectModel.fit(s, y, method="adam", weight_decay=decay, steps=3000, lr=1e-2,
                               test_fraction=0.0)  # fmt: skip
    xs, ys = s.double().numpy(), y.double().numpy()
    xc, yc = xs - xs.mean(0), ys - ys.mean(0)
    w = np.linalg.solve(xc.T @ xc + decay * 40 * 2 / 2 * np.eye(3), xc.T @ yc)
    b = ys.mean(0) - xs.mean(0) @ w
    np.testing.assert_allclose(model.W.numpy(), w, atol=2e-3)
    np.testing.assert_allclose(model.b.numpy(), b, atol=2e-3)


def test_adam_fit_leaves_the_global_rng_alone_and_depends_only_on_its_seed():
    s, y, _, _ = synthetic_pairs(n=30, d=4, d_sae=3)
    state = torch.get_rng_state()
    first, _ = EffectModel.fit(s, y, method="adam", steps=5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # another global state: the same fit
    second, _ = EffectModel.fit(s, y, method="adam", steps=5, seed=3)
    assert torch.equal(first.W, second.W) and torch.equal(first.b, second.b)


def test_fit_report_per_feature_r2_is_nan_where_the_held_out_effect_is_constant():
    s, y, _, _ = synthetic_pairs(n=50, d=8, d_sae=4, noise=0.5)
    test = torch.randperm(50, generator=torch.Generator().manual_seed(4))[:10]
    y[test, 2] = 7.0  # feature 2 does not vary on the held-out split (it does in training)
    model, report = EffectModel.fit(s, y, test_fraction=0.2, seed=4, weight_decay=0.01)
    assert report.method == "ridge" and (report.n_train, report.n_test) == (40, 10)
    resid = (y[test] - model.predict(s[test])).double()
    centred = (y[test] - y[test].mean(0)).double()
    sse, sst = (resid**2).sum(0), (centred**2).sum(0)
    assert float(sse[2]) > 0  # the fit misses the constant: only the NaN guards it
    for j in (0, 1, 3):
        assert float(report.r2_per_feature[j]) == pytest.approx(float(1 - sse[j] / sst[j]),
                                                                abs=1e-5)  # fmt: skip
    assert math.isnan(float(report.r2_per_feature[2]))
    # the pooled R^2 sums both over the features, the constant one included
    assert report.r2 == pytest.approx(float(1 - sse.sum() / sst.sum()), abs=1e-5)
    # every held-out effect constant: no pooled R^2 either
    y[test] = 7.0
    _, flat = EffectModel.fit(s, y, test_fraction=0.2, seed=4, method="adam", steps=5)
    assert flat.method == "adam"
    assert math.isnan(flat.r2) and torch.isnan(flat.r2_per_feature).all()
    assert flat.test_mse > 0


def test_fit_needs_two_training_rows_and_records_its_provenance():
    s, y, _, _ = synthetic_pairs(n=3, d=2, d_sae=2)
    with pytest.raises(ValueError, match="Too few pairs"):
        EffectModel.fit(s, y, test_fraction=0.5)  # 2 held out, 1 left to fit
    with pytest.raises(ValueError, match="Too few pairs"):
        EffectModel.fit(s[:1], y[:1], test_fraction=0.0)
    model, report = EffectModel.fit(s, y, test_fraction=0.2, seed=7, weight_decay=0.3)
    assert (report.n_train, report.n_test) == (2, 1)
    assert model.provenance == dict(method="ridge", n_train=2, n_test=1, seed=7,
                                    weight_decay=0.3)  # fmt: skip


def test_cross_validation_picks_the_penalty_with_the_lowest_held_out_error():
    # Noise-free effects with a large shared effect b = -m W and directions clustered around
    # m: the unpenalised fit predicts every fold exactly, a penalised one moves b and misses.
    g = torch.Generator().manual_seed(0)
    m = torch.full((2,), 3.0)
    s = m + 0.1 * torch.randn(60, 2, generator=g)
    w = torch.randn(2, 3, generator=g)
    y = (s - m) @ w
    model, _ = EffectModel.fit(s, y, weight_decay=[1.0, 0.0, 10.0], test_fraction=0.0)
    assert model.provenance["weight_decay"] == 0.0
    # d_model (2) below the number of folds is fine; fewer training pairs than folds is not
    with pytest.raises(ValueError, match="needs >= 5 training pairs"):
        EffectModel.fit(torch.randn(4, 8, generator=g), torch.randn(4, 3, generator=g),
                        weight_decay=[0.0, 1.0], test_fraction=0.0)  # fmt: skip


def test_save_overwrites_a_model_in_an_existing_folder(tmp_path):
    s, y, _, _ = synthetic_pairs(n=40)
    first, _ = EffectModel.fit(s, y, weight_decay=0.0)
    second, _ = EffectModel.fit(s, y, weight_decay=10.0)
    first.save(tmp_path / "fit")
    second.save(tmp_path / "fit")
    assert torch.equal(EffectModel.load(tmp_path / "fit").W, second.W)


# ---------------------------------------------------------------------------- targeted vectors
def hand_example() -> tuple[EffectModel, StandardSAE]:
    """Feature 0 is caused by e0 only; e1 causes feature 2; every vector shares b = 0.5 e2.
    The SAE decoder row of feature 0 is (e0 + e1) / sqrt 2, so it also raises feature 2."""
    w = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([0.0, 0.0, 0.5])
    cfg = StandardSAEConfig(d_in=2, d_sae=3)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1 / SQRT2, 1 / SQRT2], [1.0, 0.0], [0.0, 1.0]]))
    return EffectModel(w, b, hook_name=HOOK), sae


def test_sae_ts_vector_matches_the_formula_by_hand():
    effect_model, _ = hand_example()
    # normalise(W t) = e0, normalise(W b) = e1, so s = normalise(e0 - e1).
    v = sae_ts_vector(effect_model, {0: 1.0})
    torch.testing.assert_close(v.direction, torch.tensor([1 / SQRT2, -1 / SQRT2]))
    assert (v.method, v.hook_name, v.normalized) == ("sae-ts", HOOK, True)
    assert v.provenance["features"] == [0] and v.provenance["weights"] == [1.0]
    assert v.provenance["bias_weight"] == 1.0 and v.provenance["variant"] == "sae-ts"
    # lambda = 0.5: normalise(e0 - 0.5 e1).
    half = sae_ts_vector(effect_model, [0], bias_weight=0.5).direction
    torch.testing.assert_close(half, torch.tensor([1.0, -0.5]) / math.sqrt(1.25))
    torch.testing.assert_close(sae_ts_vector(effect_model, [0], bias_weight=0).direction,
                               torch.tensor([1.0, 0.0]))  # fmt: skip


def test_sae_ts_has_fewer_side_effects_than_the_decoder_row():
    effect_model, sae = hand_example()
    row = decoder_row_vector(sae, 0)
    targeted = sae_ts_vector(effect_model, {0: 1.0})
    # Decoder row: y = (sqrt2, 0, 1/sqrt2 + 0.5) -> ratio mean(0, 1.2071) / 1.4142.
    y_row = effect_model.predict(row.direction)
    assert side_effect_ratio(y_row, [0]) == pytest.approx((1 / SQRT2 + 0.5) / 2 / SQRT2)
    # SAE-TS: y = (sqrt2, 0, 0.5 - 1/sqrt2) -> ratio mean(0, 0.2071) / 1.4142.
    y_ts = effect_model.predict(targeted.direction)
    assert side_effect_ratio(y_ts, [0]) == pytest.approx((1 / SQRT2 - 0.5) / 2 / SQRT2)
    assert side_effect_ratio(y_ts, [0]) < side_effect_ratio(y_row, [0]) / 5


def test_side_effect_ratio_definition():
    y = torch.tensor([2.0, -1.0, 0.5, -0.5, 0.0])
    # Targets 0 (+1) and 1 (-1): change (2 + 1) / 2 = 1.5; side mean(0.5, 0.5, 0) = 1/3.
    assert side_effect_ratio(y, {0: 1.0, 1: -1.0}) == pytest.approx(1 / 3 / 1.5)
    assert side_effect_ratio(y, {1: 1.0}) == math.inf  # feature 1 went down
    with pytest.raises(ValueError, match="empty"):
        side_effect_ratio(y, {0: 0.0})
    with pytest.raises(IndexError, match="out of range"):
        side_effect_ratio(y, [7])
    with pytest.raises(ValueError, match="Every feature is a target: there are no side effects"):
        side_effect_ratio(y, [0, 1, 2, 3, 4])


# ------------------------------------------------- the three solves on a known linear model
def known_effect_model(d=8, d_sae=6, noise=0.02, n=600, seed=0):
    """A true linear effect model ``y = s W + b`` and the model fitted to noisy samples of it."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d_sae, generator=g)
    b = 0.5 * torch.randn(d_sae, generator=g)
    s = unit_directions(n, d, seed + 1)
    y = s @ w + b + noise * torch.randn(n, d_sae, generator=g)
    fitted, _ = EffectModel.fit(s, y, weight_decay=0.0, hook_name=HOOK, test_fraction=0.1)
    return EffectModel(w, b, hook_name=HOOK), fitted


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


def test_sae_ts_direction_maximises_the_predicted_target_change():
    true, fitted = known_effect_model()
    target = {1: 0.5, 4: 0.5}  # a weighted set, as the reference's targets
    t = torch.zeros(6)
    t[1] = t[4] = 0.5
    v = sae_ts_vector(fitted, target, bias_weight=0.0).direction
    # The unit s maximising t . (s W) is W t / |W t| (Cauchy-Schwarz); no random unit vector
    # does better on the true model, and the vector from the fitted model is that optimum.
    gain = lambda s: (s @ true.W) @ t  # noqa: E731
    candidates = unit_directions(20_000, 8, seed=9)
    assert float(gain(v)) >= float(gain(candidates).max()) - 1e-3
    assert cosine(v, true.W @ t) > 0.999
    # With the shared effect removed: normalise(normalise(W t) - normalise(W b)) of the truth.
    along, shared = true.W @ t, true.W @ true.b
    expected = along / along.norm() - shared / shared.norm()
    assert cosine(sae_ts_vector(fitted, target).direction, expected) > 0.999


def test_weighted_target_is_the_weighted_combination():
    _, fitted = known_effect_model()
    # Without the bias term, the SAE-TS direction is linear in t: {1: .5, 4: .5} points along
    # W e1 + W e4, which a list target [1, 4] (weight 1 each) matches and {1: .9, 4: .1} not.
    half = sae_ts_vector(fitted, {1: 0.5, 4: 0.5}, bias_weight=0).direction
    both = sae_ts_vector(fitted, [1, 4], bias_weight=0).direction
    tilted = sae_ts_vector(fitted, {1: 0.9, 4: 0.1}, bias_weight=0).direction
    torch.testing.assert_close(half, both)
    expected = fitted.W[:, 1] + fitted.W[:, 4]
    torch.testing.assert_close(half, expected / expected.norm())
    assert cosine(tilted, fitted.W[:, 1]) > cosine(half, fitted.W[:, 1])
    for one in (3, torch.tensor(3), np.int64(3)):  # one feature as an integer
        assert sae_ts_vector(fitted, one).provenance["features"] == [3]
    dense = torch.zeros(6)
    dense[1], dense[4] = 0.5, 0.5
    torch.testing.assert_close(sae_ts_vector(fitted, dense, bias_weight=0).direction, half)


def test_pinv_vector_hits_the_unit_target_exactly_when_w_has_full_column_rank():
    true, fitted = known_effect_model()  # d_sae 6 <= d_model 8
    target = {0: 1.0, 3: -0.5}
    t = torch.tensor([1.0, 0, 0, -0.5, 0, 0])
    v = pinv_vector(true, target)
    # At its solve norm the vector's predicted effect is the unit target itself.
    reached = true.predict(v.direction * v.provenance["solve_norm"])
    torch.testing.assert_close(reached, t / t.norm(), atol=1e-5, rtol=0)
    assert v.provenance["variant"] == "pinv" and v.norm == pytest.approx(1.0)
    # The fit recovers it from noisy effects.
    assert cosine(pinv_vector(fitted, target).direction, v.direction) > 0.99
    # bias_weight=0: the solve that ignores b, whose predicted change s W is parallel to t.
    plain = pinv_vector(true, target, bias_weight=0.0).direction
    shift = plain @ true.W
    torch.testing.assert_close(shift / shift.norm(), t / t.norm(), atol=1e-5, rtol=0)
    assert cosine(plain, v.direction) < 0.99  # the bias term matters here


def test_pinv_vector_is_the_least_norm_least_squares_solution():
    true, _ = known_effect_model(d=6, d_sae=16)  # more features than dimensions
    t = torch.zeros(16)
    t[2], t[7] = 0.5, 0.5
    v = pinv_vector(true, {2: 0.5, 7: 0.5})
    # Least-squares solution of W^T x = t/|t| - b by a separate solver (SVD-based gelsd).
    rhs = (t / t.norm() - true.b).double()
    x = torch.linalg.lstsq(true.W.T.double(), rhs[:, None], driver="gelsd").solution[:, 0]
    torch.testing.assert_close(v.direction.double(), x / x.norm(), atol=1e-6, rtol=0)
    assert v.provenance["solve_norm"] == pytest.approx(float(x.norm()), rel=1e-5)
    # Normal equations: the residual of the predicted effect is orthogonal to every column.
    resid = true.predict(v.direction * v.provenance["solve_norm"]) - t / t.norm()
    torch.testing.assert_close(resid @ true.W.T, torch.zeros(6), atol=1e-4, rtol=0)


def rotated_decoder_example(d=8, d_sae=24, missing=5, noise=0.01, seed=0):
    """Effects generated by a known rotation R of unit decoder rows: column j of W is
    ``c_j d_j R`` (noisy), and feature ``missing`` has no effect data."""
    g = torch.Generator().manual_seed(seed)
    decoder = torch.randn(d_sae, d, generator=g)
    decoder = decoder / decoder.norm(dim=1, keepdim=True)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    w = (decoder @ rotation).T * torch.linspace(0.5, 2.0, d_sae)
    w = w + noise * torch.randn(d, d_sae, generator=g)
    w[:, missing] = 0
    cfg = StandardSAEConfig(d_in=d, d_sae=d_sae)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(decoder)
    b = 0.3 * torch.randn(d_sae, generator=g)
    return EffectModel(w, b, hook_name=HOOK), sae, decoder, rotation


def test_decoder_rotation_maps_decoder_rows_onto_their_effect_columns():
    effect_model, sae, decoder, rotation = rotated_decoder_example()
    r = decoder_rotation(effect_model, sae)
    torch.testing.assert_close(r @ r.T, torch.eye(8), atol=1e-5, rtol=0)  # orthogonal
    torch.testing.assert_close(r, rotation, atol=0.02, rtol=0)
    fitted = [j for j in range(24) if j != 5]
    columns = effect_model.W.T[fitted]
    mapped = decoder[fitted] @ r
    assert min(cosine(mapped[i], columns[i]) for i in range(len(fitted))) > 0.99
    # The reference applies the transpose (its R_ref = R^T, used as R_ref.T @ v): that maps
    # decoder rows elsewhere.
    slipped = decoder[fitted] @ r.T
    assert max(cosine(slipped[i], columns[i]) for i in range(len(fitted))) < 0.9


def test_rotation_vector_reaches_a_feature_without_effect_data():
    effect_model, sae, decoder, rotation = rotated_decoder_example()
    plain = rotation_vector(effect_model, sae, [5], bias_weight=0.0)
    expected = decoder[5] @ rotation
    assert cosine(plain.direction, expected) > 0.999
    assert plain.provenance["fitted_features"] == 23
    # With the shared effect removed, as the reference does after rotating.
    shared = effect_model.W @ effect_model.b
    corrected = expected / expected.norm() - shared / shared.norm()
    v = rotation_vector(effect_model, sae, {5: 1.0})
    assert cosine(v.direction, corrected) > 0.999
    assert v.provenance["variant"] == "rotation" and v.norm == pytest.approx(1.0)
    # A weighted target rotates the weighted decoder combination.
    mix = rotation_vector(effect_model, sae, {5: 0.5, 9: 0.5}, bias_weight=0.0).direction
    assert cosine(mix, (0.5 * decoder[5] + 0.5 * decoder[9]) @ rotation) > 0.999
    with pytest.warns(UserWarning, match="not unique"):
        decoder_rotation(effect_model, sae, fitted_features=[0, 1, 2])


def test_decoder_rotation_ignores_the_norms_of_decoder_rows_and_effect_columns():
    # R is fitted on unit rows and unit columns: rescaling decoder rows or columns of W
    # changes nothing. Noisy effects, so that a weighted fit would give another R.
    effect_model, sae, decoder, _ = rotated_decoder_example(noise=0.3)
    unit_r = decoder_rotation(effect_model, sae)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(24, 1, generator=g) * 5 + 0.1)
    torch.testing.assert_close(decoder_rotation(effect_model, sae), unit_r, atol=1e-5, rtol=0)
    unit_w = effect_model.W / effect_model.W.norm(dim=0).clamp_min(1e-12)
    unit_model = EffectModel(unit_w, effect_model.b, hook_name=HOOK)
    torch.testing.assert_close(decoder_rotation(unit_model, sae), unit_r, atol=1e-5, rtol=0)
    # and R is the Procrustes solution of the unit rows: no orthogonal matrix does better
    fitted = [j for j in range(24) if j != 5]
    d_f, u_f = decoder[fitted], unit_w.T[fitted]
    best = float((d_f @ unit_r - u_f).norm())
    for seed in range(200):
        q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(seed)))
        near = torch.linalg.qr(unit_r + 0.05 * q)[0]  # orthogonal matrices near R
        near = near * torch.sign(torch.diagonal(near.T @ unit_r))  # same column signs
        assert float((d_f @ near - u_f).norm()) >= best - 1e-5


def test_pinv_vector_with_a_partial_bias_weight_and_its_provenance():
    true, _ = known_effect_model()
    t = torch.tensor([1.0, 0, 0, -0.5, 0, 0])
    v = pinv_vector(true, {0: 1.0, 3: -0.5}, bias_weight=0.25)
    rhs = (t / t.norm() - 0.25 * true.b).double()
    x = torch.linalg.lstsq(true.W.T.double(), rhs[:, None], driver="gelsd").solution[:, 0]
    torch.testing.assert_close(v.direction.double(), x / x.norm(), atol=1e-6, rtol=0)
    assert v.provenance["bias_weight"] == 0.25
    assert v.provenance["effect_model"] == true.provenance
    fit_provenance = dict(method="ridge", n_train=9, n_test=1, seed=0, weight_decay=0.0)
    fitted = EffectModel(true.W, true.b, hook_name=HOOK, provenance=fit_provenance)
    for make in (sae_ts_vector, pinv_vector):
        assert make(fitted, [0]).provenance["effect_model"] == fit_provenance


def test_dense_and_sparse_targets_give_the_same_vectors():
    g = torch.Generator().manual_seed(1)
    effect_model = EffectModel(torch.randn(6, 4, generator=g), torch.randn(4, generator=g), HOOK)
    dense = torch.tensor([0.0, 1.0, 0.0, -0.5])
    for make in (sae_ts_vector, pinv_vector):
        torch.testing.assert_close(
            make(effect_model, dense).direction, make(effect_model, {1: 1.0, 3: -0.5}).direction
        )
    with pytest.raises(ValueError, match="dense target needs shape"):
        sae_ts_vector(effect_model, torch.ones(3))


def test_rotation_vector_uses_only_the_given_fitted_features():
    g = torch.Generator().manual_seed(0)
    d, d_sae = 4, 8
    decoder = torch.randn(d_sae, d, generator=g)
    decoder = decoder / decoder.norm(dim=1, keepdim=True)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    w = (decoder @ rotation).T
    w[:, 6:] = torch.randn(d, 2, generator=g)  # columns 6, 7 do not follow the rotation
    cfg = StandardSAEConfig(d_in=d, d_sae=d_sae)
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(decoder)
    effect_model = EffectModel(w, torch.zeros(d_sae), HOOK)
    v = rotation_vector(effect_model, sae, [2], fitted_features=range(6))
    expected = decoder[2] @ rotation
    torch.testing.assert_close(v.direction, expected / expected.norm(), atol=1e-5, rtol=0)
    assert v.provenance["fitted_features"] == 6
    polluted = rotation_vector(effect_model, sae, [2])  # all 8 columns: another rotation
    assert not torch.allclose(polluted.direction, v.direction, atol=1e-3)
    with pytest.raises(ValueError, match="does not match the effect model"):
        rotation_vector(EffectModel(torch.zeros(d + 1, d_sae), torch.zeros(d_sae)), sae, [2])


def test_decoder_row_vector_is_the_normalised_sae_row(tiny_sae):
    v = decoder_row_vector(tiny_sae, 3)
    row = tiny_sae.W_dec[3].detach()
    torch.testing.assert_close(v.direction, row / row.norm())
    assert (v.method, v.hook_name, v.normalized) == ("sae", HOOK, True)
    assert v.provenance["features"] == [3] and v.provenance["feature_index"] == 3


def test_decoder_row_vector_of_a_weighted_set():
    _, sae = hand_example()  # rows (1, 1)/sqrt2, (1, 0), (0, 1)
    v = decoder_row_vector(sae, {1: 0.5, 2: 0.5})
    torch.testing.assert_close(v.direction, torch.tensor([1 / SQRT2, 1 / SQRT2]))
    assert v.provenance["features"] == [1, 2] and v.provenance["weights"] == [0.5, 0.5]
    assert "feature_index" not in v.provenance
    # A negative weight subtracts the row: (1, 0) - (0, 1).
    torch.testing.assert_close(
        decoder_row_vector(sae, {1: 1.0, 2: -1.0}).direction, torch.tensor([1, -1]) / SQRT2
    )


def test_targeted_vector_needs_a_hook_name():
    effect_model, _ = hand_example()
    effect_model.hook_name = None
    with pytest.raises(ValueError, match="hook_name="):
        sae_ts_vector(effect_model, [0])
    assert sae_ts_vector(effect_model, [0], hook_name=HOOK).hook_name == HOOK


def test_weight_decay_grid_is_picked_on_the_training_split_only():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 40, generator=gen)
    w = torch.randn(40, 5, generator=gen) * (torch.arange(40) < 3)[:, None]  # 3 useful dims
    y = x @ w + 2.0 * torch.randn(60, 5, generator=gen)  # noisy: shrinkage helps
    _, plain = EffectModel.fit(x, y, weight_decay=1e-6)
    model, picked = EffectModel.fit(x, y, weight_decay=[1e-6, 1e-2, 1e-1, 1.0, 100.0])
    assert model.provenance["weight_decay"] in (1e-2, 1e-1, 1.0)  # neither extreme
    assert picked.r2 > plain.r2
    # The pick depends on the training rows only: changing the held-out effects keeps it.
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    y_changed = y.clone()
    y_changed[order[:12]] += 100.0
    again, _ = EffectModel.fit(x, y_changed, weight_decay=[1e-6, 1e-2, 1e-1, 1.0, 100.0])
    assert again.provenance["weight_decay"] == model.provenance["weight_decay"]
    with pytest.raises(ValueError, match="method='ridge'"):
        EffectModel.fit(x, y, weight_decay=[0.1, 1.0], method="adam")
