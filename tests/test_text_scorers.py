"""Off-the-shelf offline scorers: VADER, lingua and textstat behind the Scorer protocol."""

from __future__ import annotations

import pytest

from ssae_lens.steering import Scorer
from ssae_lens.steering.text_scorers import (
    LanguageScorer,
    ReadingEaseScorer,
    SameLanguageScorer,
    VaderSentimentScorer,
)

FRENCH = "Je pense que nous allons manger ensemble ce soir avec mes amis."
GERMAN = "Ich glaube, dass wir heute Abend zusammen mit meinen Freunden essen werden."
ENGLISH = "I think that we are going to have dinner together tonight with my friends."


def test_vader_sentiment_maps_the_compound_score():
    pytest.importorskip("vaderSentiment")
    positive, negative = VaderSentimentScorer("positive"), VaderSentimentScorer("negative")
    texts = ["I love this wonderful, brilliant movie!", "The meeting is at noon.", "I hate it."]
    p, n = positive(texts, ["p"] * 3), negative(texts, ["p"] * 3)
    assert p[0] > 0.8 and p[1] == 0.5 and p[2] < 0.3  # VADER finds the middle text neutral
    for k, text in enumerate(texts):
        c = positive.compound(text)
        assert p[k] == pytest.approx((1 + c) / 2) and n[k] == pytest.approx((1 - c) / 2)
    assert positive([""], ["p"]) == [0.0] and negative(["  "], ["p"]) == [0.0]
    assert isinstance(positive, Scorer)
    with pytest.raises(ValueError, match="'positive' or 'negative'"):
        VaderSentimentScorer("happy")


def test_language_scorer_detects_the_target_language():
    pytest.importorskip("lingua")
    french, german = LanguageScorer("french"), LanguageScorer("German")
    texts = [FRENCH, GERMAN, ENGLISH, ""]
    f, g = french(texts, ["p"] * 4), german(texts, ["p"] * 4)
    assert f[0] > 0.5 and f[1] < 0.5 and f[2] < 0.5 and f[3] == 0.0
    assert g[1] > 0.5 and g[0] < 0.5 and g[2] < 0.5
    assert all(0.0 <= x <= 1.0 for x in f + g)
    # Confidences over the language set sum to 1 for a text.
    others = [LanguageScorer(name)([ENGLISH], ["p"])[0] for name in ("english", "spanish")]
    assert f[2] + g[2] + sum(others) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="not among languages"):
        LanguageScorer("italian")
    with pytest.raises(ValueError, match="Unknown language 'klingon'"):
        LanguageScorer("klingon", languages=("english", "klingon"))


def test_same_language_scorer_is_the_fraction_in_the_prompts_language():
    pytest.importorskip("lingua")
    detected = SameLanguageScorer()
    prompts = ["Yesterday evening my sister told me that", "Hier soir, ma soeur m'a dit que"]
    texts = [ENGLISH, FRENCH]
    assert detected(texts, prompts) == [1.0, 1.0]
    assert detected([FRENCH, ENGLISH], prompts) == [0.0, 0.0]
    fixed = SameLanguageScorer("english")
    assert fixed([ENGLISH, FRENCH, GERMAN, ""], ["I think"] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_reading_ease_follows_the_flesch_formula():
    pytest.importorskip("textstat")
    simple, complex_ = ReadingEaseScorer("simple"), ReadingEaseScorer("complex")
    # 5 words, 1 sentence, 1 + 3 + 3 + 1 + 3 = 11 syllables:
    # 206.835 - 1.015 * 5 - 84.6 * 11 / 5 = 15.64.
    text = "The committee considered the proposal."
    assert simple.reading_ease(text) == pytest.approx(15.64, abs=0.01)
    assert simple([text], ["p"]) == pytest.approx([0.1564], abs=1e-4)
    assert complex_([text], ["p"]) == pytest.approx([1 - 0.1564], abs=1e-4)
    # "The cat sat on the mat." is easier than 100 (116.1): clipped to 1.
    assert simple(["The cat sat on the mat.", ""], ["p"] * 2) == [1.0, 0.0]
    with pytest.raises(ValueError, match="'simple' or 'complex'"):
        ReadingEaseScorer("hard")
