"""The concept-pair datasets that ship with ssae-lens, built from the files in ``ssae_lens/data``.

Word datasets (``language``, ``gender``, ``binary``, ``corr``) read hand-written word lists;
``categorical`` and ``sentences`` are generated on the fly from small vocabularies with a seed.
``ssae_lens/data/README.md`` documents what varies in each, its size and its labels. Load them
with :func:`ssae_lens.load_pairs`.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

from ssae_lens.data.pairs import ConceptPairs
from ssae_lens.data.registry import register_pairs

SENTENCE_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "tense": ("present", "past"),
    "voice": ("active", "passive"),
    "sentiment": ("negative", "positive"),
    "formality": ("informal", "formal"),
}
"""Sentence attributes and their ``(negative, positive)`` poles: a label of ``+1`` means the
pair goes from the first pole to the second, ``-1`` the reverse."""

CATEGORICAL_FACTORS: tuple[str, ...] = ("shape", "colour", "object")


def _data_text(name: str) -> str:
    return (files("ssae_lens.data") / name).read_text(encoding="utf-8")


def _read_csv(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(_data_text(name).splitlines()))


def _read_json(name: str) -> Any:
    return json.loads(_data_text(name))


def _metadata(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": DESCRIPTIONS[name], **extra}


def language_pairs() -> ConceptPairs:
    """English -> French single words; labels ``{"language": 1}``."""
    rows = _read_csv("translations_en_fr_de.csv")
    return ConceptPairs(
        [r["english"] for r in rows],
        [r["french"] for r in rows],
        [{"language": 1} for _ in rows],
        _metadata("language"),
    )


def gender_pairs() -> ConceptPairs:
    """Masculine -> feminine English words; labels ``{"gender": 1}``."""
    rows = _read_csv("gender_en.csv")
    return ConceptPairs(
        [r["masculine"] for r in rows],
        [r["feminine"] for r in rows],
        [{"gender": 1} for _ in rows],
        _metadata("gender"),
    )


def binary_pairs() -> ConceptPairs:
    """Masculine English words to French (language), to feminine English (gender), or both.

    Each word-list row gives three pairs, in this order: ``king -> roi``
    (``{"language": 1, "gender": 0}``), ``king -> queen`` (``{"language": 0, "gender": 1}``)
    and ``king -> reine`` (``{"language": 1, "gender": 1}``).
    """
    sources, targets, labels = [], [], []
    for row in _read_csv("gender_en_fr.csv"):
        for target, language, gender in (
            (row["french_masculine"], 1, 0),
            (row["english_feminine"], 0, 1),
            (row["french_feminine"], 1, 1),
        ):
            sources.append(row["english_masculine"])
            targets.append(target)
            labels.append({"language": language, "gender": gender})
    return ConceptPairs(sources, targets, labels, _metadata("binary"))


def corr_pairs() -> ConceptPairs:
    """Each English word to French (``{"french": 1, "german": 0}``) and to German (the reverse)."""
    sources, targets, labels = [], [], []
    for row in _read_csv("translations_en_fr_de.csv"):
        for target, french, german in ((row["french"], 1, 0), (row["german"], 0, 1)):
            sources.append(row["english"])
            targets.append(target)
            labels.append({"french": french, "german": german})
    return ConceptPairs(sources, targets, labels, _metadata("corr"))


def _split_index(index: int, pools: Sequence[int]) -> tuple[int, int]:
    """Which pool a flat index falls in, and its index inside that pool."""
    for which, size in enumerate(pools):
        if index < size:
            return which, index
        index -= size
    raise IndexError(index)


def categorical_pairs(n: int = 10_000, seed: int = 0) -> ConceptPairs:
    """Pairs of phrases ``"the <shape> <colour> <object>"`` that differ in 1, 2 or 3 factors.

    A third of the pairs (up to rounding) change exactly one factor, a third two, a third all
    three; within each group, pairs are drawn uniformly without replacement from every
    possible pair with that many changes (a changed factor always takes a different value),
    so no pair repeats. Labels hold ``(source_value, target_value)`` for all three factors:
    ``label_matrix()`` gives "factor changed" columns, ``label_matrix(encoding="onehot")``
    the one-hot differences.

    Args:
        n: number of pairs (at most 70,200: three times the 23,400 one-factor pairs).
        seed: seed of the sampler.
    """
    spec = _read_json("categorical_factors.json")
    vocab = [spec["factors"][f] for f in CATEGORICAL_FACTORS]
    sizes = [len(values) for values in vocab]
    n_phrases = math.prod(sizes)
    counts = [n // 3 + (k < n % 3) for k in range(3)]
    groups = [list(itertools.combinations(range(3), k)) for k in (1, 2, 3)]
    pools = [[n_phrases * math.prod(sizes[f] - 1 for f in subset) for subset in g] for g in groups]
    max_n = 3 * sum(pools[0])
    if not 1 <= n <= max_n:
        raise ValueError(f"n must be between 1 and {max_n:,} for categorical pairs, got {n}.")
    rng = random.Random(seed)
    changes: list[tuple[list[int], list[int]]] = []
    for count, subsets, subset_pools in zip(counts, groups, pools, strict=True):
        for flat in rng.sample(range(sum(subset_pools)), count):
            which, index = _split_index(flat, subset_pools)
            offsets, phrase = divmod(index, n_phrases)
            source = []
            for size in sizes:
                phrase, value = divmod(phrase, size)
                source.append(value)
            target = list(source)
            for f in subsets[which]:
                offsets, offset = divmod(offsets, sizes[f] - 1)
                target[f] = (source[f] + 1 + offset) % sizes[f]
            changes.append((source, target))
    rng.shuffle(changes)

    def phrase_of(values: list[int]) -> str:
        words = {f: vocab[i][values[i]] for i, f in enumerate(CATEGORICAL_FACTORS)}
        return spec["template"].format(**words)

    labels = [
        {f: (vocab[i][s[i]], vocab[i][t[i]]) for i, f in enumerate(CATEGORICAL_FACTORS)}
        for s, t in changes
    ]
    return ConceptPairs(
        [phrase_of(s) for s, _ in changes],
        [phrase_of(t) for _, t in changes],
        labels,
        _metadata(
            "categorical",
            options={"n": n, "seed": seed},
            template=spec["template"],
            factors=spec["factors"],
        ),
    )


def _sentence_lexicon() -> dict[str, Any]:
    lexicon = _read_json("sentence_lexicon.json")
    registers = ("informal", "formal")
    opener_lengths = {len(lexicon["openers"][r]) for r in registers}
    word_lengths = {
        len(lexicon["evaluations"][r][m]) for r in registers for m in ("negative", "positive")
    }
    if len(opener_lengths) != 1 or len(word_lengths) != 1:
        raise ValueError(
            "sentence_lexicon.json: the opener lists, and the evaluation word lists, must have "
            "equal lengths: slot i of a list is swapped for slot i of its counterpart."
        )
    return lexicon


def _realise(
    lexicon: dict[str, Any],
    event: dict[str, str],
    state: dict[str, int],
    opener: int,
    adjective: int,
) -> str:
    """One sentence: ``<opener> <clause>, and <comment>.``; ``state`` holds 0/1 poles."""
    past = state["tense"] == 1
    be = "was" if past else "is"
    if state["voice"] == 0:
        clause = f"{event['agent']} {event['past' if past else 'present']} {event['patient']}"
    else:
        clause = f"{event['patient']} {be} {event['participle']} by {event['agent']}"
    register = "formal" if state["formality"] == 1 else "informal"
    mood = "positive" if state["sentiment"] == 1 else "negative"
    word = lexicon["evaluations"][register][mood][adjective]
    if register == "formal":
        comment = f"the result {be} {word}"
    else:
        comment = f"it was {word}" if past else f"it's {word}"
    return f"{lexicon['openers'][register][opener]} {clause}, and {comment}."


def _check_attributes(attributes: str | Sequence[str] | None) -> list[str]:
    if attributes is None:
        return list(SENTENCE_ATTRIBUTES)
    names = [attributes] if isinstance(attributes, str) else list(attributes)
    unknown = [a for a in names if a not in SENTENCE_ATTRIBUTES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"attributes must be distinct names from {list(SENTENCE_ATTRIBUTES)}, got {names}."
        )
    return names


def sentence_pairs(
    n: int = 1_000,
    seed: int = 0,
    attributes: str | Sequence[str] | None = None,
    mix: bool = False,
    reverse_fraction: float = 0.0,
) -> ConceptPairs:
    """Templated sentence pairs that change one attribute (two with ``mix=True``).

    Sentences read ``"<opener> <clause>, and <comment>."``, e.g. "Honestly, the chef cooks
    the soup, and it's awful." Tense (present/past) and voice (active/passive) shape the
    clause, formality picks the opener and comment register, sentiment the comment word.
    Everything else (event, opener and word slots, unchanged attributes) is shared by the
    two sides. Labels give all four attributes: ``+1`` for a change from the first pole of
    :data:`SENTENCE_ATTRIBUTES` to the second, ``-1`` for a reversed pair, ``0`` unchanged.
    Pairs are drawn uniformly without replacement, so none repeats.

    Args:
        n: number of pairs.
        seed: seed of the sampler.
        attributes: attributes that may change (default: all four); the others still vary
            across pairs but never within one.
        mix: change two attributes per pair instead of one.
        reverse_fraction: probability that a pair is swapped (target -> source), giving
            ``-1`` labels.
    """
    names = _check_attributes(attributes)
    n_changed = 2 if mix else 1
    if n_changed > len(names):
        raise ValueError(f"mix=True changes two attributes per pair but got only {names}.")
    if not 0.0 <= reverse_fraction <= 1.0:
        raise ValueError(f"reverse_fraction must be in [0, 1], got {reverse_fraction}.")
    lexicon = _sentence_lexicon()
    events = lexicon["events"]
    n_openers = len(lexicon["openers"]["informal"])
    n_words = len(lexicon["evaluations"]["informal"]["negative"])
    subsets = list(itertools.combinations(names, n_changed))
    n_fixed = 2 ** (len(SENTENCE_ATTRIBUTES) - n_changed)
    total = len(subsets) * len(events) * n_openers * n_words * n_fixed
    if not 1 <= n <= total:
        raise ValueError(f"n must be between 1 and {total:,} for these options, got {n}.")
    rng = random.Random(seed)
    sources, targets, labels = [], [], []
    for flat in rng.sample(range(total), n):
        flat, which = divmod(flat, len(subsets))
        flat, event = divmod(flat, len(events))
        flat, opener = divmod(flat, n_openers)
        fixed_bits, word = divmod(flat, n_words)
        changed = subsets[which]
        state = {}
        for attribute in SENTENCE_ATTRIBUTES:
            if attribute in changed:
                state[attribute] = 0
            else:
                fixed_bits, state[attribute] = divmod(fixed_bits, 2)
        source = _realise(lexicon, events[event], state, opener, word)
        target = _realise(
            lexicon, events[event], {**state, **dict.fromkeys(changed, 1)}, opener, word
        )
        sign = -1 if rng.random() < reverse_fraction else 1
        if sign == -1:
            source, target = target, source
        sources.append(source)
        targets.append(target)
        labels.append({a: sign if a in changed else 0 for a in SENTENCE_ATTRIBUTES})
    options = {
        "n": n,
        "seed": seed,
        "attributes": names,
        "mix": mix,
        "reverse_fraction": reverse_fraction,
    }
    return ConceptPairs(
        sources,
        targets,
        labels,
        _metadata("sentences", options=options, poles=SENTENCE_ATTRIBUTES),
    )


def attribute_texts(attribute: str, n: int = 200, seed: int = 0) -> tuple[list[str], list[str]]:
    """Sentences at each pole of one attribute: ``(negative_texts, positive_texts)``.

    The poles are those of :data:`SENTENCE_ATTRIBUTES` (e.g. ``sentiment``: negative,
    positive; ``tense``: present, past). The lists are aligned: text ``i`` of each differs
    only in ``attribute``, which suits contrastive (CAA) prompts and probe training data.
    """
    if attribute not in SENTENCE_ATTRIBUTES:
        raise ValueError(
            f"Unknown attribute {attribute!r}; valid attributes: {list(SENTENCE_ATTRIBUTES)}."
        )
    pairs = sentence_pairs(n=n, seed=seed, attributes=[attribute])
    return list(pairs.sources), list(pairs.targets)


_BUILTINS: tuple[tuple[str, str, Callable[..., ConceptPairs]], ...] = (
    ("language", "English -> French single words; concept: language.", language_pairs),
    ("gender", "Masculine -> feminine English words; concept: gender.", gender_pairs),
    (
        "binary",
        "Masculine English words -> French, feminine English or feminine French; "
        "concepts: language, gender.",
        binary_pairs,
    ),
    ("corr", "English words -> French and -> German; concepts: french, german.", corr_pairs),
    (
        "categorical",
        "'the <shape> <colour> <object>' phrases with 1-3 factors resampled (seeded); "
        "concepts: shape, colour, object.",
        categorical_pairs,
    ),
    (
        "sentences",
        "Templated sentences changing one attribute (seeded); concepts: tense, voice, "
        "sentiment, formality.",
        sentence_pairs,
    ),
)
DESCRIPTIONS: dict[str, str] = {name: description for name, description, _ in _BUILTINS}

for _name, _description, _build in _BUILTINS:
    register_pairs(_name, _build, _description)
