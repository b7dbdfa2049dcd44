"""Fits of the SSAE and its baselines, and their scores, against hand computations and naive
loops; the shift-data container they read."""

from __future__ import annotations

import math
import sys
from itertools import permutations

import pytest
import torch

from ssae_lens import compare
from ssae_lens.compare import Fit, aff_config, evaluate_fit, pair_directions
from ssae_lens.data.pairs import ConceptPairs
from ssae_lens.data.synthetic import SyntheticShifts, make_synthetic_shifts
from ssae_lens.metrics import concept_directions
from ssae_lens.shift_data import ShiftData, reference_directions, synthetic_shift_data
from ssae_lens.ssae.model import TrainingSSAEConfig
from ssae_lens.ssae.training import train_ssae


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(src, tgt, labels, concepts, reference, sources=None, targets=None) -> ShiftData:
    """The same pairs as training and held-out split."""
    n = src.shape[0]
    pairs = ConceptPairs(
        sources or [f"s{i}" for i in range(n)], targets or [f"t{i}" for i in range(n)]
    )
    shifts = tgt - src
    return ShiftData(
        "toy", concepts, reference, shifts, labels, shifts, labels, src, tgt, src, tgt, pairs, pairs
    )


def _concept_data(n: int = 200, d: int = 16, seed: int = 0) -> ShiftData:
    """Pairs changing one or both of two orthogonal concepts, with signed labels."""
    gen = _gen(seed)
    concept = torch.linalg.qr(torch.randn(d, 2, generator=gen)).Q.T * 3
    labels = torch.randint(0, 2, (n, 2), generator=gen).float()
    labels[labels.sum(-1) == 0, 0] = 1.0
    labels *= torch.randint(0, 2, (n, 1), generator=gen).float() * 2 - 1
    src = torch.randn(n, d, generator=gen) + 5
    return _data(src, src + labels @ concept, labels, ["a", "b"], concept)


def test_fit_matches_permuted_sign_flipped_directions_to_their_concepts():
    reference = torch.eye(3, 5)
    learned = torch.stack([-2 * reference[2], reference[0] + 0.1 * reference[1], reference[1]])
    fit = compare.fit_directions(learned, torch.zeros(4, 3), reference)
    assert fit.order == [1, 2, 0]
    torch.testing.assert_close(fit.matched[2], reference[2])  # sign flipped back
    assert fit.matched[0] @ reference[0] > 0.99
    assert fit.alignment == pytest.approx((1 + 1 + 1 / (1 + 0.01) ** 0.5) / 3, abs=1e-6)
    torch.testing.assert_close(fit.directions.norm(dim=-1), torch.ones(3))


def test_pair_directions_sum_the_concepts_a_pair_changes():
    matched = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    fit = Fit(matched, torch.zeros(3, 2), matched, [0, 1], 1.0)
    labels = torch.tensor([[1.0, 0], [0, 1], [1, -1]])
    expected = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, -1, 0]])
    torch.testing.assert_close(pair_directions(fit, labels), expected)
    shared = Fit(matched[:1], torch.zeros(3, 1), matched[:1].expand(2, -1), [0, 0], 1.0, True)
    torch.testing.assert_close(pair_directions(shared, labels), matched[:1].expand(3, -1))


def test_supervised_directions_steer_better_than_a_wrong_one():
    data = _concept_data()
    right = evaluate_fit(compare.fit_supervised(data), data)
    swapped = Fit(data.reference.flip(0), torch.zeros(200, 2), data.reference.flip(0), [1, 0], 1.0)
    wrong = evaluate_fit(swapped, data)
    assert right.alignment == pytest.approx(1.0)
    assert right.label_mcc == pytest.approx(1.0, abs=1e-5)  # codes = 9 * labels
    assert right.accuracy > wrong.accuracy


