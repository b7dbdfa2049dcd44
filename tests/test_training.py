"""train_ssae: identifiability on synthetic shifts, sparsity modes, resuming, bad input."""

import math
import statistics

import pytest
import torch
from sae_lens.config import SAETrainerConfig

from ssae_lens import TrainingSSAEConfig, train_ssae
from ssae_lens.data.synthetic import make_synthetic_shifts
from ssae_lens.metrics import mcc
from ssae_lens.ssae.model import TrainingSSAE
from ssae_lens.ssae.training import (
    ShuffledBatches,
    SSAETrainer,
    check_shifts,
    load_or_train_ssae,
)


@pytest.mark.slow  # defaults include sparsity_target="auto": a selection per seed (~1 min)
def test_defaults_recover_concepts_on_synthetic_shifts():
    # The acceptance setting: n=9 concepts, <=3 change, d=64, 20k pairs, defaults.
    scores = []
    for seed in range(3):
        data = make_synthetic_shifts(20_000, 9, 3, 64, seed=seed)
        sae = train_ssae(data.shifts, TrainingSSAEConfig(d_in=64, d_sae=9), seed=seed)
        scores.append(mcc(sae.encode(data.shifts).detach(), data.concept_changes))
    assert statistics.median(scores) >= 0.95, scores


def test_unconstrained_autoencoder_is_not_identifiable():
    data = make_synthetic_shifts(5_000, 9, 3, 64, seed=0)
    cfg = TrainingSSAEConfig(d_in=64, d_sae=9, sparsity="none", training_steps=600)
    aff = train_ssae(data.shifts, cfg, seed=0)
    assert mcc(aff.encode(data.shifts).detach(), data.concept_changes) < 0.8


def _small_run(steps=300, log_every=50, **overrides):
    overrides.setdefault("sparsity_target", 0.1)  # tests/test_selection.py tests "auto"
    data = make_synthetic_shifts(2_000, 4, 2, 16, seed=1)
    cfg = TrainingSSAEConfig(d_in=16, d_sae=4, training_steps=steps, batch_size=64, **overrides)
    return data, train_ssae(
        data.shifts, cfg, seed=0, return_trainer=True, log_every=log_every, progress=False
    )


def test_constraint_is_met_and_logged():
    _, (sae, trainer) = _small_run(steps=1500, sparsity_target=0.2)
    last = trainer.history[-1]
    assert last.step == 1500
    assert last.mean_abs_code <= 0.2 * 1.1
    assert last.constraint_violation == pytest.approx(last.mean_abs_code - 0.2, abs=1e-6)
    assert all(r.lagrange_multiplier >= 0 for r in trainer.history)
    # The multiplier rose while the constraint was violated early on.
    assert max(r.lagrange_multiplier for r in trainer.history) > 0


def test_decoder_rows_have_unit_norm_after_training():
    _, (sae, _) = _small_run()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(4))


def test_topk_mode_gives_at_most_k_active_units():
    data, (sae, _) = _small_run(sparsity="topk", topk=2)
    assert ((sae.encode(data.shifts) != 0).sum(-1) <= 2).all()


def test_l1_penalty_lowers_code_magnitude_against_no_penalty():
    data, (l1, _) = _small_run(sparsity="l1", l1_coefficient=1.0)
    _, (free, _) = _small_run(sparsity="none")
    scaled = data.shifts * l1.shift_scale
    assert l1.encode(data.shifts).abs().mean() < free.encode(data.shifts).abs().mean()
    assert scaled.pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-4)


def test_iterator_of_batches_trains_and_runs_dry_clearly():
    data = make_synthetic_shifts(3_000, 4, 2, 16, seed=2)
    cfg = TrainingSSAEConfig(d_in=16, d_sae=4, training_steps=40, batch_size=50)
    sae = train_ssae(iter(data.shifts.split(50)), cfg, seed=0)
    assert sae.cfg.d_in == 16
    with pytest.raises(RuntimeError, match="ran out after"):
        train_ssae(iter(data.shifts[:500].split(50)), cfg, seed=0)


def test_resuming_from_a_checkpoint_loses_nothing(tmp_path):
    data = make_synthetic_shifts(1_000, 4, 2, 16, seed=3)
    cfg = TrainingSSAEConfig(d_in=16, d_sae=4, training_steps=60, batch_size=64)
    full, full_trainer = train_ssae(
        data.shifts,
        cfg,
        seed=5,
        checkpoint_path=tmp_path / "a",
        n_checkpoints=1,
        return_trainer=True,
        log_every=10,
    )
    middle = sorted((tmp_path / "a").iterdir(), key=lambda p: p.stat().st_mtime)[0]
    assert middle.name != f"final_{60 * 64}"
    resumed, resumed_trainer = train_ssae(
        data.shifts,
        cfg,
        seed=5,
        resume_from=middle,
        checkpoint_path=tmp_path / "b",
        return_trainer=True,
        log_every=10,
    )
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    assert [r.step for r in resumed_trainer.history] == [r.step for r in full_trainer.history]


