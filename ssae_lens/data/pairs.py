"""Paired texts that differ in a few concepts: the data a Sparse Shift Autoencoder learns from.

A :class:`ConceptPairs` holds ``n`` pairs ``(source, target)`` of texts and, optionally, one
label dict per pair saying which concepts the pair changes.

Labels
------
``labels[i]`` maps a concept name to how pair ``i`` changes it. A value is either

* a number: a signed change indicator. ``1`` means the concept changed in its natural
  direction (English -> French, present -> past), ``-1`` the opposite direction, ``0`` no
  change; graded values are allowed. Example: ``{"language": 1, "gender": 0}``.
* a ``(source_value, target_value)`` pair of strings: a categorical factor, changed when the
  two differ. Example: ``{"shape": ("round", "square"), "colour": ("red", "red")}``.

A concept missing from a pair's dict is unchanged. A concept must be numeric in every pair or
categorical in every pair. :meth:`ConceptPairs.label_matrix` turns labels into one numeric
column per concept (or per categorical value) for metrics.

Named datasets (the built-ins and any registered by users) are listed by
:func:`~ssae_lens.data.registry.list_pairs` and loaded by
:func:`~ssae_lens.data.registry.load_pairs`.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import operator
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ssae_lens._core.io import write_text_atomic

LabelValue = int | float | tuple[str, str]
PairLabels = dict[str, LabelValue]
Encoding = Literal["change", "onehot"]


class PairsError(ValueError):
    """Pairs that cannot be built or loaded; the message names the pair, line or column."""


class PairsTypeError(PairsError, TypeError):
    """A :class:`PairsError` about a value of the wrong type (also a ``TypeError``)."""


class MissingColumnsError(PairsError):
    """A row, file or dataset lacks the columns named for the source, target or labels."""

    def __init__(self, missing: Sequence[str], available: Iterable[str], where: str):
        self.missing, self.available, self.where = list(missing), list(available), where
        names = ", ".join(repr(m) for m in self.missing)
        plural = "s" if len(self.missing) > 1 else ""
        super().__init__(
            f"{where} has no {names} column{plural}; available columns: {self.available}. Pass "
            "source_key=, target_key= or label_keys= naming the right ones."
        )


class DuplicatePairsWarning(UserWarning):
    """Some ``(source, target)`` pairs occur more than once (see ``ConceptPairs.deduplicate``)."""


class IdenticalPairsWarning(UserWarning):
    """Some pairs have the same source and target text: their shift is zero."""


def split_indices(n: int, test_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded random split of ``range(n)`` into sorted ``(train, test)`` indices;
    ``round(n * test_fraction)`` go to test (pairs, or synthetic shifts)."""
    if not 0 < test_fraction < 1:
        raise PairsError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}.")
    n_test = round(n * test_fraction)
    if n_test in (0, n):
        empty = "test" if n_test == 0 else "train"
        raise PairsError(
            f"Splitting {n} pairs with test_fraction={test_fraction} leaves the {empty} set "
            "empty; use more pairs or a less extreme fraction."
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_test:]), sorted(order[:n_test])


def _pair_place(i: int) -> str:
    return f"pair {i}"


def _check_text(text: object, side: str, place: str) -> str:
    if text is None:
        raise PairsError(f"{place}: {side} is missing; every pair needs a source and a target.")
    if not isinstance(text, str):
        raise PairsTypeError(
            f"{place}: {side} is {type(text).__name__} ({text!r}), expected a string; "
            "convert it with str() or fix the data."
        )
    if not text.strip():
        raise PairsError(
            f"{place}: {side} is empty ({text!r}); every pair needs non-empty text on both "
            "sides: fill it in or drop that row."
        )
    return text


def _check_texts(
    sources: Iterable[str], targets: Iterable[str], place: Callable[[int], str]
) -> tuple[list[str], list[str]]:
    for side, texts in (("sources", sources), ("targets", targets)):
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
            raise PairsTypeError(f"{side} must be a list of strings, got {type(texts).__name__}.")
    sources, targets = list(sources), list(targets)
    if len(sources) != len(targets):
        raise PairsError(
            f"sources has {len(sources)} texts but targets has {len(targets)}; they must pair "
            "up one to one."
        )
    for i, (source, target) in enumerate(zip(sources, targets, strict=True)):
        _check_text(source, "source", place(i))
        _check_text(target, "target", place(i))
    return sources, targets


