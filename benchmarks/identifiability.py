"""Benchmark: are the SSAE's codes the true concept changes? SSAE vs baselines, same data.

For each setting (number of concepts ``n``, at most ``k`` changing per pair, width ``d``,
noise, value distribution, correlated concepts, nonlinearity) and each seed, synthetic
shifts ``delta = A dc`` are drawn (data seed = model seed) and every method encodes them
into ``n`` (or ``2n``) columns; the score is the MCC between those codes and the true
concept changes ``dc`` (|Pearson|, Hungarian matching; with more latents than concepts
the best-matching latents count). Methods and their fixed, documented configurations:

- ``ssae``: ``train_ssae(shifts, TrainingSSAEConfig(d_in=d, d_sae=n))``, all defaults
  (``sparsity_target="auto"``: the target is chosen from the shifts, without labels).
- ``aff``: the same network without sparsity (``sparsity="none"``), all other defaults.
- ``pca``: ``sklearn.decomposition.PCA(n)`` scores.
- ``ica``: ``FastICA(n, whiten="unit-variance", max_iter=1000)`` sources.
- ``dl``: ``MiniBatchDictionaryLearning(n, alpha=DL_ALPHA)`` fitted on a random subsample of
  ``DL_FIT_ROWS`` shifts scaled to unit mean squared norm (so ``alpha`` is scale-free), then
  lasso (LARS) codes of all shifts with the same ``alpha``; codes are signed.
- ``sae``: SAELens's standard ReLU SAE (``StandardTrainingSAE``) trained by SAELens's
  ``SAETrainer`` on the same shifts with SAELens's input scaling
  (``normalize_activations="expected_average_only_in"``) on as many samples as the SSAE sees
  by default, in batches ``SAE_BATCH_FACTOR`` times larger (SAETrainer's per-step overhead
  dominates on CPU), learning rate ``SAE_LR`` (the library recipe :func:`ssae_lens.saes.train_sae`)
  and ``l1_coefficient=SAE_L1``. Shifts are
  signed and a ReLU latent codes one sign only, so it gets ``2n`` latents and the ``n`` best
  matching ones count. Even a perfect one-signed latent correlates only ~0.7-0.75 with a
  signed concept change, so ``sae+-`` (same model, no extra training) also scores signed
  codes: latents whose decoder rows are anti-parallel (cosine < ``SAE_PAIR_COSINE``) are
  paired greedily, most anti-parallel first, and coded as their difference.

Baseline hyperparameters were chosen on setting A, seed 0, and are then fixed for every
setting: ``DL_ALPHA`` is the best of {0.01, 0.03, 0.1, 0.3, 0.5, 1.0} (MCC 0.59, 0.62, 0.72,
0.88, 0.78, 0.17); ``SAE_L1`` gives a mean L0 of ~2.0, the true mean number of changed
concepts, and the SAE reaches the one-sign ceiling there (``sae`` 0.75, ``sae+-`` 1.00).

The results (median and min-max over seeds, wall time per method, and the SSAE's final
Lagrange multiplier and constraint level) are printed and written to a Markdown file with
a grouped bar plot beside it. Usage::

    python benchmarks/identifiability.py [--seeds 3] [--n-pairs 20000] [--settings A,E]
    python benchmarks/identifiability.py --quick --out /tmp/identifiability.md  # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from sklearn.decomposition import PCA, FastICA, MiniBatchDictionaryLearning
from torch import Tensor
from tqdm.auto import tqdm

from ssae_lens._core.io import save_figure, write_text_atomic
from ssae_lens.data.synthetic import Nonlinearity, Values, make_synthetic_shifts
from ssae_lens.metrics import mcc
from ssae_lens.saes import train_sae
from ssae_lens.ssae import TrainingSSAEConfig, train_ssae

DL_ALPHA = 0.3
DL_FIT_ROWS = 3000
SAE_L1 = 0.3
SAE_LR = 3e-3
SAE_BATCH_FACTOR = 4
SAE_PAIR_COSINE = -0.5
QUICK_STEPS = 300

METHODS = ("ssae", "aff", "pca", "ica", "dl", "sae", "sae+-")
BASELINES = METHODS[1:]
# Issue 16: the defaults (no labels) reach these median MCCs.
DEFAULT_GOALS = {"A": 0.99, "B": 0.99, "C": 0.99, "D": 0.99, "E": 0.93}
MATCH_TOLERANCE = 0.01  # "matches": SSAE median >= baseline median - this
CLEAR_MARGIN = 0.03  # "beats clearly": SSAE median >= baseline median + this


@dataclass(frozen=True)
class Setting:
    """One synthetic-data setting (arguments of ``make_synthetic_shifts``)."""

    key: str
    label: str
    n_concepts: int = 9
    max_changes: int = 3
    d: int = 64
    values: Values = "uniform"
    noise: float = 0.0
    nonlinearity: Nonlinearity = "none"
    correlated_pairs: int = 0
    correlation: float = 0.8


SETTINGS = {
    s.key: s
    for s in (
        Setting("A", "n=9 k=3 uniform"),
        Setting("B", "A + noise 0.1", noise=0.1),
        Setting("C", "A, binary values", values="binary"),
        Setting("D", "n=20 k=5", n_concepts=20, max_changes=5),
        Setting("E", "A, correlated 0-1, 2-3 (0.6)", correlated_pairs=2, correlation=0.6),
        Setting("F", "A + tanh", nonlinearity="tanh"),
    )
}


@dataclass
class Run:
    """The score of one method on one setting and seed."""

    setting: str
    seed: int
    method: str
    mcc: float
    seconds: float
    info: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the inner trainers' progress bars (they write to stderr)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        yield


def _unit_scale(x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    return x / x.pow(2).sum(-1).mean().sqrt()


def fit_ssae(
    x: Float[Tensor, "n d"], n: int, seed: int, steps: int | None, sparsity: str
) -> tuple[Tensor, dict[str, float]]:
    overrides = {} if steps is None else {"training_steps": steps}
    cfg = TrainingSSAEConfig(d_in=x.shape[1], d_sae=n, sparsity=sparsity, **overrides)
    with _quiet():
        sae, trainer = train_ssae(x, cfg, seed=seed, return_trainer=True)
    last = trainer.history[-1]
    info = {
        "multiplier": last.lagrange_multiplier,
        "mean_abs_code": last.mean_abs_code,
        "target": last.sparsity_target,
        "recon_loss": last.recon_loss,
    }
    with torch.no_grad():
        return sae.encode(x), info


def fit_pca(x: Float[Tensor, "n d"], n: int, seed: int) -> Tensor:
    return torch.from_numpy(PCA(n_components=n, random_state=seed).fit_transform(x.numpy()))


def fit_ica(x: Float[Tensor, "n d"], n: int, seed: int) -> Tensor:
    ica = FastICA(n_components=n, whiten="unit-variance", random_state=seed, max_iter=1000)
    return torch.from_numpy(ica.fit_transform(x.numpy().astype(np.float64)))


def fit_dictionary(x: Float[Tensor, "n d"], n: int, seed: int) -> Tensor:
    xs = _unit_scale(x).numpy().astype(np.float64)
    rows = np.random.default_rng(seed).choice(len(xs), min(DL_FIT_ROWS, len(xs)), replace=False)
    dl = MiniBatchDictionaryLearning(
        n_components=n,
        alpha=DL_ALPHA,
        batch_size=256,
        max_iter=50,
        random_state=seed,
        transform_algorithm="lasso_lars",
        transform_alpha=DL_ALPHA,
    )
    dl.fit(xs[rows])
    return torch.from_numpy(dl.transform(xs))


def signed_pairs(
    codes: Float[Tensor, "n l"], decoder: Float[Tensor, "l d"], max_cosine: float
) -> Float[Tensor, "n m"]:
    """Merge ReLU latents with anti-parallel decoder rows into signed codes ``a_i - a_j``.

    Pairs are taken greedily, most anti-parallel first, while their cosine is below
    ``max_cosine``; unpaired latents are kept as they are.
    """
    rows = decoder / decoder.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    cos = rows @ rows.T
    cos.fill_diagonal_(float("inf"))
    free = set(range(len(rows)))
    columns = []
    for flat in cos.flatten().argsort().tolist():
        i, j = divmod(flat, len(rows))
        if cos[i, j] >= max_cosine:
            break
        if i in free and j in free:
            columns.append(codes[:, i] - codes[:, j])
            free -= {i, j}
    columns += [codes[:, i] for i in sorted(free)]
    return torch.stack(columns, dim=1)


def fit_standard_sae(
    x: Float[Tensor, "n d"], n: int, seed: int, steps: int | None
) -> tuple[Tensor, Tensor]:
    """Codes of a SAELens standard ReLU SAE with ``2n`` latents, raw and paired-signed."""
    defaults = TrainingSSAEConfig(d_in=x.shape[1], d_sae=n)
    batch = SAE_BATCH_FACTOR * defaults.batch_size
    steps = steps or defaults.training_steps // SAE_BATCH_FACTOR
    with _quiet():
        sae = train_sae(
            x,
            d_sae=2 * n,
            architecture="standard",
            l1_coefficient=SAE_L1,
            n_tokens=steps * batch,
            batch_size=batch,
            lr=SAE_LR,
            seed=seed,
        )
    with torch.no_grad():
        codes = sae.encode(x)
        return codes, signed_pairs(codes, sae.W_dec, SAE_PAIR_COSINE)


def run_setting(
    setting: Setting,
    seed: int,
    n_pairs: int,
    steps: int | None,
    methods: Sequence[str] = METHODS,
) -> Iterator[Run]:
    """Score ``methods`` on one draw of the setting's data."""
    data = make_synthetic_shifts(
        n_pairs,
        setting.n_concepts,
        setting.max_changes,
        setting.d,
        values=setting.values,
        noise=setting.noise,
        nonlinearity=setting.nonlinearity,
        correlated_pairs=setting.correlated_pairs,
        correlation=setting.correlation,
        seed=seed,
    )
    x, truth, n = data.shifts, data.concept_changes, setting.n_concepts

    def timed(fn: Callable[[], object]) -> tuple[object, float]:
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    def run(method: str, codes: Tensor, seconds: float, info: dict | None = None) -> Run:
        return Run(setting.key, seed, method, mcc(codes, truth), seconds, info or {})

    (codes, info), t = timed(lambda: fit_ssae(x, n, seed, steps, "constraint"))
    yield run("ssae", codes, t, info)
    if "aff" in methods:
        (codes, _), t = timed(lambda: fit_ssae(x, n, seed, steps, "none"))
        yield run("aff", codes, t)
    if "pca" in methods:
        codes, t = timed(lambda: fit_pca(x, n, seed))
        yield run("pca", codes, t)
    if "ica" in methods:
        codes, t = timed(lambda: fit_ica(x, n, seed))
        yield run("ica", codes, t)
    if "dl" in methods:
        codes, t = timed(lambda: fit_dictionary(x, n, seed))
        yield run("dl", codes, t)
    if "sae" in methods or "sae+-" in methods:
        (codes, paired), t = timed(lambda: fit_standard_sae(x, n, seed, steps))
        yield run("sae", codes, t)
        yield run("sae+-", paired, t)


