"""The sampling benchmark compares like with like: its textbook draw is the same draw."""

import torch


def test_the_textbook_baseline_draws_what_sample_tokens_draws(load_benchmark):
    bench = load_benchmark("sampling")
    result = bench.measure(rows=16, vocab=1000, dtype=torch.float32, rounds=1)
    # A baseline drawing other tokens would time a different computation.
    assert result["same_draws_as_textbook"] == 1.0
    assert set(result["speed_up"]) == {"textbook", "multinomial"}
    low, high = result["speed_up"]["textbook"][1:]
    assert 0 < low <= result["speed_up"]["textbook"][0] <= high
