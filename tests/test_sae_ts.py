"""SAE-TS: effect measurement, scale calibration, the effect model and targeted vectors."""

from __future__ import annotations

import math

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

import ssae_lens.sae_ts.calibration as sae_ts_calibration
import ssae_lens.sae_ts.effects as sae_ts_effects
from ssae_lens.sae_ts import (
    EffectModel,
    calibrate_scales,
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

    def failing_generate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # baseline, chunk 0, then fail in chunk 1
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
    assert calls["n"] == -100 + 2  # only chunks 1 and 2 were generated
    torch.testing.assert_close(resumed, reference, atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="max_new_tokens differ"):
        effects(tiny_model, tiny_sae, dirs, chunk_size=1, cache_dir=tmp_path, max_new_tokens=4)


def test_effect_cache_cannot_lie(tiny_model, tiny_tokenizer, tmp_path):
    from conftest import build_tiny_model

    from ssae_lens._core.cache import CacheWarning

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

    # Steering already on the model would be measured into every effect: refused.
    with (
        steer(tiny_model, SteeringVector(dirs[0], HOOK), scale=2.0),
        pytest.raises(RuntimeError, match="hooks are active"),
    ):
        effects(tiny_model, sae, dirs, chunk_size=1, cache_dir=tmp_path)


def test_measure_effects_rejects_bad_input(tiny_model, tiny_sae):
    with pytest.raises(ValueError, match="Closest valid names"):
        effects(tiny_model, tiny_sae, unit_directions(1), hook_name="blocks.1.hook_resid_pots")
    with pytest.raises(ValueError, match="do_sample=True"):
        effects(tiny_model, tiny_sae, unit_directions(1), n_samples=2)
    with pytest.raises(ValueError, match="one per direction"):
        measure_effects(tiny_model, tiny_sae, unit_directions(2), [1.0, 2.0, 3.0], prompts=PROMPTS)


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

    def stub_losses(model, directions, hook_name, tokens, mask, sweep, batch_size, precision):
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


def test_calibrate_scales_end_to_end(tiny_model):
    texts = ["The cat sat on the mat.", "I love this movie, it is brilliant."]
    dirs = unit_directions(3)  # on this random model, steering along dirs[1] lowers the loss
    sweep = torch.linspace(0.05, 2.0, 40)
    target = 0.01
    with pytest.warns(UserWarning, match=r"directions \[1\]"):
        scales = calibrate_scales(
            tiny_model, dirs, HOOK, reference_texts=texts, target_loss_increase=target, scales=sweep
        )

    lengths = [(t, tiny_model.to_tokens(t).shape[1] - 1) for t in texts]
    total = sum(n for _, n in lengths)

    @torch.no_grad()
    def loss(direction, scale):
        with steer(tiny_model, SteeringVector(direction, HOOK), scale=float(scale)):
            return sum(float(tiny_model(t, return_type="loss")) * n for t, n in lengths) / total

    base = loss(dirs[0], 0.0)
    assert float(scales[1]) == pytest.approx(2.0)
    for i in (0, 2):
        assert 0 < scales[i] < sweep[-1]
        assert loss(dirs[i], scales[i]) - base == pytest.approx(target, abs=0.002)


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


def test_fit_report_r2_matches_its_definition():
    s, y, _, _ = synthetic_pairs(n=50, noise=0.5)
    model, report = EffectModel.fit(s, y, test_fraction=0.2, seed=4)
    test = torch.randperm(50, generator=torch.Generator().manual_seed(4))[:10]
    resid = y[test] - model.predict(s[test])
    centred = y[test] - y[test].mean(0)
    assert report.r2 == pytest.approx(float(1 - (resid**2).sum() / (centred**2).sum()), abs=1e-5)
    assert report.test_mse == pytest.approx(float((resid**2).mean()), rel=1e-4)


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


def test_pinv_vector_solves_for_the_target_direction():
    g = torch.Generator().manual_seed(0)
    effect_model = EffectModel(torch.randn(6, 4, generator=g), torch.randn(4, generator=g), HOOK)
    target = {1: 1.0, 3: -0.5}
    v = pinv_vector(effect_model, target)
    shift = v.direction @ effect_model.W  # full row rank: s W is exactly parallel to t
    t = torch.tensor([0.0, 1.0, 0.0, -0.5])
    torch.testing.assert_close(shift / shift.norm(), t / t.norm(), atol=1e-5, rtol=0)
    assert v.provenance["variant"] == "pinv" and v.norm == pytest.approx(1.0)


def test_rotation_vector_reaches_a_feature_without_effect_data():
    g = torch.Generator().manual_seed(0)
    d, d_sae, missing = 8, 16, 5
    decoder = torch.randn(d_sae, d, generator=g)
    decoder = decoder / decoder.norm(dim=1, keepdim=True)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    w = (decoder @ rotation).T * torch.linspace(0.5, 2.0, d_sae)  # columns: rotated decoder rows
    w[:, missing] = 0  # no effect data for this feature
    cfg = StandardSAEConfig(d_in=d, d_sae=d_sae)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(decoder)
    v = rotation_vector(EffectModel(w, torch.zeros(d_sae), HOOK), sae, [missing])
    expected = decoder[missing] @ rotation
    torch.testing.assert_close(v.direction, expected / expected.norm(), atol=1e-5, rtol=0)
    assert v.provenance["fitted_features"] == d_sae - 1


def test_decoder_row_vector_is_the_normalised_sae_row(tiny_sae):
    v = decoder_row_vector(tiny_sae, 3)
    row = tiny_sae.W_dec[3].detach()
    torch.testing.assert_close(v.direction, row / row.norm())
    assert (v.method, v.hook_name, v.normalized) == ("sae", HOOK, True)
    assert v.provenance["features"] == [3]


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
