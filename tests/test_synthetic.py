"""The synthetic shift generator follows its definition."""

import pytest
import torch

from ssae_lens.data.synthetic import make_synthetic_shifts


def test_shifts_are_the_linear_mixing_of_sparse_changes():
    d = make_synthetic_shifts(1000, 9, 3, 64, seed=0)
    torch.testing.assert_close(d.shifts, d.concept_changes @ d.mixing.T)
    n_changed = (d.concept_changes != 0).sum(-1)
    assert n_changed.min() == 1 and n_changed.max() == 3
    assert set(n_changed.unique().tolist()) == {1, 2, 3}
    torch.testing.assert_close(d.mixing.norm(dim=0), torch.ones(9))


def test_same_seed_same_data_other_seed_other_data():
    a, b = make_synthetic_shifts(100, seed=4), make_synthetic_shifts(100, seed=4)
    assert torch.equal(a.shifts, b.shifts)
    assert not torch.equal(a.shifts, make_synthetic_shifts(100, seed=5).shifts)


def test_binary_values_are_signed_units():
    d = make_synthetic_shifts(500, values="binary", seed=0)
    assert set(d.concept_changes.unique().tolist()) == {-1.0, 0.0, 1.0}


def test_correlated_pairs_change_together_with_the_same_sign():
    d = make_synthetic_shifts(20_000, 9, 3, 64, correlated_pairs=1, correlation=0.6, seed=0)
    dc = d.concept_changes
    assert torch.corrcoef(dc[:, :2].T)[0, 1] > 0.5
    assert abs(torch.corrcoef(dc[:, 2:4].T)[0, 1]) < 0.05
    both = (dc[:, 0] != 0) & (dc[:, 1] != 0)
    assert (dc[both, 0].sign() == dc[both, 1].sign()).float().mean() > 0.8


def test_noise_is_relative_to_signal():
    clean = make_synthetic_shifts(2000, seed=1)
    noisy = make_synthetic_shifts(2000, noise=0.5, seed=1)
    residual = (noisy.shifts - noisy.concept_changes @ noisy.mixing.T).pow(2).mean().sqrt()
    assert residual / clean.shifts.pow(2).mean().sqrt() == pytest.approx(0.5, rel=0.05)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_changes"):
        make_synthetic_shifts(10, 3, 4)
    with pytest.raises(ValueError, match="injective"):
        make_synthetic_shifts(10, 9, 3, d=4)


def test_value_distributions():
    uniform = make_synthetic_shifts(4000, 9, 3, 64, values="uniform", seed=0).concept_changes
    mags = uniform[uniform != 0].abs()
    assert float(mags.min()) >= 0.5 and float(mags.max()) <= 1.5
    assert float(mags.mean()) == pytest.approx(1.0, abs=0.02)  # U(0.5, 1.5)
    assert float((uniform[uniform != 0] > 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    normal = make_synthetic_shifts(4000, 9, 3, 64, values="normal", seed=0).concept_changes
    changed = normal[normal != 0]
    assert float(changed.mean()) == pytest.approx(0.0, abs=0.03)
    assert float(changed.std()) == pytest.approx(1.0, abs=0.03)
    assert float((changed.abs() < 0.5).float().mean()) == pytest.approx(0.383, abs=0.02)


@pytest.mark.parametrize("kind", ["tanh", "cubic"])
def test_nonlinearities_bend_the_clean_mixing_as_documented(kind):
    d = make_synthetic_shifts(500, 6, 2, 16, nonlinearity=kind, seed=3)
    clean = d.concept_changes @ d.mixing.T
    if kind == "tanh":
        scale = clean.abs().mean()
        expected = torch.tanh(clean / scale) * scale
    else:
        expected = clean + 0.1 * clean**3
    torch.testing.assert_close(d.shifts, expected)
    assert not torch.allclose(d.shifts, clean, atol=1e-2)
    # the nonlinearity leaves the ground truth (changes and mixing) as without it
    plain = make_synthetic_shifts(500, 6, 2, 16, seed=3)
    assert torch.equal(d.concept_changes, plain.concept_changes)
    assert torch.equal(d.mixing, plain.mixing)


def test_bad_choices_are_named():
    with pytest.raises(ValueError, match="values must be"):
        make_synthetic_shifts(10, values="gaussian")
    with pytest.raises(ValueError, match="nonlinearity must be"):
        make_synthetic_shifts(10, nonlinearity="relu")
    with pytest.raises(ValueError, match="correlated pairs need"):
        make_synthetic_shifts(10, 3, 1, correlated_pairs=2)