def _check_value(value: object, where: str) -> LabelValue:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Real):
        if not math.isfinite(value):
            raise PairsError(f"{where} is {value}; label values must be finite.")
        return value if isinstance(value, int) else float(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, str) and v for v in value)
    ):
        return (value[0], value[1])
    raise PairsTypeError(
        f"{where} is {value!r}; a label must be a number (signed change, e.g. 1, 0, -1) or a "
        "(source_value, target_value) pair of non-empty strings."
    )


def _check_labels(
    labels: Iterable[Mapping[str, Any]] | None, n: int, place: Callable[[int], str]
) -> list[PairLabels] | None:
    if labels is None:
        return None
    if isinstance(labels, Mapping) or not isinstance(labels, Iterable):
        raise PairsTypeError(
            f"labels must be a list with one dict per pair, got {type(labels).__name__}."
        )
    labels = list(labels)
    if len(labels) != n:
        raise PairsError(
            f"labels has {len(labels)} entries but there are {n} pairs; give one dict per pair "
            "(an empty dict for a pair that changes no labelled concept)."
        )
    kinds: dict[str, str] = {}
    checked = []
    for i, pair_labels in enumerate(labels):
        if not isinstance(pair_labels, Mapping):
            raise PairsTypeError(
                f"{place(i)}: labels must be a dict {{concept: value}}, "
                f"got {type(pair_labels).__name__}."
            )
        row: PairLabels = {}
        for concept, value in pair_labels.items():
            if not isinstance(concept, str) or not concept:
                raise PairsTypeError(
                    f"{place(i)}: concept names must be non-empty strings, got {concept!r}."
                )
            if value is None:
                continue
            value = _check_value(value, f"{place(i)}: label {concept!r}")
            kind = "categorical" if isinstance(value, tuple) else "numeric"
            if kinds.setdefault(concept, kind) != kind:
                raise PairsError(
                    f"{place(i)}: concept {concept!r} is {kind} here but {kinds[concept]} in "
                    "earlier pairs; use one kind of value per concept."
                )
            row[concept] = value
        checked.append(row)
    return checked


def _changed(value: LabelValue | None) -> bool:
    if value is None:
        return False
    if isinstance(value, tuple):
        return value[0] != value[1]
    return value != 0