def test_mean_diff_is_one_direction_scored_over_every_concept():
    data = _concept_data()
    fit = compare.fit_mean_diff(data)
    mean = data.shifts_tr.mean(0)
    unit_ref = data.reference / data.reference.norm(dim=-1, keepdim=True)
    by_hand = sum(abs(float(r @ mean / mean.norm())) for r in unit_ref) / 2
    assert fit.shared and fit.alignment == pytest.approx(by_hand, abs=1e-6)
    scores = evaluate_fit(fit, data)
    src, tgt = data.src_te, data.tgt_te
    v = mean / mean.norm()
    expected = torch.cosine_similarity(src / src.norm(dim=-1, keepdim=True) + v, tgt, dim=-1)
    assert scores.accuracy == pytest.approx(float(expected.mean()), abs=1e-6)


def test_pca_and_ica_recover_independent_sparse_concepts():
    gen = _gen(0)
    mixing = torch.randn(12, 3, generator=gen)
    mixing /= mixing.norm(dim=0)  # unit columns, not orthogonal
    sources = torch.distributions.Laplace(0.0, 1.0).sample((3000, 3))  # independent, non-Gaussian
    data = synthetic_shift_data(
        SyntheticShifts(sources @ mixing.T, sources, mixing), test_fraction=0.2
    )
    ica = compare.fit_ica(data, 3, seed=0)
    assert ica.alignment > 0.99
    pca = compare.fit_pca(data, 3)
    assert pca.directions.shape == (3, 12)
    # PCA's components are orthogonal; the mixing columns are not, so PCA aligns less.
    assert pca.alignment < ica.alignment - 0.05
    assert evaluate_fit(ica, data).accuracy is None  # synthetic shifts carry no activations


def test_pca_without_scikit_learn_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        compare.fit_pca(_concept_data(), 2)


def test_aff_config_drops_only_the_sparsity_constraint():
    cfg = TrainingSSAEConfig(d_in=8, d_sae=3, sparsity_target=0.37, training_steps=12)
    aff = aff_config(cfg)
    assert (
        aff.sparsity == "none" and aff.sparsity_target == TrainingSSAEConfig(1, 1).sparsity_target
    )
    assert (aff.d_sae, aff.training_steps, cfg.sparsity) == (3, 12, "constraint")


def test_calibrated_target_is_aff_code_scale_times_active_fraction(tmp_path):
    gen = _gen(0)
    concepts = torch.randn(2, 16, generator=gen)
    labels = torch.zeros(120, 2)
    labels[torch.arange(120), torch.arange(120) % 2] = 1.0  # one of the two changes per pair
    labels[:40] = 1.0  # a third change both: 4/3 concepts per pair on average
    src = torch.randn(120, 16, generator=gen)
    data = _data(src, src + labels @ concepts, labels, ["a", "b"], concepts)
    cfg = TrainingSSAEConfig(d_in=16, d_sae=2, training_steps=30)
    aff = train_ssae(data.shifts_tr, aff_config(cfg), seed=0, progress=False)
    scale = float(aff.encode(data.shifts_tr).detach().abs().mean())
    target = compare.calibrated_target(data, cfg, seed=0, cache_dir=tmp_path)
    assert target == pytest.approx(scale * (4 / 3) / 2, rel=1e-5)
    wide = TrainingSSAEConfig(d_in=16, d_sae=8, training_steps=30)
    assert compare.calibrated_target(data, wide, seed=0, cache_dir=tmp_path) < target


def _naive_scores(directions, reference, src, tgt, labels) -> tuple[float, float]:
    """Concept alignment and steering accuracy by brute force over assignments."""
    unit = [d / d.norm() for d in directions]
    ref = [r / r.norm() for r in reference]
    best, best_perm = -1.0, None
    for perm in permutations(range(len(unit)), len(ref)):
        total = sum(abs(float(unit[p] @ ref[c])) for c, p in enumerate(perm))
        if total > best:
            best, best_perm = total, perm
    oriented = [
        unit[p] * math.copysign(1.0, float(unit[p] @ ref[c])) for c, p in enumerate(best_perm)
    ]
    accuracies = []
    for i in range(src.shape[0]):
        v = sum(labels[i, c] * oriented[c] for c in range(len(ref)))
        steered = src[i] / src[i].norm() + v / v.norm()
        accuracies.append(float(torch.cosine_similarity(steered, tgt[i], dim=0)))
    return best / len(ref), sum(accuracies) / len(accuracies)


