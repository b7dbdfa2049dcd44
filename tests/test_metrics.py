"""MCC and friends against brute force and numpy references."""

from itertools import permutations

import numpy as np
import pytest
import torch

from ssae_lens.metrics import (
    concept_directions,
    correlation_matrix,
    label_mcc,
    match,
    matched_cosine,
    mcc,
    next_token_nll,
    seed_agreement_mcc,
)


def test_correlation_matrix_matches_numpy():
    a, b = torch.randn(50, 3), torch.randn(50, 4)
    expected = np.corrcoef(a.numpy().T, b.numpy().T)[:3, 3:]
    np.testing.assert_allclose(correlation_matrix(a, b).numpy(), expected, atol=1e-10)


def test_mcc_equals_brute_force_over_permutations():
    a, b = torch.randn(40, 4), torch.randn(40, 4)
    corr = np.abs(np.corrcoef(a.numpy().T, b.numpy().T)[:4, 4:])
    best = max(np.mean([corr[i, p[i]] for i in range(4)]) for p in permutations(range(4)))
    assert mcc(a, b) == pytest.approx(best)


def test_mcc_is_one_for_permuted_rescaled_sign_flipped_codes():
    a = torch.randn(100, 5)
    b = a[:, [3, 0, 4, 1, 2]] * torch.tensor([2.0, -0.5, 3.0, -1.0, 7.0]) + 1.0
    result = match(a, b)
    assert result.mcc == pytest.approx(1.0)
    assert result.cols == [1, 3, 4, 0, 2]


def test_spearman_is_invariant_to_monotone_maps_but_pearson_is_not():
    a = torch.randn(200, 2)
    b = torch.exp(3 * a)
    assert mcc(a, b, "spearman") == pytest.approx(1.0)
    assert mcc(a, b, "pearson") < 0.9


def test_rectangular_mcc_matches_the_smaller_side():
    truth = torch.randn(100, 2)
    codes = torch.cat([truth, torch.randn(100, 3)], dim=1)
    assert mcc(codes, truth) == pytest.approx(1.0)


def test_constant_columns_count_as_uncorrelated():
    a = torch.cat([torch.randn(30, 1), torch.ones(30, 1)], dim=1)
    assert correlation_matrix(a, a)[1].abs().sum() == 0


def test_correlation_matrix_at_two_samples_and_unit_norm_columns_matches_numpy():
    # two samples, the fewest allowed: every non-constant pair correlates +-1
    a, b = torch.tensor([[1.0, 2.0], [3.0, 1.0]]), torch.tensor([[0.0], [5.0]])
    np.testing.assert_allclose(correlation_matrix(a, b).numpy(), [[1.0], [-1.0]], atol=1e-12)
    # +-0.5 data: the centred column has norm exactly 1 (only zero-norm columns are zeroed)
    a = torch.tensor([[0.5], [-0.5], [0.5], [-0.5]])
    b = torch.tensor([[1.0], [0.0], [2.0], [-1.0]])
    expected = np.corrcoef(a.numpy().T, b.numpy().T)[:1, 1:]
    np.testing.assert_allclose(correlation_matrix(a, b).numpy(), expected, atol=1e-12)


def test_seed_agreement_of_saes_equals_that_of_their_decoders():
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(4)
    w = [torch.randn(3, 10, generator=g) for _ in range(2)]
    saes = [SimpleNamespace(W_dec=x) for x in w]  # anything with a W_dec, as SAELens SAEs
    assert seed_agreement_mcc(saes) == seed_agreement_mcc(w)


def test_seed_agreement_of_permuted_and_flipped_decoders_is_one():
    w = torch.randn(6, 32)
    other = -w[[5, 4, 3, 2, 1, 0]] * 3
    mean, pairs = seed_agreement_mcc([w, other, w * 2])
    assert mean == pytest.approx(1.0) and len(pairs) == 3
    with pytest.raises(ValueError, match="at least 2"):
        seed_agreement_mcc([w])


def test_label_mcc_picks_the_best_latent_per_label():
    labels = torch.randint(0, 2, (200, 2)).float()
    codes = torch.stack([torch.randn(200), labels[:, 1] * 2 - 1, labels[:, 0]], dim=1)
    score, best = label_mcc(codes, labels)
    assert score == pytest.approx(1.0) and best == [2, 1]


def test_matched_cosine_of_rotated_basis():
    ref = torch.eye(3, 8)
    learned = -ref[[2, 0, 1]] * 5
    result = matched_cosine(learned, ref)
    assert result.mcc == pytest.approx(1.0) and result.cols == [2, 0, 1]


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="same n"):
        mcc(torch.randn(5, 2), torch.randn(6, 2))


def test_concept_directions_average_single_concept_shifts_with_sign():
    shifts = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, -2.0], [5.0, 5.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    dirs = concept_directions(shifts, labels)
    torch.testing.assert_close(dirs, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))


