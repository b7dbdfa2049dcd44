"""How long ``ssae-lens --help`` takes next to ``python -c "import sae_lens"``, as ratios.

Each command runs ``--repeats`` times, interleaved (so machine load hits all alike), in fresh
processes that import this checkout; the medians and their ratios to ``import sae_lens`` are
printed and written to ``benchmarks/results/cli_help.md``.

    python benchmarks/cli_help.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ssae_lens._core.io import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


def commands() -> dict[str, list[str]]:
    """The timed commands by label; the console script where it is installed."""
    out = {
        'python -c "import sae_lens"': [sys.executable, "-c", "import sae_lens"],
        "python -m ssae_lens --help": [sys.executable, "-m", "ssae_lens", "--help"],
        "python -m ssae_lens train --help": [sys.executable, "-m", "ssae_lens", "train", "--help"],
    }
    script = Path(sys.executable).with_name("ssae-lens")
    script = script if script.exists() else shutil.which("ssae-lens")
    if script:
        out["ssae-lens --help"] = [str(script), "--help"]
        out["ssae-lens train --help"] = [str(script), "train", "--help"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    timed = commands()
    seconds: dict[str, list[float]] = {label: [] for label in timed}
    for _ in range(args.repeats):
        for label, cmd in timed.items():
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            seconds[label].append(time.perf_counter() - start)
    base_label = 'python -c "import sae_lens"'
    base = statistics.median(seconds[base_label])
    lines = [
        "# `ssae-lens --help` against `import sae_lens`",
        "",
        f"Command: `python benchmarks/cli_help.py --repeats {args.repeats}`; median wall time "
        f"of {args.repeats} fresh processes per command, interleaved, in one run.",
        "",
        "| command | median (s) | ratio to `import sae_lens` |",
        "| --- | --- | --- |",
    ]
    for label, values in seconds.items():
        median = statistics.median(values)
        lines.append(f"| `{label}` | {median:.2f} | {median / base:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomic(args.out / "cli_help.md", text)


if __name__ == "__main__":
    main()