@dataclass(repr=False)
class ConceptPairs:
    """``n`` pairs of texts ``(sources[i], targets[i])`` with optional concept labels.

    Args:
        sources: the ``n`` texts each shift starts from.
        targets: the ``n`` texts each shift goes to.
        labels: ``None`` or one dict ``{concept: value}`` per pair (see the module docstring:
            a number is a signed change, a ``(source_value, target_value)`` tuple a
            categorical factor).
        metadata: free-form information (``name``, ``description``, generator options).

    Raises ``TypeError``/``ValueError`` naming the pair for a non-string or empty text,
    mismatched lengths or malformed labels, and warns (:class:`DuplicatePairsWarning`) when a
    ``(source, target)`` pair repeats. Indexing with an int gives ``(source, target)``; with a
    slice, a sequence of ints or a tensor of indices it gives a new ``ConceptPairs``.
    """

    sources: list[str]
    targets: list[str]
    labels: list[PairLabels] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sources, self.targets = _check_texts(self.sources, self.targets, _pair_place)
        if not self.sources:
            raise PairsError("ConceptPairs needs at least one pair; got empty sources and targets.")
        self.labels = _check_labels(self.labels, len(self.sources), _pair_place)
        if self.metadata is None:
            self.metadata = {}
        elif not isinstance(self.metadata, Mapping):
            raise PairsTypeError(f"metadata must be a dict, got {type(self.metadata).__name__}.")
        else:
            self.metadata = dict(self.metadata)
        n_duplicates = self.n_duplicates()
        if n_duplicates:
            warnings.warn(
                f"{n_duplicates} of {len(self)} pairs repeat an earlier (source, target) pair; "
                "call .deduplicate() to drop them.",
                DuplicatePairsWarning,
                stacklevel=3,
            )
        identical = [i for i, (s, t) in enumerate(self) if s == t]
        if identical:
            warnings.warn(
                f"{len(identical)} of {len(self)} pairs have the same source and target text "
                f"(first: pair {identical[0]}, {self.sources[identical[0]]!r}), so their shift is "
                "zero and they teach an SSAE nothing; drop them or fix the target.",
                IdenticalPairsWarning,
                stacklevel=3,
            )

    @classmethod
    def _trusted(
        cls,
        sources: list[str],
        targets: list[str],
        labels: list[PairLabels] | None,
        metadata: dict[str, Any],
    ) -> ConceptPairs:
        """Build from parts already validated (subsets of a checked instance): no re-check."""
        pairs = object.__new__(cls)
        pairs.sources, pairs.targets, pairs.labels = sources, targets, labels
        pairs.metadata = dict(metadata)
        return pairs

    # --- container protocol -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return zip(self.sources, self.targets, strict=True)

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Any:
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        if isinstance(index, Iterable) and not (isinstance(index, Tensor) and index.dim() == 0):
            return self.subset(index)
        i = operator.index(index)
        return self.sources[i], self.targets[i]

    def __repr__(self) -> str:
        name = self.metadata.get("name")
        named = f", name={name!r}" if name else ""
        return f"ConceptPairs(n={len(self)}, concepts={self.concepts}{named})"

    # --- concepts and labels ----------------------------------------------------------------

    @property
    def concepts(self) -> list[str]:
        """Names of the labelled concepts, in order of first appearance (empty if unlabelled)."""
        seen: dict[str, None] = {}
        for pair_labels in self.labels or ():
            for concept in pair_labels:
                seen.setdefault(concept, None)
        return list(seen)

    def _require_labels(self, what: str) -> list[PairLabels]:
        if self.labels is None:
            raise PairsError(
                f"{what} needs labels but these pairs have none; build them with labels=[...] "
                "or load them with label_keys=[...]."
            )
        return self.labels

    def _resolve_concepts(self, concepts: str | Sequence[str] | None) -> list[str]:
        known = self.concepts
        if concepts is None:
            if not known:
                raise PairsError("These pairs have labels, but no pair names a concept.")
            return known
        names = [concepts] if isinstance(concepts, str) else list(concepts)
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise PairsError(f"Unknown concept {name!r}; {hint}labelled concepts: {known}.")
        return names

    def label_matrix(
        self, concepts: str | Sequence[str] | None = None, encoding: Encoding = "change"
    ) -> tuple[Float[Tensor, "n c"], list[str]]:
        """Labels as a float32 matrix with one row per pair, and the column names.

        ``encoding="change"`` gives one column per concept: the signed value of a numeric
        concept, and ``1.0`` where a categorical factor changed (``0.0`` where it did not).
        ``encoding="onehot"`` expands each categorical factor into one column per value seen,
        named ``"factor=value"``: ``+1`` at the target value, ``-1`` at the source value (so an
        unchanged factor gives zeros); values are sorted alphabetically, numeric concepts keep
        one column. Concepts absent from a pair count as unchanged.

        Args:
            concepts: which concepts, in which order (default: all, see ``concepts``).
            encoding: ``"change"`` or ``"onehot"``.
        """
        if encoding not in ("change", "onehot"):
            raise PairsError(f"encoding must be 'change' or 'onehot', got {encoding!r}.")
        labels = self._require_labels("label_matrix")
        columns: list[list[float]] = []
        names: list[str] = []
        for concept in self._resolve_concepts(concepts):
            values = [pair_labels.get(concept) for pair_labels in labels]
            categorical = any(isinstance(v, tuple) for v in values)
            if categorical and encoding == "onehot":
                categories = sorted({c for v in values if v is not None for c in v})
                for category in categories:
                    columns.append(
                        [
                            0.0 if v is None else float(v[1] == category) - float(v[0] == category)
                            for v in values
                        ]
                    )
                    names.append(f"{concept}={category}")
            elif categorical:
                columns.append([float(_changed(v)) for v in values])
                names.append(concept)
            else:
                columns.append([0.0 if v is None else float(v) for v in values])
                names.append(concept)
        matrix = torch.tensor(columns, dtype=torch.float32).reshape(len(columns), len(self))
        return matrix.T.contiguous(), names

    # --- selection --------------------------------------------------------------------------

    def subset(self, indices: Iterable[int] | Tensor) -> ConceptPairs:
        """The pairs at ``indices`` (ints, negative allowed; a 1-D tensor works), in that order."""
        if isinstance(indices, Tensor):
            if indices.dtype == torch.bool:
                raise PairsTypeError(
                    "subset takes indices; for a boolean mask use mask.nonzero()[:, 0]."
                )
            indices = indices.tolist()
        n = len(self)
        picked = []
        for index in indices:
            if isinstance(index, bool):
                raise PairsTypeError(
                    "indices must be ints, got a bool; for a mask use a list of indices."
                )
            try:
                i = operator.index(index)
            except TypeError:
                raise PairsTypeError(
                    f"indices must be ints, got {type(index).__name__} ({index!r})."
                ) from None
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for {n} pairs.")
            picked.append(i % n)
        labels = None if self.labels is None else [dict(self.labels[i]) for i in picked]
        return self._trusted(
            [self.sources[i] for i in picked],
            [self.targets[i] for i in picked],
            labels,
            self.metadata,
        )

    def filter(
        self,
        predicate: Callable[[str, str, PairLabels], bool] | None = None,
        *,
        changed: str | Sequence[str] | None = None,
    ) -> ConceptPairs:
        """Keep the pairs that pass ``predicate(source, target, labels)`` and change ``changed``.

        Args:
            predicate: called with each pair's texts and label dict (``{}`` if unlabelled).
            changed: a concept or list of concepts that must all be changed (nonzero, or
                differing categorical values).
        """
        if predicate is None and changed is None:
            raise PairsError("filter needs a predicate, changed=..., or both.")
        must_change = [] if changed is None else self._resolve_concepts(changed)
        if must_change:
            self._require_labels("filter(changed=...)")
        keep = []
        for i, (source, target) in enumerate(self):
            pair_labels = self.labels[i] if self.labels is not None else {}
            if all(_changed(pair_labels.get(c)) for c in must_change) and (
                predicate is None or predicate(source, target, pair_labels)
            ):
                keep.append(i)
        return self.subset(keep)

    def n_duplicates(self) -> int:
        """How many pairs repeat an earlier ``(source, target)`` pair."""
        return len(self) - len(set(zip(self.sources, self.targets, strict=True)))

    def deduplicate(self) -> ConceptPairs:
        """Drop pairs whose ``(source, target)`` already occurred (the first one is kept)."""
        seen: set[tuple[str, str]] = set()
        keep = []
        for i, pair in enumerate(self):
            if pair not in seen:
                seen.add(pair)
                keep.append(i)
        return self.subset(keep)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[ConceptPairs, ConceptPairs]:
        """Random disjoint ``(train, test)`` split; ``round(n * test_fraction)`` pairs go to test.

        Deterministic in ``seed``; each part keeps the original order of its pairs. The
        indices of the two parts are :meth:`split_indices`.
        """
        train, test = self.split_indices(test_fraction, seed)
        return self.subset(train), self.subset(test)

    def split_indices(
        self, test_fraction: float = 0.2, seed: int = 0
    ) -> tuple[list[int], list[int]]:
        """The sorted pair indices of the ``(train, test)`` parts of :meth:`split`."""
        return split_indices(len(self), test_fraction, seed)

    @classmethod
    def concat(
        cls, parts: Sequence[ConceptPairs], metadata: Mapping[str, Any] | None = None
    ) -> ConceptPairs:
        """Join several ``ConceptPairs`` (all labelled or all unlabelled) into one."""
        if not parts:
            raise PairsError("concat needs at least one ConceptPairs.")
        labelled = {part.labels is not None for part in parts}
        if len(labelled) > 1:
            raise PairsError(
                "concat got labelled and unlabelled parts; a missing label would read as "
                "'unchanged', so label every part (or drop the labels) first."
            )
        labels = [dict(lab) for p in parts for lab in p.labels] if labelled == {True} else None
        return cls(
            [s for p in parts for s in p.sources],
            [t for p in parts for t in p.targets],
            labels,
            dict(metadata or {}),
        )

    # --- identity ---------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the texts and labels (not the metadata); stable across runs.

        Equal numeric values hash alike (``1`` and ``1.0``), and so does the key order of a
        pair's labels.
        """
        labels = None
        if self.labels is not None:
            labels = [
                {c: list(v) if isinstance(v, tuple) else float(v) for c, v in pair_labels.items()}
                for pair_labels in self.labels
            ]
        payload = {"sources": self.sources, "targets": self.targets, "labels": labels}
        blob = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # --- loading and saving -----------------------------------------------------------------

    @classmethod
    def _from_rows(
        cls,
        rows: Iterable[tuple[str, Any]],
        source_key: str,
        target_key: str,
        label_keys: Sequence[str] | None,
        metadata: Mapping[str, Any] | None,
        origin: str,
    ) -> ConceptPairs:
        """Build from ``(place, mapping)`` rows; ``place`` locates a row in error messages."""
        label_keys = _label_keys(label_keys, source_key, target_key)
        sources: list[str] = []
        targets: list[str] = []
        labels: list[Mapping[str, Any]] = []
        places: list[str] = []
        nested: bool | None = None
        for place, row in rows:
            if not isinstance(row, Mapping):
                raise PairsTypeError(
                    f"{place}: expected a mapping with {source_key!r} and {target_key!r}, "
                    f"got {type(row).__name__}."
                )
            wanted = [source_key, target_key, *(label_keys or ())]
            missing = [key for key in wanted if key not in row]
            if missing:
                raise MissingColumnsError(missing, row.keys(), place)
            source = _check_text(row[source_key], "source", place)
            target = _check_text(row[target_key], "target", place)
            if label_keys is not None:
                pair_labels = {key: row[key] for key in label_keys}
            else:
                has_labels = "labels" in row
                if nested is None:
                    nested = has_labels
                elif has_labels != nested:
                    raise PairsError(
                        f"{place}: {'has' if has_labels else 'lacks'} a 'labels' field unlike "
                        "the first row; label every row or none."
                    )
                pair_labels = row["labels"] if has_labels else {}
                if pair_labels is None:
                    pair_labels = {}
            sources.append(source)
            targets.append(target)
            labels.append(pair_labels)
            places.append(place)
        if not sources:
            raise PairsError(f"No pairs found in {origin}.")
        has_labels = label_keys is not None or bool(nested)
        checked = _check_labels(labels, len(sources), places.__getitem__) if has_labels else None
        return cls(sources, targets, checked, dict(metadata or {}))

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        source_key: str = "source",
        target_key: str = "target",
        label_keys: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ConceptPairs:
        """Build from dicts such as ``{"source": "king", "target": "roi", "labels": {...}}``.

        Args:
            records: one mapping per pair.
            source_key, target_key: the fields holding the texts.
            label_keys: fields to read as concepts (each field's value is that concept's
                label). ``None`` reads each record's ``"labels"`` dict if records have one.
            metadata: stored on the result.
        """
        rows = ((f"record {i}", record) for i, record in enumerate(records))
        return cls._from_rows(rows, source_key, target_key, label_keys, metadata, "the records")

    @classmethod
    def from_jsonl(
        cls,
        path: str | os.PathLike,
        source_key: str = "source",
        target_key: str = "target",
        label_keys: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ConceptPairs:
        """Read one JSON object per line (UTF-8, with or without a BOM; blank lines skipped);
        fields as in ``from_records``.

        ``metadata`` defaults to ``{"name": <file stem>, "path": <path>}``.
        """
        path = Path(path)
        text = _read_text(path)

        def rows() -> Iterator[tuple[str, Any]]:
            for line_number, line in enumerate(text.split("\n"), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as err:
                    reason = (
                        err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
                    )
                    raise PairsError(
                        f"line {line_number} of {path} is not valid JSON ({reason})."
                    ) from None
                yield f"line {line_number} of {path}", row

        if metadata is None:
            metadata = {"name": path.stem, "path": str(path)}
        return cls._from_rows(rows(), source_key, target_key, label_keys, metadata, str(path))

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        source_key: str = "source",
        target_key: str = "target",
        label_keys: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        delimiter: str = ",",
    ) -> ConceptPairs:
        """Read a CSV file with a header row (UTF-8, with or without the BOM Excel writes).

        A row with more cells than the header (an unquoted comma in a text) is an error naming
        its line: quote such texts (``"Hello, my friend"``). Label columns (``label_keys``) must
        hold numbers (signed changes); an empty cell means the concept is absent from that
        pair. Use JSONL for categorical labels.
        ``metadata`` defaults to ``{"name": <file stem>, "path": <path>}``.
        """
        path = Path(path)
        label_keys = _label_keys(label_keys, source_key, target_key)
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
        try:
            if reader.fieldnames is None:
                raise PairsError(
                    f"{path} is empty; expected a header row naming {source_key!r} and "
                    f"{target_key!r}."
                )
            missing = [
                k
                for k in (source_key, target_key, *(label_keys or ()))
                if k not in reader.fieldnames
            ]
            if missing:
                raise MissingColumnsError(missing, reader.fieldnames, str(path))
            rows = []
            for row in reader:
                place = f"line {reader.line_num} of {path}"
                if None in row:  # DictReader's key for the cells beyond the header's
                    raise PairsError(
                        f"{place} has {len(reader.fieldnames) + len(row[None])} cells but the "
                        f"header has {len(reader.fieldnames)} ({reader.fieldnames}); quote texts "
                        'that contain the delimiter, e.g. "Hello, my friend".'
                    )
                for key in label_keys or ():
                    row[key] = _parse_number(row[key], f"{place}: column {key!r}")
                rows.append((place, row))
        except csv.Error as err:
            raise PairsError(
                f"line {reader.line_num} of {path} is not valid CSV ({err})."
            ) from None
        if metadata is None:
            metadata = {"name": path.stem, "path": str(path)}
        return cls._from_rows(rows, source_key, target_key, label_keys, metadata, str(path))

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        source_key: str = "source",
        target_key: str = "target",
        label_keys: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ConceptPairs:
        """Build from a Hugging Face ``datasets.Dataset`` (one row per pair).

        Columns as in ``from_records``; with ``label_keys=None`` a ``"labels"`` column of
        dicts is read if present (``None`` entries, which ``datasets`` adds for keys a row
        lacks, mean the concept is absent).
        """
        columns = getattr(dataset, "column_names", None)
        if isinstance(columns, Mapping):
            raise PairsTypeError(
                f"Got a DatasetDict with splits {list(columns)}; pass one split, e.g. "
                f"dataset[{next(iter(columns), 'train')!r}]."
            )
        if columns is None:
            raise PairsTypeError(f"Expected a datasets.Dataset, got {type(dataset).__name__}.")
        label_keys = _label_keys(label_keys, source_key, target_key)
        wanted = [source_key, target_key, *(label_keys or ())]
        missing = [key for key in wanted if key not in columns]
        if missing:
            raise MissingColumnsError(missing, columns, "the dataset")
        if label_keys is None and "labels" in columns:
            wanted.append("labels")
        records = dataset.select_columns(wanted).to_list()
        rows = ((f"row {i} of the dataset", record) for i, record in enumerate(records))
        return cls._from_rows(rows, source_key, target_key, label_keys, metadata, "the dataset")

    def to_jsonl(self, path: str | os.PathLike) -> Path:
        """Write one ``{"source", "target"[, "labels"]}`` object per line, atomically.

        Metadata is not written. Categorical labels become two-element lists, which the
        loaders turn back into tuples. Returns the path.
        """
        path = Path(path)
        lines = []
        for i, (source, target) in enumerate(self):
            row: dict[str, Any] = {"source": source, "target": target}
            if self.labels is not None:
                row["labels"] = {
                    c: list(v) if isinstance(v, tuple) else v for c, v in self.labels[i].items()
                }
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        write_text_atomic(path, "".join(lines))
        return path


def _label_keys(
    label_keys: str | Sequence[str] | None, source_key: str, target_key: str
) -> list[str] | None:
    """``label_keys`` as a list of distinct field names other than the texts' fields."""
    if label_keys is None:
        return None
    keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
    for key in keys:
        if not isinstance(key, str):
            raise PairsTypeError(f"label_keys must be field names (strings), got {key!r}.")
        if key in (source_key, target_key):
            raise PairsError(
                f"label_keys names {key!r}, the field of the pair's texts; name label fields."
            )
    if len(set(keys)) != len(keys):
        raise PairsError(f"label_keys names a field twice: {keys}.")
    return keys


def _read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 with an optional BOM (Excel writes one)."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PairsError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8."
        ) from None


def _parse_number(cell: str | None, where: str) -> int | float | None:
    if cell is None or not cell.strip():
        return None
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        raise PairsError(
            f"{where} holds {cell!r}; CSV label columns must be numbers (signed changes). "
            "Use JSONL for categorical labels."
        ) from None
