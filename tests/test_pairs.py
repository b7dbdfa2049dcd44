"""Tests for ConceptPairs (loaders, validation, selection, labels) and the built-in datasets."""

import csv
import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from importlib.resources import files

import datasets
import pytest
import torch

from ssae_lens.data import ConceptPairs, DuplicatePairsWarning, list_pairs, load_pairs
from ssae_lens.data.builtin import SENTENCE_ATTRIBUTES, attribute_texts, sentence_pairs

RECORDS = [
    {"source": "king", "target": "reine", "labels": {"language": 1, "gender": 1}},
    {"source": "the red box", "target": "the blue box", "labels": {"colour": ["red", "blue"]}},
    {"source": "cœur", "target": "heart", "labels": {"language": -1}},
]


def _lexicon() -> dict:
    return json.loads((files("ssae_lens") / "data" / "sentence_lexicon.json").read_text("utf-8"))


def _small() -> ConceptPairs:
    return ConceptPairs.from_records(RECORDS, metadata={"name": "small"})


# --- loaders -----------------------------------------------------------------------------------


def test_records_jsonl_round_trip(tmp_path):
    pairs = _small()
    assert pairs.labels[1]["colour"] == ("red", "blue")  # lists become tuples
    path = pairs.to_jsonl(tmp_path / "sub" / "pairs.jsonl")
    assert os.listdir(path.parent) == ["pairs.jsonl"]  # no temp file left behind
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[2]) == RECORDS[2]  # plain JSON, UTF-8 kept
    back = ConceptPairs.from_jsonl(path)
    assert (back.sources, back.targets, back.labels) == (pairs.sources, pairs.targets, pairs.labels)
    assert back.fingerprint() == pairs.fingerprint()
    assert back.metadata["name"] == "pairs"