def test_trainer_takes_the_adam_betas_of_its_config():
    # train_ssae leaves them at torch's defaults; a trainer built by hand may not.
    trainer_cfg = SAETrainerConfig(
        total_training_samples=20, train_batch_size_samples=4, lr_end=1e-4,
        adam_beta1=0.5, adam_beta2=0.75,
    )  # fmt: skip
    sae = TrainingSSAE(TrainingSSAEConfig(d_in=8, d_sae=2, sparsity_target=0.1))
    trainer = SSAETrainer(trainer_cfg, sae, iter([]), progress=False)
    assert len(trainer.optimizer.param_groups) == 2  # weights and the multiplier
    assert all(g["betas"] == (0.5, 0.75) for g in trainer.optimizer.param_groups)


def test_shuffled_batches_cover_each_epoch_once_and_restore_state():
    data = torch.arange(10).float()[:, None]
    batches = ShuffledBatches(data, batch_size=5, seed=1)
    epoch = torch.cat([next(batches), next(batches)]).flatten().sort().values
    assert torch.equal(epoch, torch.arange(10).float())
    state = batches.state_dict()
    ahead = [next(batches) for _ in range(3)]
    second = torch.cat(ahead[:2]).flatten().sort().values  # the next epoch: again every row
    assert torch.equal(second, torch.arange(10).float())
    again = ShuffledBatches(data, batch_size=5, seed=1)
    again.load_state_dict(state)
    assert all(torch.equal(a, next(again)) for a in ahead)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (torch.randn(10, 7), r"^shifts have width 7 but the config says d_in=8; set d_in=7"),
        (torch.full((10, 8), float("nan")), "NaN/inf"),
        (torch.empty(0, 8), r"n > 0"),
        (iter([]), r"^The data iterator is empty: there are no shifts to train on\.$"),
    ],
)
def test_bad_data_fails_with_a_clear_message(data, message):
    with pytest.raises(ValueError, match=message):
        train_ssae(data, TrainingSSAEConfig(d_in=8, d_sae=2, training_steps=5))


def test_a_single_shift_is_valid_data():
    check_shifts(torch.ones(1, 8), 8)  # no error


def test_resume_from_a_wrong_folder_says_what_to_pass(tmp_path):
    data = torch.randn(100, 8)
    with pytest.raises(FileNotFoundError, match=r"not an SSAE .*<checkpoint_path>/<n_samples>\.$"):
        train_ssae(
            data, TrainingSSAEConfig(d_in=8, d_sae=2, training_steps=5), resume_from=tmp_path
        )


def test_load_or_train_cache_reuses_and_rebuilds(tmp_path, monkeypatch):
    import ssae_lens.ssae.training as training
    from ssae_lens._core.cache import CacheWarning

    data = make_synthetic_shifts(500, 4, 2, 16, seed=2).shifts
    cfg = TrainingSSAEConfig(
        d_in=16, d_sae=4, training_steps=40, batch_size=64, sparsity_target=0.1
    )
    calls = []
    original = training.train_ssae
    monkeypatch.setattr(
        training, "train_ssae", lambda *a, **k: calls.append(1) or original(*a, **k)
    )

    def load(seed=0):
        sae = training.load_or_train_ssae(data, cfg, seed=seed, cache_dir=tmp_path, progress=False)
        return {k: v.clone() for k, v in sae.state_dict().items()}

    first = load()
    (folder,) = tmp_path.iterdir()
    assert load().keys() == first.keys() and len(calls) == 1  # read from the cache
    load(seed=1)
    assert len(calls) == 2  # the seed is in the key
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + bytes(4))  # zero one float
    with pytest.warns(CacheWarning, match="sae_weights.safetensors"):
        again = load()
    assert len(calls) == 3
    for name, tensor in first.items():
        assert torch.equal(again[name], tensor)
    (folder / "ssae_lens_cache.json").unlink()  # as if the folder were half-written
    with pytest.warns(CacheWarning, match="missing"):
        load()
    assert len(calls) == 4


def test_multiplier_stays_exactly_zero_when_the_constraint_holds_from_the_start():
    # Unit-norm rows and unit mean-square shifts keep mean |c| far below a target of 5, so
    # gradient ascent pushes the multiplier down every step and the projection holds it at 0.
    _, (_, trainer) = _small_run(steps=40, sparsity_target=5.0, log_every=1)
    assert len(trainer.history) == 40
    assert all(r.constraint_violation < 0 for r in trainer.history)
    assert all(r.lagrange_multiplier == 0.0 for r in trainer.history)


