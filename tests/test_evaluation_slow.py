"""The steering evaluation harness on Gemma-3-270M: a sentiment CAA vector, offline.

Measured on 2 CPU cores: ~1 minute for the file when the machine is idle (model load ~10-20 s,
sweep ~36 s), ~3.5 minutes when other jobs share the cores (sweep ~170 s).
"""

import json

import pytest

from ssae_lens.data.builtin import attribute_texts
from ssae_lens.steering import caa_vector
from ssae_lens.steering.evaluation import evaluate_steering
from ssae_lens.steering.scorers import KeywordScorer, LikelihoodCoherenceScorer

HOOK = "blocks.6.hook_resid_post"
PROMPTS = ["Yesterday my neighbour", "I opened the letter and"]
POSITIVE_WORDS = [
    "good",
    "great",
    "love",
    "loved",
    "lovely",
    "happy",
    "wonderful",
    "amazing",
    "excellent",
    "beautiful",
    "best",
    "fantastic",
    "perfect",
    "enjoy",
    "enjoyed",
    "brilliant",
    "outstanding",
    "exemplary",
    "commendable",
    "nice",
    "fun",
    "glad",
    "awesome",
    "delightful",
    "superb",
    "success",
    "successful",
    "impressive",
]
# A steered continuation counts as usable when its mean coherence is at least this: the
# unsteered Gemma continuations score ~0.9, degenerate loops ("difference difference ...")
# ~0.06, markup fragments ~0.35.
COHERENCE_FLOOR = 0.6


@pytest.mark.slow
def test_caa_sentiment_sweep_on_gemma(gemma, tmp_path):
    # Contrastive sentences differing only in the sentiment word, which ends each text once
    # the final period is stripped, so the last-token CAA reads the sentiment directly.
    negative, positive = attribute_texts("sentiment", n=16, seed=0)
    vector = caa_vector(
        gemma, [t.rstrip(".") for t in positive], [t.rstrip(".") for t in negative], HOOK
    )
    result = evaluate_steering(
        gemma,
        vector,
        prompts=PROMPTS,
        scales=[0.5, 1.0, 2.0],
        behavior_scorer=KeywordScorer(POSITIVE_WORDS),
        max_new_tokens=12,
    )
    baseline = result.baseline
    usable = [
        r
        for r in result.results
        if r.scale > 0 and r.behavior > baseline.behavior and r.coherence >= COHERENCE_FLOOR
    ]
    assert usable, result.to_markdown(examples=2)
    assert result.best_score > baseline.product_of_means
    assert result.best_score == max(r.product_of_means for r in result.results)

    md = result.to_markdown(examples=2)
    assert md.count("(unsteered)") == 1 and len(result.results) == 4
    (tmp_path / "sweep.md").write_text(md)
    json.dumps(result.to_dict())
    assert result.plot(tmp_path / "sweep.png").stat().st_size > 0


@pytest.mark.slow
def test_likelihood_coherence_on_gemma(gemma):
    scorer = LikelihoodCoherenceScorer(gemma)
    prompt = "I went to the store and"
    fluent, loop = scorer(
        [" bought some milk and bread for breakfast.", " the the the the the the the the the"],
        [prompt, prompt],
    )
    assert fluent > 0.6 > loop