def test_jsonl_custom_keys_and_label_columns(tmp_path):
    path = tmp_path / "words.jsonl"
    rows = [{"en": "dog", "fr": "chien", "lang": 1}, {"en": "cat", "fr": "chat", "lang": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    pairs = ConceptPairs.from_jsonl(path, source_key="en", target_key="fr", label_keys=["lang"])
    assert list(pairs) == [("dog", "chien"), ("cat", "chat")]
    assert pairs.labels == [{"lang": 1}, {"lang": 1}]


def test_csv_loader(tmp_path):
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["src", "tgt", "tense", "note"])
        writer.writerow(["I walk, slowly", "I walked, slowly", "1", "x"])
        writer.writerow(["élan", "verve", "", "y"])
        writer.writerow(["he goes", "he went", "0.5", "z"])
    pairs = ConceptPairs.from_csv(path, source_key="src", target_key="tgt", label_keys=["tense"])
    assert list(pairs) == [
        ("I walk, slowly", "I walked, slowly"),
        ("élan", "verve"),
        ("he goes", "he went"),
    ]
    assert pairs.labels == [{"tense": 1}, {}, {"tense": 0.5}]
    matrix, names = pairs.label_matrix()
    assert names == ["tense"]
    assert matrix[:, 0].tolist() == [1.0, 0.0, 0.5]


def test_csv_errors_name_the_problem(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("english,french,lang\ndog,chien,yes\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"'source'.*available columns: \['english', 'french', 'lang'\]"
    ):
        ConceptPairs.from_csv(path)
    with pytest.raises(ValueError, match=r"line 2 of .*'lang' holds 'yes'"):
        ConceptPairs.from_csv(path, "english", "french", label_keys=["lang"])
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        ConceptPairs.from_csv(tmp_path / "empty.csv")


def test_datasets_round_trip():
    pairs = _small()
    dataset = datasets.Dataset.from_list([json.loads(line) for line in _jsonl_lines(pairs)])
    back = ConceptPairs.from_dataset(dataset)
    # datasets stores the label dicts as a struct with every key; absent keys come back None
    assert back.labels == pairs.labels
    assert back.fingerprint() == pairs.fingerprint()
    renamed = dataset.rename_columns({"source": "a", "target": "b"})
    with pytest.raises(ValueError, match=r"'source', 'target'.*\['a', 'b', 'labels'\]"):
        ConceptPairs.from_dataset(renamed)
    with pytest.raises(TypeError, match=r"DatasetDict.*dataset\['train'\]"):
        ConceptPairs.from_dataset(datasets.DatasetDict({"train": dataset}))


def _jsonl_lines(pairs: ConceptPairs) -> list[str]:
    return [
        json.dumps(
            {
                "source": s,
                "target": t,
                "labels": {k: list(v) if isinstance(v, tuple) else v for k, v in lab.items()},
            }
        )
        for (s, t), lab in zip(pairs, pairs.labels, strict=True)
    ]


# --- validation --------------------------------------------------------------------------------


def test_validation_errors_name_the_row(tmp_path):
    with pytest.raises(ValueError, match=r"pair 1: target is empty"):
        ConceptPairs(["a", "b"], ["c", "  "])
    with pytest.raises(ValueError, match=r"sources has 2 texts but targets has 1"):
        ConceptPairs(["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"pair 0: source is int \(5\)"):
        ConceptPairs([5], ["c"])
    with pytest.raises(TypeError, match="list of strings"):
        ConceptPairs("ab", "cd")
    with pytest.raises(ValueError, match=r"labels has 1 entries but there are 2 pairs"):
        ConceptPairs(["a", "b"], ["c", "d"], [{"x": 1}])
    with pytest.raises(ValueError, match=r"pair 1: concept 'x' is categorical here but numeric"):
        ConceptPairs(["a", "b"], ["c", "d"], [{"x": 1}, {"x": ("p", "q")}])
    with pytest.raises(TypeError, match=r"label 'x' is 'high'"):
        ConceptPairs(["a"], ["c"], [{"x": "high"}])
    with pytest.raises(
        ValueError, match=r"record 1 has no 'target' column; available columns: \['source', 'tgt'\]"
    ):
        ConceptPairs.from_records([{"source": "a", "target": "b"}, {"source": "a", "tgt": "b"}])
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"source": "a", "target": "b"}\n{"source": "", "target": "b"}\n', encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"line 2 of .*bad.jsonl: source is empty"):
        ConceptPairs.from_jsonl(path)
    path.write_text('{"source": "a", "target": "b"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2 of .*bad.jsonl is not valid JSON"):
        ConceptPairs.from_jsonl(path)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="No pairs found"):
        ConceptPairs.from_jsonl(path)


def test_duplicates_warn_and_deduplicate():
    with pytest.warns(DuplicatePairsWarning, match=r"2 of 5 pairs repeat"):
        pairs = ConceptPairs(
            ["a", "b", "a", "a", "b"], ["x", "y", "x", "x", "z"], [{"c": i} for i in range(5)]
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unique = pairs.deduplicate()
    assert list(unique) == [("a", "x"), ("b", "y"), ("b", "z")]
    assert unique.labels == [{"c": 0}, {"c": 1}, {"c": 4}]  # first occurrence kept
    assert unique.n_duplicates() == 0


# --- selection ---------------------------------------------------------------------------------


def test_indexing_iteration_and_subsets():
    pairs = _small()
    assert len(pairs) == 3
    assert pairs[0] == ("king", "reine")
    assert pairs[-1] == ("cœur", "heart")
    assert list(pairs) == list(zip(pairs.sources, pairs.targets, strict=True))
    tail = pairs[1:]
    assert isinstance(tail, ConceptPairs) and tail.sources == ["the red box", "cœur"]
    assert tail.labels == pairs.labels[1:] and tail.metadata == pairs.metadata
    picked = pairs[torch.tensor([2, 0])]
    assert picked.sources == ["cœur", "king"]
    with pytest.raises(IndexError, match="out of range for 3 pairs"):
        pairs.subset([3])
    assert pairs.concepts == ["language", "gender", "colour"]


def test_filter():
    pairs = _small()
    assert pairs.filter(changed="language").sources == ["king", "cœur"]
    assert pairs.filter(changed=["language", "gender"]).sources == ["king"]
    assert pairs.filter(lambda s, t, lab: " " in s).sources == ["the red box"]
    with pytest.raises(ValueError, match="did you mean 'gender'"):
        pairs.filter(changed="gendre")


def test_split_is_seeded_disjoint_and_complete():
    n = 53
    pairs = ConceptPairs(
        [f"s{i}" for i in range(n)], [f"t{i}" for i in range(n)], [{"c": i} for i in range(n)]
    )
    train, test = pairs.split(test_fraction=0.25, seed=3)
    assert len(test) == round(n * 0.25) and len(train) == n - len(test)
    assert set(train.sources).isdisjoint(test.sources)
    assert sorted(train.sources + test.sources) == sorted(pairs.sources)
    assert all(lab["c"] == int(s[1:]) for s, lab in zip(test.sources, test.labels, strict=True))
    again_train, again_test = pairs.split(test_fraction=0.25, seed=3)
    assert again_test.sources == test.sources and again_train.sources == train.sources
    assert pairs.split(test_fraction=0.25, seed=4)[1].sources != test.sources
    with pytest.raises(ValueError, match="leaves the test set empty"):
        pairs[:3].split(test_fraction=0.1)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        pairs.split(test_fraction=1.0)


def test_concat():
    pairs = _small()
    both = ConceptPairs.concat([pairs[:1], pairs[1:]])
    assert both.fingerprint() == pairs.fingerprint()
    with pytest.raises(ValueError, match="labelled and unlabelled"):
        ConceptPairs.concat([pairs, ConceptPairs(["a"], ["b"])])


# --- labels and fingerprints -------------------------------------------------------------------


def test_label_matrix_by_hand():
    pairs = ConceptPairs(
        ["a", "b", "c"],
        ["d", "e", "f"],
        [
            {"lang": 1, "shape": ("round", "square")},
            {"lang": -1, "shape": ("square", "square")},
            {"shape": ("oval", "round")},
        ],
    )
    change, names = pairs.label_matrix()
    assert names == ["lang", "shape"]
    assert change.dtype == torch.float32
    assert change.tolist() == [[1, 1], [-1, 0], [0, 1]]
    onehot, names = pairs.label_matrix(encoding="onehot")
    assert names == ["lang", "shape=oval", "shape=round", "shape=square"]
    assert onehot.tolist() == [[1, 0, -1, 1], [-1, 0, 0, 0], [0, -1, 1, 0]]
    only, names = pairs.label_matrix(concepts="shape")
    assert names == ["shape"] and only.shape == (3, 1)
    with pytest.raises(ValueError, match="needs labels but these pairs have none"):
        ConceptPairs(["a"], ["b"]).label_matrix()


def test_fingerprint_stable_and_sensitive():
    pairs = _small()
    fp = pairs.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    reordered = [{k: lab[k] for k in reversed(list(lab))} for lab in pairs.labels]
    same = ConceptPairs(list(pairs.sources), list(pairs.targets), reordered, {"other": "metadata"})
    assert same.fingerprint() == fp  # label key order and metadata do not matter
    as_float = ConceptPairs(["a"], ["b"], [{"x": 1.0}])
    assert as_float.fingerprint() == ConceptPairs(["a"], ["b"], [{"x": 1}]).fingerprint()
    changed_text = ConceptPairs(["king", "the red box", "coeur"], pairs.targets, pairs.labels)
    changed_label = ConceptPairs(
        pairs.sources, pairs.targets, [{"language": 1, "gender": 0}, *pairs.labels[1:]]
    )
    swapped = pairs[[1, 0, 2]]
    unlabelled = ConceptPairs(pairs.sources, pairs.targets)
    others = {p.fingerprint() for p in (changed_text, changed_label, swapped, unlabelled)}
    assert fp not in others and len(others) == 4
    # same value in a fresh interpreter with another hash seed
    code = "from ssae_lens import data as p; print(p.load_pairs('binary').fingerprint())"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == load_pairs("binary").fingerprint()


# --- built-in datasets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "minimum", "concepts"),
    [
        ("language", 100, ["language"]),
        ("gender", 100, ["gender"]),
        ("binary", 250, ["language", "gender"]),
        ("corr", 200, ["french", "german"]),
        ("categorical", 10_000, ["shape", "colour", "object"]),
        ("sentences", 300, list(SENTENCE_ATTRIBUTES)),
    ],
)
def test_builtin_sizes_and_cleanliness(name, minimum, concepts):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicatePairsWarning)
        pairs = load_pairs(name)
    assert len(pairs) >= minimum
    assert pairs.concepts == concepts
    assert pairs.metadata["name"] == name and pairs.metadata["description"] == list_pairs()[name]
    assert all(s != t for s, t in pairs)
    matrix, _ = pairs.label_matrix()
    assert (matrix != 0).any(dim=1).all()  # every pair changes some labelled concept


def test_word_datasets_structure():
    binary = load_pairs("binary")
    by_source: dict[str, list] = {}
    for (source, target), lab in zip(binary, binary.labels, strict=True):
        by_source.setdefault(source, []).append((lab["language"], lab["gender"], target))
    assert all(sorted(x[:2] for x in v) == [(0, 1), (1, 0), (1, 1)] for v in by_source.values())
    gender = set(load_pairs("gender"))
    gender_only = binary.filter(lambda s, t, lab: lab["language"] == 0)
    assert set(gender_only) <= gender  # the English feminine forms agree across files
    corr = load_pairs("corr")
    language = load_pairs("language")
    assert set(corr.filter(changed="french")) == set(language)
    assert Counter(corr.sources) == Counter({s: 2 for s in language.sources})


def _parse_phrase(text: str, factors: dict) -> dict:
    article, *words = text.split()
    assert article == "the" and len(words) == 3
    parsed = dict(zip(("shape", "colour", "object"), words, strict=True))
    assert all(parsed[f] in factors[f] for f in parsed)
    return parsed


def test_categorical_labels_match_phrases():
    pairs = load_pairs("categorical", n=3_001, seed=5)
    factors = pairs.metadata["factors"]
    assert [len(factors[f]) for f in ("shape", "colour", "object")] == [9, 10, 10]
    n_changed = Counter()
    for (source, target), lab in zip(pairs, pairs.labels, strict=True):
        s, t = _parse_phrase(source, factors), _parse_phrase(target, factors)
        assert {f: (s[f], t[f]) for f in s} == lab
        n_changed[sum(s[f] != t[f] for f in s)] += 1
    assert n_changed == Counter({1: 1001, 2: 1000, 3: 1000})
    change, _ = pairs.label_matrix()
    onehot, names = pairs.label_matrix(encoding="onehot")
    assert len(names) == 29
    # one-hot differences: each changed factor gives one +1 and one -1, an unchanged one none
    per_factor = torch.stack(
        [
            onehot[:, [n.startswith(f + "=") for n in names]].abs().sum(1)
            for f in ("shape", "colour", "object")
        ],
        1,
    )
    assert torch.equal(per_factor, 2 * change)
    assert load_pairs("categorical", n=3_001, seed=5).fingerprint() == pairs.fingerprint()
    assert load_pairs("categorical", n=3_001, seed=6).fingerprint() != pairs.fingerprint()
    with pytest.raises(ValueError, match="between 1 and 70,200"):
        load_pairs("categorical", n=80_000)


def _parse_sentence(text: str, lexicon: dict) -> tuple[dict, int]:
    words = {r: lexicon["evaluations"][r] for r in ("informal", "formal")}
    last = text.rstrip(".").split()[-1]
    positive = {w for r in words.values() for w in r["positive"]}
    assert last in positive | {w for r in words.values() for w in r["negative"]}
    events = [
        i for i, e in enumerate(lexicon["events"]) if e["agent"] in text and e["patient"] in text
    ]
    assert len(events) == 1
    attributes = {
        "tense": int(" was " in text),
        "voice": int(" by the " in text),
        "sentiment": int(last in positive),
        "formality": int(any(text.startswith(o) for o in lexicon["openers"]["formal"])),
    }
    return attributes, events[0]


@pytest.mark.parametrize("mix", [False, True])
def test_sentence_labels_match_texts(mix):
    lexicon = _lexicon()
    pairs = sentence_pairs(n=600, seed=2, mix=mix, reverse_fraction=0.3)
    signs = Counter()
    for (source, target), lab in zip(pairs, pairs.labels, strict=True):
        (s, s_event), (t, t_event) = (
            _parse_sentence(source, lexicon),
            _parse_sentence(target, lexicon),
        )
        assert s_event == t_event
        assert {a: t[a] - s[a] for a in SENTENCE_ATTRIBUTES} == lab
        assert sum(v != 0 for v in lab.values()) == (2 if mix else 1)
        signs[max(lab.values(), key=abs)] += 1
    assert 100 < signs[-1] < 260  # about 30% of 600 reversed
    assert (
        sentence_pairs(n=600, seed=2, mix=mix, reverse_fraction=0.3).fingerprint()
        == pairs.fingerprint()
    )


def test_attribute_texts_are_aligned_poles():
    lexicon = _lexicon()
    for attribute in SENTENCE_ATTRIBUTES:
        negative, positive = attribute_texts(attribute, n=40, seed=1)
        assert len(negative) == len(positive) == 40
        for neg, pos in zip(negative, positive, strict=True):
            (a, _), (b, _) = _parse_sentence(neg, lexicon), _parse_sentence(pos, lexicon)
            assert (a[attribute], b[attribute]) == (0, 1)
            assert all(a[x] == b[x] for x in SENTENCE_ATTRIBUTES if x != attribute)
    with pytest.raises(ValueError, match="valid attributes"):
        attribute_texts("politeness")


def test_load_pairs_errors_list_valid_names():
    assert list(list_pairs()) == [
        "language",
        "gender",
        "binary",
        "corr",
        "categorical",
        "sentences",
    ]
    with pytest.raises(
        ValueError,
        match=r"did you mean 'gender'\? valid names: language, gender, binary, corr, categorical, "
        r"sentences\.",
    ):
        load_pairs("gendre")
    with pytest.raises(
        TypeError,
        match=r"load_pairs\('language'\) got unknown option\(s\) \['n'\]; it takes no options",
    ):
        load_pairs("language", n=5)
    with pytest.raises(ValueError, match="mix=True changes two attributes"):
        load_pairs("sentences", attributes=["tense"], mix=True)
