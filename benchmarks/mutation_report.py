"""Summarise a mutmut run: a table per mutated module, and the surviving mutants as compact diffs.

Run from the repository root after ``mutmut run`` (``make mutation`` does both). The modules are
the ``only_mutate`` list of ``[tool.mutmut]`` in pyproject.toml; their results are read from
``mutants/<path>.meta``.

Survival rate = (survived + no tests) / mutants checked. A mutant with "no tests" is one that no
fast test calls, so nothing can kill it. Timeouts and suspicious runs count as checked, not
survived.

``--every K`` restricts everything to a deterministic sample: the mutants numbered 1, 1 + K,
1 + 2K, ... of every function (mutmut numbers them per function). ``--unchecked`` prints the
sampled mutants that have no result yet, to hand to ``mutmut run``.

    python benchmarks/mutation_report.py
    python benchmarks/mutation_report.py --survivors survivors.txt --top 3
    mutmut run $(python benchmarks/mutation_report.py --every 5 --unchecked --module ssae_lens/x.py)
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from mutmut.configuration import config
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code

from ssae_lens._core.io import write_text_atomic

COLUMNS = ["killed", "survived", "no tests", "timeout", "suspicious", "segfault", "not checked"]
SURVIVING = ("survived", "no tests")


def number(name: str) -> int:
    """The per-function number of a mutant (``..._mcc__mutmut_12`` -> 12)."""
    return int(name.rsplit("__mutmut_", 1)[1])


def statuses(path: str, every: int = 1) -> dict[str, str]:
    """Mutant name -> mutmut status for one source file (the 1-in-``every`` sample); empty if it
    was never mutated."""
    meta = Path("mutants") / f"{path}.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {
        name: status_by_exit_code[code]
        for name, code in codes.items()
        if (number(name) - 1) % every == 0
    }


def table(results: dict[str, dict[str, str]]) -> str:
    """A markdown table: one row per module and a total row."""
    header = ["module", "mutants", *COLUMNS, "survival rate"]
    rows = []
    grand: collections.Counter[str] = collections.Counter()
    for path, by_name in [*results.items(), ("**total**", None)]:
        counts = grand if by_name is None else collections.Counter(by_name.values())
        if by_name is not None:
            grand.update(counts)
        total = sum(counts.values())
        checked = total - counts["not checked"] - counts["skipped"]
        rate = sum(counts[s] for s in SURVIVING) / checked if checked else float("nan")
        other = set(counts) - set(COLUMNS) - {"skipped"}
        if other:
            raise ValueError(f"{path}: statuses {sorted(other)} have no column: add to COLUMNS")
        rows.append([path, str(total), *(str(counts[c]) for c in COLUMNS), f"{rate:.1%}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def compact_diff(name: str, path: str) -> str:
    """The changed lines of one mutant, indented under its name."""
    diff = get_diff_for_mutant(name, path=path).splitlines()
    changed = [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return "\n".join([name, *("    " + line.rstrip() for line in changed)])


def survivors(results: dict[str, dict[str, str]], top: int) -> str:
    """Compact diffs of the surviving mutants of the ``top`` modules with the most survivors."""
    ranked = sorted(
        results,
        key=lambda p: -sum(s in SURVIVING for s in results[p].values()),
    )[:top]
    blocks = []
    for path in ranked:
        for status in SURVIVING:
            names = sorted(
                (n for n, s in results[path].items() if s == status),
                key=lambda n: (n.rsplit("__mutmut_", 1)[0], number(n)),
            )
            blocks.append(f"## {path}: {status} ({len(names)})")
            blocks += [compact_diff(name, path) for name in names]
    return "\n".join(blocks) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", type=Path, help="write the survivors' diffs to this file")
    parser.add_argument("--top", type=int, default=3, help="modules with the most survivors")
    parser.add_argument("--every", type=int, default=1, help="sample 1 mutant in K per function")
    parser.add_argument("--module", action="append", help="only this path (repeatable)")
    parser.add_argument("--unchecked", action="store_true", help="list unchecked mutants only")
    args = parser.parse_args()
    paths = args.module or config().only_mutate
    results = {path: statuses(path, args.every) for path in paths}
    if args.unchecked:
        print("\n".join(n for r in results.values() for n, s in r.items() if s == "not checked"))
        return
    print(table(results))
    if args.survivors:
        write_text_atomic(args.survivors, survivors(results, args.top))
        print(f"survivors of the {args.top} modules with the most: {args.survivors}")


if __name__ == "__main__":
    main()
