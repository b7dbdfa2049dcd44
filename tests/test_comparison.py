"""Bootstrap intervals of a steering sweep, paired differences between methods, and
evaluate_methods on one shared grid."""

from __future__ import annotations

import math

import pytest
import torch

import ssae_lens.steering.evaluation as evaluation_module
from ssae_lens.steering import (
    SteeringEvaluation,
    SteeringSample,
    SteeringVector,
    compare_evaluations,
    evaluate_methods,
    evaluate_steering,
)
from ssae_lens.steering.bootstrap import cell_means, percentile_interval, resample_counts

HOOK = "blocks.1.hook_resid_post"
SETTINGS = dict(prompts=["p"], n_samples=1, seed=0, batch_size=16, max_new_tokens=4,
                do_sample=False, temperature=1.0, top_k=None, top_p=None)  # fmt: skip


def synthetic(behavior: dict[float, list[float]], coherence: float = 1.0, **settings):
    """An evaluation of ``n`` units (prompt_index k, sample 0) with given behaviour per scale."""
    samples = [
        SteeringSample(a, k, "p", 0, f"text {a} {k}", f"unsteered {k}", b, coherence)
        for a, values in behavior.items()
        for k, b in enumerate(values)
    ]
    return SteeringEvaluation.from_samples(samples, settings={**SETTINGS, **settings})


def bernoulli(n: int, p: float, seed: int) -> list[float]:
    return (torch.rand(n, generator=torch.Generator().manual_seed(seed)) < p).double().tolist()


# ------------------------------------------------------------------------------- bootstrap
def test_resample_counts_draw_n_units_per_replicate():
    counts = resample_counts(50, 4000, torch.Generator().manual_seed(0))
    assert counts.shape == (4000, 50)
    assert bool((counts.sum(1) == 50).all())
    # Each unit is drawn Binomial(50, 1/50) times: mean 1, variance 49/50.
    assert float(counts.mean()) == pytest.approx(1.0)
    assert float(counts.var()) == pytest.approx(0.98, rel=0.05)


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    n = 400
    values = torch.tensor(bernoulli(n, 0.5, 1))[:, None]
    counts = resample_counts(n, 4000, torch.Generator().manual_seed(2))
    means = cell_means(counts, values, torch.ones_like(values))["behavior"][:, 0]
    low, high = percentile_interval(means, 0.95)
    p = float(values.mean())
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # the textbook 95% interval of a proportion
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(p, abs=0.01)


def test_percentile_interval_is_the_quantile_pair():
    values = torch.arange(101, dtype=torch.float64)  # quantile q is exactly 100 q
    assert percentile_interval(values, 0.9) == pytest.approx((5.0, 95.0))
    with pytest.raises(ValueError, match="level"):
        percentile_interval(values, 1.5)


def test_cells_and_the_max_over_scales():
    b = [1.0, 0.0, 1.0, 1.0]
    result = synthetic({0.0: [0.0] * 4, 1.0: b, 2.0: [0.5] * 4}, coherence=0.5)
    r1 = result.results[1]
    assert (r1.behavior, r1.coherence) == (0.75, 0.5)
    assert r1.product_of_means == pytest.approx(0.375)
    assert r1.mean_of_products == pytest.approx(0.375)
    # A constant column has a degenerate interval.
    assert result.results[2].behavior_ci == pytest.approx((0.5, 0.5))
    assert result.best_scale == 1.0 and result.best_score == pytest.approx(0.375)
    # The max is bootstrapped as a whole: per replicate it is >= every scale's cell, so its
    # interval lies at or above each cell's.
    for r in result.results:
        assert result.metric_ci[0] >= r.product_of_means_ci[0] - 1e-12
        assert result.metric_ci[1] >= r.product_of_means_ci[1] - 1e-12


def test_product_of_means_and_mean_of_products_differ_when_behaviour_and_coherence_anticorrelate():
    samples = [
        SteeringSample(a, k, "p", 0, "t", "u", b, c)
        for a in (0.0, 1.0)
        for k, (b, c) in enumerate([(1.0, 0.0), (0.0, 1.0)] if a else [(0.0, 1.0), (0.0, 1.0)])
    ]
    result = SteeringEvaluation.from_samples(samples, settings=SETTINGS)
    steered = result.results[1]
    # On-target texts are incoherent and vice versa: no text is both.
    assert steered.product_of_means == pytest.approx(0.25)
    assert steered.mean_of_products == 0.0
    by_products = SteeringEvaluation.from_samples(
        samples, settings={**SETTINGS, "metric": "mean_of_products"}
    )
    assert result.best_score == pytest.approx(0.25) and by_products.best_score == 0.0