def test_concept_directions_name_the_concepts_that_never_change_alone():
    # concept 1 changes only together with concept 0 (3 pairs, 2 concepts)
    labels = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match=r"column\(s\) \[1\]"):
        concept_directions(torch.randn(3, 4), labels)


def test_steering_accuracy_by_hand():
    from ssae_lens.metrics import steering_accuracy

    src = torch.tensor([[2.0, 0.0]])
    tgt = torch.tensor([[1.0, 1.0]])
    # normalised source (1, 0) + unit direction (0, 1) = (1, 1): cosine 1 with the target
    assert steering_accuracy(src, tgt, torch.tensor([[0.0, 5.0]])) == pytest.approx(1.0)
    # direction (1, 0): (2, 0) vs (1, 1): cosine 1/sqrt(2)
    assert steering_accuracy(src, tgt, torch.tensor([[3.0, 0.0]])) == pytest.approx(2**-0.5)


def test_centred_steering_accuracy_by_hand():
    from ssae_lens.metrics import centred_steering_accuracy, steering_accuracy

    # Sources (12, 10) and (8, 10): their mean (10, 10) is the default centre. About it the
    # pairs are (2, 0) -> (1, 1) and (-2, 0) -> (-1, -1); the unit source plus the unit
    # direction (0, 1), resp. (0, -1), points exactly at the centred target: cosine 1.
    src = torch.tensor([[12.0, 10.0], [8.0, 10.0]])
    tgt = torch.tensor([[11.0, 11.0], [9.0, 9.0]])
    right = torch.tensor([[0.0, 5.0], [0.0, -2.0]])
    assert centred_steering_accuracy(src, tgt, right) == pytest.approx(1.0)
    # A direction along the source instead: (1, 0) + (1, 0) vs (1, 1), cosine 1/sqrt(2).
    wrong = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert centred_steering_accuracy(src, tgt, wrong) == pytest.approx(2**-0.5)
    # Uncentred, the common (10, 10) dominates: the two directions score much closer.
    uncentred_gap = steering_accuracy(src, tgt, right) - steering_accuracy(src, tgt, wrong)
    assert 0 < uncentred_gap < (1 - 2**-0.5) / 2
    # An explicit centre is used as given: centre 0 is the uncentred score.
    assert centred_steering_accuracy(src, tgt, wrong, center=torch.zeros(2)) == pytest.approx(
        steering_accuracy(src, tgt, wrong)
    )


def test_oriented_match_flips_signs_and_marks_unmatched_concepts():
    from ssae_lens.metrics import oriented_match

    reference = torch.eye(3, 4)
    learned = torch.stack([-reference[2], reference[0]])  # 2 directions for 3 concepts
    oriented, order, matching = oriented_match(learned, reference)
    assert order == [1, -1, 0]
    torch.testing.assert_close(oriented, torch.stack([reference[0], torch.zeros(4), reference[2]]))
    assert matching.mcc == pytest.approx(1.0)


def _abs_corr(a, b):
    """|Pearson correlation| between columns of a and b, by numpy."""
    k = a.shape[1]
    return np.abs(np.corrcoef(a.numpy().T, b.numpy().T)[:k, k:])


def test_label_mcc_on_imperfect_codes_is_the_mean_of_the_best_correlations():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 2, (300, 3), generator=g).float()
    noise = torch.randn(300, 4, generator=g)
    # latent 0 tracks label 0 well, latent 2 tracks label 1 poorly, label 2 barely
    codes = noise * torch.tensor([0.3, 1.0, 2.0, 1.0])
    codes[:, 0] += labels[:, 0]
    codes[:, 2] += labels[:, 1]
    codes[:, 3] += 0.2 * labels[:, 2] + 0.5 * labels[:, 0]
    corr = _abs_corr(codes, labels)
    score, best = label_mcc(codes, labels)
    assert score == pytest.approx(corr.max(axis=0).mean())
    assert best == corr.argmax(axis=0).tolist()
    assert 0.3 < score < 0.9  # imperfect: a max or a min would differ


def test_match_and_seed_agreement_on_imperfect_inputs_equal_brute_force():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(80, 3, generator=g)
    b = a[:, [2, 0, 1]] + torch.randn(80, 3, generator=g) * torch.tensor([0.5, 1.5, 3.0])
    corr = _abs_corr(a, b)
    scores = {p: np.mean([corr[i, p[i]] for i in range(3)]) for p in permutations(range(3))}
    best = max(scores, key=scores.get)
    m = match(a, b)
    assert m.mcc == pytest.approx(scores[best]) and m.cols == list(best)
    assert m.values == pytest.approx([corr[i, best[i]] for i in range(3)])
    # seed agreement: decoder rows are correlated across the d_in coordinates, pairs averaged
    w = [torch.randn(3, 20, generator=g) for _ in range(3)]
    w[1] = w[0][[1, 2, 0]] + 0.7 * torch.randn(3, 20, generator=g)
    expected = [
        max(
            np.mean([_abs_corr(x.T, y.T)[i, p[i]] for i in range(3)])
            for p in permutations(range(3))
        )
        for x, y in ((w[0], w[1]), (w[0], w[2]), (w[1], w[2]))
    ]
    mean, pairs = seed_agreement_mcc(w)
    assert pairs == pytest.approx(expected) and mean == pytest.approx(np.mean(expected))


