"""benchmarks/sae_ts.py: its weighted targets, separation, token counts and sign test."""

from __future__ import annotations

import math

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

HOOK = "blocks.1.hook_resid_post"
NEGATIVE = ["The cat sat on the mat", "A dog ran home"]
POSITIVE = ["She walked to the market and", "Birds sing in the morning light"]


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("sae_ts")


@pytest.fixture(scope="module")
def tiny_sae() -> StandardSAE:
    cfg = StandardSAEConfig(d_in=32, d_sae=16)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(32, 16, generator=gen))
        sae.b_enc.fill_(0.1)
    return sae


def test_targets_are_weighted_sets_and_bad_ones_name_the_fix(bench):
    cfg = bench.SaeTsConfig(targets={"french": [3, 5], "tense": {"7": 0.25, 2: 1}})
    assert cfg.targets == {"french": {3: 1.0, 5: 1.0}, "tense": {7: 0.25, 2: 1.0}}
    with pytest.raises(ValueError, match="targets.voice must be a mapping feature: weight"):
        bench.SaeTsConfig(targets={"voice": []})


def test_target_separation_of_one_feature_is_its_separation(bench, tiny_model, tiny_sae):
    # Independent of the weighted path: the per-feature separation, computed over all features.
    sep = bench.separation(tiny_sae, tiny_model, HOOK, NEGATIVE, POSITIVE)
    for f in (0, 5, 11):
        one = bench.target_separation(tiny_sae, tiny_model, HOOK, NEGATIVE, POSITIVE, {f: 1.0})
        assert one == pytest.approx(float(sep[f]), rel=1e-4, abs=1e-5)
        # pooled-std units: a positive weight does not change it
        half = bench.target_separation(tiny_sae, tiny_model, HOOK, NEGATIVE, POSITIVE, {f: 0.5})
        assert half == pytest.approx(one, rel=1e-4, abs=1e-5)


def test_target_separation_of_a_set_is_that_of_the_summed_activation(bench, tiny_model, tiny_sae):
    from ssae_lens.activations import harvest_activations

    with torch.no_grad():
        neg = tiny_sae.encode(harvest_activations(tiny_model, NEGATIVE, HOOK, position="all"))
        pos = tiny_sae.encode(harvest_activations(tiny_model, POSITIVE, HOOK, position="all"))
    a = [0.5 * float(r[2]) + 2.0 * float(r[9]) for r in neg]  # hand-summed per token
    b = [0.5 * float(r[2]) + 2.0 * float(r[9]) for r in pos]
    both = a + b
    mean = sum(both) / len(both)
    std = math.sqrt(sum((x - mean) ** 2 for x in both) / (len(both) - 1))
    expected = (sum(b) / len(b) - sum(a) / len(a)) / max(std, 1e-6)
    got = bench.target_separation(tiny_sae, tiny_model, HOOK, NEGATIVE, POSITIVE, {2: 0.5, 9: 2.0})
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_token_counts_include_the_prompt_and_every_direction(bench, tiny_model):
    cfg = bench.SaeTsConfig(
        effect_prompts=["", "The cat sat"], samples=3, total_tokens=10,
        held_prompts=["", "A", "B"], held_samples=2,
    )  # fmt: skip
    counts = bench._token_counts(tiny_model, cfg, n_directions=5, n_held=4)
    prompt_len = tiny_model.to_tokens("The cat sat").shape[1]  # BOS included
    assert counts["rollouts_per_direction"] == 6
    assert counts["per_direction"] == 6 * 10
    assert counts["generated_per_direction"] == 3 * ((10 - 1) + (10 - prompt_len))
    # the directions and one unsteered baseline, on the effect and on the held-out prompts
    assert counts["total"] == 60 * (5 + 1) + 2 * 3 * 10 * (4 + 1)


def test_effect_cache_key_follows_the_effect_options_only(bench):
    base = bench.SaeTsConfig()
    key = bench.effect_cache_key(base)
    for change in (
        dict(total_tokens=16), dict(top_k=None), dict(effect_scale="median"),
        dict(target_loss=4.0), dict(targets={"french": [1]}), dict(effect_prompts=["x"]),
        dict(precision="bfloat16"), dict(backend="bridge"), dict(hook_name="blocks.3.hook_mlp_out"),
    ):  # fmt: skip
        assert bench.effect_cache_key(bench.SaeTsConfig(**change)) != key, change
    for same in (dict(eval_samples=3), dict(abs_scales=[1.0]), dict(n_side=2)):
        assert bench.effect_cache_key(bench.SaeTsConfig(**same)) == key, same


def test_sign_test_matches_the_binomial_distribution(bench):
    from scipy.stats import binomtest

    for wins, losses in ((0, 0), (3, 0), (7, 2), (5, 5), (1, 12)):
        expected = 1.0 if wins + losses == 0 else binomtest(wins, wins + losses).pvalue
        assert bench._sign_test(wins, losses) == pytest.approx(expected, rel=1e-9)


def test_candidates_list_each_tasks_most_separating_features_with_cards(
    bench, tiny_model, tiny_sae, tmp_path, monkeypatch
):
    texts = {"tense": (NEGATIVE, POSITIVE), "voice": (POSITIVE, NEGATIVE)}  # short: n_ctx 48
    monkeypatch.setattr(bench, "task_texts", lambda task, n, seed: texts[task])
    cfg = bench.SaeTsConfig(hook_name=HOOK, out_dir=str(tmp_path), tasks=list(texts), candidates=3)
    bench.write_candidates(cfg, cfg, tiny_model, tiny_sae, "ab" * 32, NEGATIVE + POSITIVE)
    text = (tmp_path / "sae_ts_candidates.md").read_text()
    for task, (negative, positive) in texts.items():
        sep = bench.separation(tiny_sae, tiny_model, HOOK, negative, positive)
        section = text.split(f"## {task}\n")[1].split("\n## ")[0]
        listed = [float(line.split()[1]) for line in section.splitlines() if "separation" in line]
        assert listed == pytest.approx(sep.sort(descending=True).values[:3].tolist(), abs=5e-3)
        assert section.count("```") == 2 * 3  # a card per candidate