# --------------------------------------------------------------------------- paired differences
def test_paired_difference_detects_a_small_consistent_gain():
    n = 200
    a = bernoulli(n, 0.5, 3)
    flips = bernoulli(n, 0.1, 4)
    b = [max(x, f) for x, f in zip(a, flips, strict=True)]  # b >= a unit by unit
    base = [0.0] * n
    first = synthetic({0.0: base, 1.0: a})
    second = synthetic({0.0: base, 1.0: b})
    comparison = compare_evaluations({"A": first, "B": second}, n_resamples=2000)
    (diff,) = comparison.differences
    assert diff.difference == pytest.approx((sum(a) - sum(b)) / n)  # first - second
    assert diff.interval[1] < 0 and diff.distinguishable and diff.verdict == "B higher"
    assert (diff.first, diff.second) == ("A", "B")
    # Unpaired, the two methods' own intervals overlap: pairing is what separates them.
    scores = {s.name: s for s in comparison.scores}
    assert scores["A"].interval[1] > scores["B"].interval[0]
    assert "B higher" in comparison.to_markdown()


def test_identical_methods_are_not_distinguishable():
    values = bernoulli(64, 0.4, 5)
    one = synthetic({0.0: [0.0] * 64, 2.0: values})
    two = synthetic({0.0: [0.0] * 64, 3.0: values})  # another grid, same continuations' scores
    comparison = compare_evaluations({"x": one, "y": two, "z": one}, baseline="x")
    assert [(d.first, d.second) for d in comparison.differences] == [("y", "x"), ("z", "x")]
    for d in comparison.differences:
        assert d.difference == 0.0 and d.interval == (0.0, 0.0)
        assert not d.distinguishable and d.verdict == "not distinguishable"
    md = comparison.to_markdown()
    assert md.count("not distinguishable") == 2
    assert comparison.to_dict()["metric"] == "product_of_means"


def test_compare_refuses_unpaired_evaluations():
    one = synthetic({0.0: [0.0, 1.0], 1.0: [1.0, 1.0]})
    other_seed = synthetic({0.0: [0.0, 1.0], 1.0: [1.0, 1.0]}, seed=5)
    with pytest.raises(ValueError, match=r"settings \['seed'\] differ"):
        compare_evaluations({"a": one, "b": other_seed})
    with pytest.raises(ValueError, match="at least two"):
        compare_evaluations({"a": one})
    mixed = synthetic({0.0: [0.0, 1.0], 1.0: [1.0, 1.0]}, metric="mean_of_products")
    with pytest.raises(ValueError, match="different metrics"):
        compare_evaluations({"a": one, "b": mixed})
    assert compare_evaluations({"a": one, "b": mixed}, metric="mean_of_products").metric == (
        "mean_of_products"
    )
    with pytest.raises(ValueError, match="baseline 'c'"):
        compare_evaluations({"a": one, "b": one}, baseline="c")


# --------------------------------------------------------------------------- evaluate_methods
def char_scorer(texts, prompts):
    return [(sum(map(ord, t)) % 101) / 100 for t in texts]


def test_evaluate_methods_shares_the_grid_and_the_baseline(tiny_model, monkeypatch):
    g = torch.Generator().manual_seed(0)
    methods = {
        "a": SteeringVector(torch.randn(32, generator=g), HOOK),
        "b": SteeringVector(torch.randn(32, generator=g), HOOK),
    }
    options = dict(
        prompts=["The cat sat", "She walked to the"],
        behavior_scorer=char_scorer,
        coherence_scorer=char_scorer,
        max_new_tokens=4,
        n_samples=2,
        do_sample=True,
        seed=1,
        batch_size=3,
    )
    calls = []
    original = evaluation_module.generate_texts

    def counting(model, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return original(model, prompts, *args, **kwargs)

    monkeypatch.setattr(evaluation_module, "generate_texts", counting)
    results = evaluate_methods(tiny_model, methods, scales=[2.0, 6.0], **options)
    # 4 rows in batches of 3 and 1: the baseline once, then 2 scales for each of 2 methods.
    assert len(calls) == 2 * (1 + 2 * 2)
    # Each result is what evaluate_steering gives for that method alone.
    for name, vector in methods.items():
        alone = evaluate_steering(tiny_model, vector, scales=[2.0, 6.0], **options)
        assert results[name].samples == alone.samples
        assert results[name].results == alone.results
    assert compare_evaluations(results).n_units == 4

    per_method = evaluate_methods(tiny_model, methods, scales={"a": [1.0], "b": [3.0]}, **options)
    assert [r.scale for r in per_method["b"].results] == [0.0, 3.0]
    with pytest.raises(ValueError, match=r"No scales for \['b'\]"):
        evaluate_methods(tiny_model, methods, scales={"a": [1.0]}, **options)
    with pytest.raises(TypeError, match="Unknown evaluation options"):
        evaluate_methods(tiny_model, methods, scales=[1.0], n_sample=2, **options)