def test_evaluate_ssaes_matches_a_naive_loop():
    data = _concept_data(n=160)
    cfg = TrainingSSAEConfig(d_in=16, d_sae=3, training_steps=60)
    saes = [train_ssae(data.shifts_tr, cfg, seed=s, progress=False) for s in (0, 1)]
    metrics = compare.evaluate_ssaes(saes, data)
    assert metrics["n_ssaes"] == 2 and len(metrics["seed_agreement_pairs"]) == 1
    for i, sae in enumerate(saes):
        alignment, accuracy = _naive_scores(
            sae.steering_directions().detach(),
            data.reference,
            data.src_te,
            data.tgt_te,
            data.labels_te,
        )
        assert metrics["concept_alignment"][i] == pytest.approx(alignment, abs=1e-5)
        assert metrics["steering_accuracy"][i] == pytest.approx(accuracy, abs=1e-5)
    unlabelled = ShiftData(
        "u",
        [],
        data.reference[:0],
        data.shifts_tr,
        data.labels_tr[:, :0],
        data.shifts_te,
        data.labels_te[:, :0],
    )
    assert set(compare.evaluate_ssaes(saes, unlabelled)) == {
        "n_ssaes",
        "seed_agreement_mcc",
        "seed_agreement_pairs",
    }


def test_shift_data_round_trips_through_one_file(tmp_path):
    data = _concept_data(n=20)
    data.metadata = {"model": "tiny", "hook_name": "blocks.0.hook_resid_post"}
    loaded = ShiftData.load(data.save(tmp_path / "shifts.safetensors"))
    assert (loaded.name, loaded.concepts, loaded.metadata) == ("toy", ["a", "b"], data.metadata)
    for attr in ("reference", "shifts_tr", "labels_te", "src_te", "tgt_tr"):
        torch.testing.assert_close(getattr(loaded, attr), getattr(data, attr))
    assert loaded.train is None  # pair texts are not stored
    synthetic = synthetic_shift_data(make_synthetic_shifts(n_pairs=50, n_concepts=3, d=8, seed=1))
    reread = ShiftData.load(synthetic.save(tmp_path / "synthetic.safetensors"))
    assert reread.src_tr is None and reread.concepts == synthetic.concepts
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ShiftData.load(tmp_path / "missing.safetensors")


def test_synthetic_shift_data_splits_and_keeps_the_true_mixing():
    shifts = make_synthetic_shifts(n_pairs=40, n_concepts=4, d=8, seed=0)
    data = synthetic_shift_data(shifts, test_fraction=0.25, split_seed=3)
    assert (len(data.shifts_tr), len(data.shifts_te)) == (30, 10)
    torch.testing.assert_close(data.reference, shifts.mixing.T)
    rows = {tuple(r.tolist()) for r in torch.cat([data.shifts_tr, data.shifts_te])}
    assert rows == {tuple(r.tolist()) for r in shifts.shifts}  # a partition of the shifts
    assert data.median_shift_norm() == pytest.approx(float(data.shifts_tr.norm(dim=-1).median()))


def test_reference_directions_fall_back_to_least_squares_without_single_concept_pairs():
    concept = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    single = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    shifts = single @ concept + 0.1 * torch.tensor([[0.0, 0.0, 1.0]])
    torch.testing.assert_close(
        reference_directions(shifts, single, "change"), concept_directions(shifts, single)
    )
    together = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 1.0]])  # b never changes alone
    solution = torch.linalg.lstsq(together, together @ concept).solution
    torch.testing.assert_close(
        reference_directions(together @ concept, together, "change"), solution
    )
