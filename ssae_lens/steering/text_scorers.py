"""Behaviour scorers built on off-the-shelf text tools that no one here wrote or tuned.

They implement the :class:`~ssae_lens.steering.scorers.Scorer` protocol, run offline, and need
the ``scorers`` extra (``pip install 'ssae-lens[scorers]'``; versions pinned there):

- :class:`VaderSentimentScorer`: VADER's rule-based sentiment (``vaderSentiment``);
- :class:`LanguageScorer`: lingua's confidence that a text is in a target language
  (``lingua-language-detector``, models shipped in its wheel);
- :class:`SameLanguageScorer`: 1 if a continuation is detected in its prompt's language, a
  coherence-style check (the mean over texts is the fraction in the prompt's language);
- :class:`ReadingEaseScorer`: Flesch reading ease (``textstat``) for simple or complex text.

Empty continuations score 0 under every scorer here.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import Any

from ssae_lens.steering.scorers import _check_lengths

__all__ = [
    "DETECTED_LANGUAGES",
    "LanguageScorer",
    "ReadingEaseScorer",
    "SameLanguageScorer",
    "VaderSentimentScorer",
]

DETECTED_LANGUAGES = ("english", "french", "german", "spanish")
"""The languages lingua chooses among by default: English (what unsteered text is) and the
three target languages. A small set loads fewer models and decides faster; a confidence is
relative to the set."""


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"This scorer needs {package}: pip install 'ssae-lens[scorers]' (or {package})."
        ) from e


class VaderSentimentScorer:
    """Sentiment by VADER: its compound score ``c`` in ``[-1, 1]`` mapped to ``[0, 1]``.

    ``(1 + c) / 2`` for ``target="positive"``, ``(1 - c) / 2`` for ``"negative"``; a text
    VADER finds neutral scores 0.5.
    """

    def __init__(self, target: str = "positive"):
        if target not in ("positive", "negative"):
            raise ValueError(f"target must be 'positive' or 'negative', got {target!r}.")
        vader = _require("vaderSentiment.vaderSentiment", "vaderSentiment")
        self.target = target
        self._analyzer = vader.SentimentIntensityAnalyzer()

    def compound(self, text: str) -> float:
        """VADER's compound score of ``text``, in ``[-1, 1]``."""
        return float(self._analyzer.polarity_scores(text)["compound"])

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        _check_lengths(texts, prompts)
        sign = 1.0 if self.target == "positive" else -1.0
        return [(1 + sign * self.compound(t)) / 2 if t.strip() else 0.0 for t in texts]

    def __repr__(self) -> str:
        return f"VaderSentimentScorer(target={self.target!r})"


@functools.lru_cache(maxsize=8)
def _detector(languages: tuple[str, ...]) -> Any:
    """One lingua detector per language set, shared (its models load on first use)."""
    lingua = _require("lingua", "lingua-language-detector")
    return lingua.LanguageDetectorBuilder.from_languages(
        *(_language(lingua, name) for name in languages)
    ).build()


def _language(lingua: Any, name: str) -> Any:
    try:
        return getattr(lingua.Language, name.upper())
    except AttributeError:
        raise ValueError(
            f"Unknown language {name!r}; use an English name such as 'french' or 'german'."
        ) from None


def _language_set(target: str | None, languages: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.lower() for n in languages))
    if len(names) < 2:
        raise ValueError(f"Detection needs at least two languages to choose among, got {names}.")
    if target is not None and target.lower() not in names:
        raise ValueError(f"The target language {target!r} is not among languages={names}.")
    return names


class LanguageScorer:
    """lingua's confidence that a continuation is in ``language``, among ``languages``.

    The confidence values over ``languages`` sum to 1 for a text; the score is the target's.

    Args:
        language: the target language, e.g. ``"french"``.
        languages: the candidates (default :data:`DETECTED_LANGUAGES`); must include it.
    """

    def __init__(self, language: str, languages: Sequence[str] = DETECTED_LANGUAGES):
        self.languages = _language_set(language, languages)
        self.language = language.lower()
        self._detector = _detector(self.languages)
        self._target = _language(_require("lingua", "lingua-language-detector"), self.language)

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        _check_lengths(texts, prompts)
        return [
            float(self._detector.compute_language_confidence(t, self._target)) if t.strip() else 0.0
            for t in texts
        ]

    def __repr__(self) -> str:
        return f"LanguageScorer({self.language!r}, languages={self.languages})"


class SameLanguageScorer:
    """1 where a continuation is detected in its prompt's language, else 0.

    A coherence-style report: steering that makes text drift into another language (or into
    something no language fits) lowers its mean, the fraction of continuations in the
    prompt's language. The prompt's language is ``language`` when given (short prompts such
    as "I think" are poor evidence), else detected from the prompt.

    Args:
        language: the language every prompt is in, or ``None`` to detect it per prompt.
        languages: the candidates (default :data:`DETECTED_LANGUAGES`).
    """

    def __init__(self, language: str | None = None, languages: Sequence[str] = DETECTED_LANGUAGES):
        self.languages = _language_set(language, languages)
        self.language = None if language is None else language.lower()
        self._detector = _detector(self.languages)
        lingua = _require("lingua", "lingua-language-detector")
        self._fixed = None if self.language is None else _language(lingua, self.language)

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        _check_lengths(texts, prompts)
        scores = []
        for text, prompt in zip(texts, prompts, strict=True):
            wanted = self._fixed or self._detector.detect_language_of(prompt)
            found = self._detector.detect_language_of(text) if text.strip() else None
            scores.append(float(found is not None and found == wanted))
        return scores

    def __repr__(self) -> str:
        return f"SameLanguageScorer({self.language!r}, languages={self.languages})"


class ReadingEaseScorer:
    """Reading complexity by the Flesch reading ease ``F`` of ``textstat`` (English).

    ``F = 206.835 - 1.015 words/sentence - 84.6 syllables/word``: about 100 for very simple
    text, below 30 for academic prose. The score is ``clip(F / 100, 0, 1)`` for
    ``target="simple"`` and ``1 - clip(F / 100, 0, 1)`` for ``"complex"``.
    """

    def __init__(self, target: str = "simple"):
        if target not in ("simple", "complex"):
            raise ValueError(f"target must be 'simple' or 'complex', got {target!r}.")
        self.target = target
        self._textstat = _require("textstat", "textstat")

    def reading_ease(self, text: str) -> float:
        """The Flesch reading ease of ``text``."""
        return float(self._textstat.flesch_reading_ease(text))

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        _check_lengths(texts, prompts)
        scores = []
        for text in texts:
            if not text.strip():
                scores.append(0.0)
                continue
            simple = min(1.0, max(0.0, self.reading_ease(text) / 100))
            scores.append(simple if self.target == "simple" else 1.0 - simple)
        return scores

    def __repr__(self) -> str:
        return f"ReadingEaseScorer(target={self.target!r})"