def test_multiplier_learning_rate_is_the_ratio_of_the_weights_rate_at_every_step():
    def multiplier_at_step_10(ratio):
        _, (_, trainer) = _small_run(
            steps=100, sparsity_target=0.01, multiplier_lr_ratio=ratio, log_every=10
        )
        primal, multiplier = trainer.optimizer.param_groups
        assert multiplier["lr"] == pytest.approx(primal["lr"] * ratio, abs=1e-12)  # at the end
        return trainer.history[0].lagrange_multiplier

    # The constraint is violated throughout the first steps, so the multiplier climbs by
    # about its learning rate per step (Adam): 4x the rate gives ~4x the multiplier.
    assert multiplier_at_step_10(1.0) / multiplier_at_step_10(0.25) == pytest.approx(4.0, rel=0.1)
    assert multiplier_at_step_10(0.0) == 0.0


def test_learning_rate_follows_a_cosine_from_lr_to_lr_times_lr_end_ratio():
    _, (_, trainer) = _small_run(steps=40, lr=0.02, lr_end_ratio=0.25, log_every=1)
    end = 0.02 * 0.25
    for r in trainer.history:  # the rate after `step` scheduler steps
        expected = end + (0.02 - end) * (1 + math.cos(math.pi * r.step / 40)) / 2
        assert r.lr == pytest.approx(expected, rel=1e-6)
    assert trainer.history[-1].lr == pytest.approx(end)


def test_sparsity_target_ramp_is_what_the_training_steps_use():
    _, (_, trainer) = _small_run(
        steps=40, sparsity_target=0.1, sparsity_target_start=0.5, sparsity_target_ramp_steps=20,
        log_every=1,
    )  # fmt: skip
    targets = [r.sparsity_target for r in trainer.history]
    assert targets[0] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(targets, targets[1:], strict=False))
    assert targets[10] == pytest.approx(0.5 - 0.4 * 10 / 20)  # linear in the step
    assert targets[20:] == pytest.approx([0.1] * 20)


def test_use_bias_learns_the_mean_shift_that_no_bias_cannot_represent():
    data = make_synthetic_shifts(2_000, 4, 2, 16, seed=1)
    offset = torch.zeros(16)
    offset[0] = 2.0
    shifts = data.shifts + offset
    cfg = dict(d_in=16, d_sae=4, training_steps=300, batch_size=64, sparsity_target=0.1)
    biased = train_ssae(shifts, TrainingSSAEConfig(use_bias=True, **cfg), seed=0, progress=False)
    plain = train_ssae(shifts, TrainingSSAEConfig(**cfg), seed=0, progress=False)
    assert torch.equal(plain.b_dec, torch.zeros(16)) and "b_dec" in dict(plain.named_buffers())
    b = biased.b_dec.detach()
    assert float(b @ offset / (b.norm() * offset.norm())) > 0.95

    def rel_err(sae):
        return float((sae(shifts).detach() - shifts).pow(2).sum() / shifts.pow(2).sum())

    assert rel_err(biased) < 0.5 * rel_err(plain)


def test_code_layer_norm_trains_and_gives_standardised_codes():
    data, (sae, _) = _small_run(steps=100, code_normalization="layer_norm")
    codes = sae.encode(data.shifts).detach()
    torch.testing.assert_close(codes.mean(-1), torch.zeros(len(codes)), atol=1e-5, rtol=0)
    var = codes.var(-1, unbiased=False)  # pre-codes var / (var + eps): 1 unless nearly constant
    assert bool((var <= 1 + 1e-5).all()) and float(var.median()) > 0.99


def test_seeds_give_different_models_and_the_cache_key_covers_the_seed(tmp_path):
    data = make_synthetic_shifts(500, 4, 2, 16, seed=4)
    cfg = TrainingSSAEConfig(d_in=16, d_sae=4, training_steps=5, batch_size=64, sparsity_target=0.1)
    first = load_or_train_ssae(data.shifts, cfg, seed=0, cache_dir=tmp_path, progress=False)
    other = load_or_train_ssae(data.shifts, cfg, seed=1, cache_dir=tmp_path, progress=False)
    assert not torch.equal(first.W_dec, other.W_dec)
    assert len(list(tmp_path.iterdir())) == 2
    again = load_or_train_ssae(data.shifts, cfg, seed=0, cache_dir=tmp_path, progress=False)
    assert torch.equal(again.W_dec, first.W_dec)
    assert len(list(tmp_path.iterdir())) == 2
    # other data or another config is another entry too
    load_or_train_ssae(data.shifts * 2, cfg, seed=0, cache_dir=tmp_path, progress=False)
    cfg_l1 = TrainingSSAEConfig(d_in=16, d_sae=4, training_steps=5, batch_size=64, sparsity="l1")
    load_or_train_ssae(data.shifts, cfg_l1, seed=0, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 4
    # training left the caller's config as it was (SAELens's trainer writes into the metadata)
    assert (
        cfg.to_dict()
        == TrainingSSAEConfig(
            d_in=16, d_sae=4, training_steps=5, batch_size=64, sparsity_target=0.1
        ).to_dict()
    )