def test_matched_cosine_on_imperfect_directions_equals_brute_force():
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(3, 6, generator=g)
    learned = -2 * ref[[1, 2, 0]] + torch.randn(3, 6, generator=g)
    cos = (learned / learned.norm(dim=1, keepdim=True)) @ (ref / ref.norm(dim=1, keepdim=True)).T
    cos = cos.abs().numpy()
    best = max(permutations(range(3)), key=lambda p: sum(cos[i, p[i]] for i in range(3)))
    result = matched_cosine(learned, ref)
    assert result.cols == list(best)
    assert result.mcc == pytest.approx(np.mean([cos[i, best[i]] for i in range(3)]), rel=1e-6)
    assert result.mcc < 0.99


def test_spearman_equals_pearson_of_the_ranks():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(50, 2, generator=g) ** 3
    b = a[:, [1, 0]] + torch.randn(50, 2, generator=g)
    ranks = lambda x: x.argsort(0).argsort(0).double()  # noqa: E731 (no ties in continuous data)
    expected = np.corrcoef(ranks(a).numpy().T, ranks(b).numpy().T)[:2, 2:]
    np.testing.assert_allclose(correlation_matrix(a, b, "spearman").numpy(), expected, atol=1e-10)


def test_concept_alignment_is_the_mean_over_concepts_of_the_matched_cosine():
    from ssae_lens.metrics import concept_alignment

    reference = torch.eye(3, 4)
    tilted = torch.tensor([0.6, 0.8, 0.0, 0.0])  # cos 0.6 with concept 0, 0.8 with concept 1
    # Best one-to-one matching: tilted -> concept 1 (0.8), -e2 -> concept 2 (1.0); concept 0 has
    # no direction left and counts 0.
    assert concept_alignment(torch.stack([tilted, -reference[2]]), reference) == pytest.approx(
        (0.0 + 0.8 + 1.0) / 3
    )
    # With a direction per concept, it is the matched mean |cosine|.
    full = torch.stack([tilted, -reference[2], 2 * reference[0]])
    assert concept_alignment(full, reference) == pytest.approx((1.0 + 0.8 + 1.0) / 3)
    assert concept_alignment(full, reference) == pytest.approx(matched_cosine(full, reference).mcc)


def test_shared_concept_alignment_averages_one_direction_over_every_concept():
    from ssae_lens.metrics import concept_alignment, shared_concept_alignment

    reference = torch.tensor([[2.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    direction = torch.tensor([[3.0, 4.0, 0.0]])  # cos 0.6 and |-0.8|
    assert shared_concept_alignment(direction, reference) == pytest.approx(0.7)
    assert shared_concept_alignment(direction[0], reference) == pytest.approx(0.7)
    # The best single match would credit only the closer concept: not the same quantity.
    assert concept_alignment(direction, reference) == pytest.approx(0.8 / 2)


def test_regression_directions_recover_centred_value_directions():
    from ssae_lens.metrics import regression_directions

    values = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    values -= values.mean(0)  # one factor with 3 values, directions centred within the factor
    changes = [(0, 1), (1, 2), (2, 0), (1, 0), (0, 2)]
    labels = torch.zeros(len(changes), 3)
    for i, (old, new) in enumerate(changes):
        labels[i, new], labels[i, old] = 1.0, -1.0
    shifts = torch.stack([values[new] - values[old] for old, new in changes])
    torch.testing.assert_close(regression_directions(shifts, labels), values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_next_token_nll_is_the_shifted_cross_entropy(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=gen).to(dtype)
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    # Reference: token t + 1 scored by the float32 logits at t, by hand from the softmax.
    probs = logits.float().softmax(-1)
    expected = torch.stack(
        [torch.stack([-probs[b, t, tokens[b, t + 1]].log() for t in range(4)]) for b in range(3)]
    )
    nll = next_token_nll(logits, tokens)
    assert nll.dtype == torch.float32 and nll.shape == (3, 4)
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)


def test_next_token_nll_rejects_logits_and_tokens_of_other_lengths():
    with pytest.raises(ValueError, match=r"logits \(2, 4, 7\) and tokens \(2, 5\)"):
        next_token_nll(torch.zeros(2, 4, 7), torch.zeros(2, 5, dtype=torch.long))