def _stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summarize(runs: list[Run], settings: list[Setting]) -> tuple[str, list[str]]:
    """A Markdown report of ``runs`` and the list of failed acceptance criteria."""
    by: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        by.setdefault((r.setting, r.method), []).append(r)
    present = [s for s in settings if (s.key, "ssae") in by]

    lines = ["| setting | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for s in present:
        cells = []
        for m in METHODS:
            if (s.key, m) not in by:
                cells.append("")
                continue
            med, lo, hi = _stats([r.mcc for r in by[s.key, m]])
            cells.append(f"{med:.3f} [{lo:.3f}-{hi:.3f}]")
        lines.append(f"| {s.key}: {s.label} | " + " | ".join(cells) + " |")
    times = []
    for m in METHODS:
        ts = [r.seconds for r in runs if r.method == m]
        times.append(f"{statistics.median(ts):.1f}" if ts else "")
    lines.append("| median wall time per run (s) | " + " | ".join(times) + " |")

    lines += ["", "SSAE at the end of training (median over seeds):", ""]
    lines += ["| setting | multiplier | mean abs code | target | relative recon loss |"]
    lines += ["|---|---|---|---|---|"]
    for s in present:
        infos = [r.info for r in by[s.key, "ssae"]]
        vals = [statistics.median(i[k] for i in infos) for k in infos[0]]
        lines.append(f"| {s.key} | " + " | ".join(f"{v:.4g}" for v in vals) + " |")

    failures = []
    for s in present:
        ssae = statistics.median(r.mcc for r in by[s.key, "ssae"])
        goal = DEFAULT_GOALS.get(s.key)
        if goal is not None and ssae < goal:
            failures.append(f"{s.key}: SSAE median MCC {ssae:.3f} < {goal}")
        for m in BASELINES:
            if (s.key, m) not in by:
                continue
            base = statistics.median(r.mcc for r in by[s.key, m])
            strict = m in ("aff", "sae")  # sae+- is this script's extra: "matches" applies
            if strict and ssae <= base:
                failures.append(f"{s.key}: SSAE {ssae:.3f} does not beat {m} {base:.3f}")
            elif ssae < base - MATCH_TOLERANCE:
                failures.append(f"{s.key}: SSAE {ssae:.3f} below {m} {base:.3f}")
            if s.correlated_pairs and m == "ica" and ssae < base + CLEAR_MARGIN:
                failures.append(
                    f"{s.key}: SSAE {ssae:.3f} does not beat ica {base:.3f} by {CLEAR_MARGIN}"
                )
    goals = ", ".join(f"{k} >= {v}" for k, v in DEFAULT_GOALS.items())
    lines += [
        "",
        f"Acceptance criteria (medians): SSAE with defaults {goals}; SSAE beats aff and sae, "
        f"matches the other baselines (within {MATCH_TOLERANCE}) and beats ica clearly (by >= "
        f"{CLEAR_MARGIN}) on correlated concepts:",
        "",
    ]
    lines += [f"- FAIL {f}" for f in failures] or ["- all met"]
    return "\n".join(lines) + "\n", failures


def plot(runs: list[Run], settings: list[Setting], path: Path) -> None:
    """Grouped bars: median MCC per setting and method, whiskers min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [s for s in settings if any(r.setting == s.key for r in runs)]
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(present), 4))
    width = 0.8 / len(METHODS)
    for j, m in enumerate(METHODS):
        meds, errs, xs = [], [[], []], []
        for i, s in enumerate(present):
            vals = [r.mcc for r in runs if r.setting == s.key and r.method == m]
            if not vals:
                continue
            med, lo, hi = _stats(vals)
            xs.append(i + (j - (len(METHODS) - 1) / 2) * width)
            meds.append(med)
            errs[0].append(med - lo)
            errs[1].append(hi - med)
        ax.bar(xs, meds, width, yerr=errs, capsize=2, label=m)
    ax.set_xticks(range(len(present)), [s.key for s in present])
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("MCC vs true concept changes")
    ax.set_title("Synthetic shifts: MCC, median and min-max over seeds", fontsize=10)
    ax.legend(ncol=len(METHODS), fontsize=7, loc="upper center")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per setting (data = model)")
    parser.add_argument("--n-pairs", type=int, default=20_000, help="shifts per dataset")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated of {list(SETTINGS)}"
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated of {list(METHODS)} (ssae always runs; sae and sae+- go together)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: 1 seed, 3000 pairs, {QUICK_STEPS} training steps (numbers not valid)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "identifiability.md",
        help="Markdown report; the plot is written beside it as .png",
    )
    args = parser.parse_args(argv)
    unknown = [k for k in args.settings.split(",") if k not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    if args.seeds < 1 or args.n_pairs < DL_FIT_ROWS:
        parser.error(f"need --seeds >= 1 and --n-pairs >= {DL_FIT_ROWS}")
    methods = ["ssae", *(m for m in args.methods.split(",") if m != "ssae")]
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    settings = [SETTINGS[k] for k in args.settings.split(",")]
    seeds, n_pairs, steps = args.seeds, args.n_pairs, None
    if args.quick:
        seeds, n_pairs, steps = 1, 3000, QUICK_STEPS

    torch.set_num_threads(2)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
    header = (
        "# Identifiability on synthetic shifts: SSAE vs baselines\n\n"
        f"`{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{n_pairs} pairs, seeds 0..{seeds - 1} (data seed = model seed)"
        + (f", QUICK: {QUICK_STEPS} training steps, not valid results" if args.quick else "")
        + ". Cells: MCC of codes vs true concept changes, median [min-max] over seeds. "
        f"Baselines: dl alpha={DL_ALPHA} on {DL_FIT_ROWS} rows; sae width 2n, "
        f"l1={SAE_L1}, lr={SAE_LR}, batch x{SAE_BATCH_FACTOR}; sae+- pairs its anti-parallel "
        "latents (see benchmarks/identifiability.py).\n\n"
    )
    settings_md = ["| key | arguments of make_synthetic_shifts |", "|---|---|"]
    for s in settings:
        args_s = [f"{k}={v}" for k, v in asdict(s).items() if k not in ("key", "label")]
        settings_md.append(f"| {s.key} | {', '.join(args_s)} |")
    runs: list[Run] = []
    # Seeds outer: a partial report already covers every setting.
    jobs = [(s, seed) for seed in range(seeds) for s in settings]
    for setting, seed in tqdm(jobs, desc="identifiability", unit="run"):
        runs.extend(run_setting(setting, seed, n_pairs, steps, methods))
        table, failures = summarize(runs, settings)
        done = len({(r.setting, r.seed) for r in runs})
        partial = "" if done == len(jobs) else f"**Partial: {done} of {len(jobs)} runs.**\n\n"
        write_text_atomic(args.out, header + partial + table + "\n" + "\n".join(settings_md) + "\n")
        plot(runs, settings, args.out.with_suffix(".png"))
    print(table)
    print(f"Written {args.out} and {args.out.with_suffix('.png')}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
