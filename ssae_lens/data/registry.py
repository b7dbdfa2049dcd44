"""Named pair datasets: the built-ins and any a user registers.

::

    def my_pairs(n: int = 100) -> ConceptPairs: ...

    register_pairs("mine", my_pairs, "My tense pairs; concept: tense.")
    pairs = load_pairs("mine", n=50)        # also works in configs: dataset: mine
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ssae_lens.data.pairs import ConceptPairs

__all__ = ["list_pairs", "load_pairs", "register_pairs"]


@dataclass(frozen=True)
class _Entry:
    description: str
    build: Callable[..., ConceptPairs]


_REGISTRY: dict[str, _Entry] = {}


def register_pairs(
    name: str,
    build: Callable[..., ConceptPairs],
    description: str,
    *,
    overwrite: bool = False,
) -> None:
    """Make ``load_pairs(name, **options)`` call ``build(**options)``.

    Args:
        name: the dataset's name.
        build: a function returning a :class:`~ssae_lens.ConceptPairs`; its keyword
            parameters are the dataset's options.
        description: one line: what varies and which concepts the labels name.
        overwrite: replace a dataset already registered under ``name``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A dataset name must be a non-empty string, got {name!r}.")
    if not callable(build):
        raise TypeError(f"build must be a function returning ConceptPairs, got {build!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"A dataset named {name!r} is already registered; pick another name or pass "
            "overwrite=True."
        )
    _REGISTRY[name] = _Entry(description, build)


def list_pairs() -> dict[str, str]:
    """The registered datasets: ``{name: one-line description}``."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def load_pairs(name: str, **options: Any) -> ConceptPairs:
    """Load a registered dataset by name (see :func:`list_pairs`).

    Args:
        name: ``language``, ``gender``, ``binary``, ``corr``, ``categorical``, ``sentences``
            or a name given to :func:`register_pairs`.
        options: the dataset's options, e.g. ``load_pairs("categorical", n=30_000, seed=1)``.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"Unknown dataset {name!r}; {hint}valid names: {', '.join(_REGISTRY)}.")
    build = _REGISTRY[name].build
    accepted = list(inspect.signature(build).parameters)
    unknown = [key for key in options if key not in accepted]
    if unknown:
        takes = f"it takes {accepted}" if accepted else "it takes no options"
        raise TypeError(f"load_pairs({name!r}) got unknown option(s) {unknown}; {takes}.")
    return build(**options)
