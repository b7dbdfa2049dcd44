"""The main job, end to end on the embedded Gemma-3-270M (``make demo``, ``ssae-lens demo``).

Two parts, both with the library defaults (``sparsity_target="auto"``: no labels are used to
train anything):

- **Many concepts** (``many:``, built-in ``categorical``: 29 one-hot values of three factors):
  SSAEs at twice the number of concepts, a width a user would not know to pick exactly, against
  the unconstrained autoencoder ("aff"), PCA and FastICA of the same width. The score is whether
  a method finds the same directions with every seed (seed agreement) and whether its codes
  follow the concepts (label MCC against the held-out labels).
- **Steering** (``dataset:``, ``binary``: language and gender): SSAEs and aff against the mean
  shift and the supervised directions (:mod:`ssae_lens.compare`); the seed-0 dictionary is saved
  in SAELens format, its latents named ("French", "feminine") and used to steer generation.

Writes ``report.md``, ``config.yaml``, ``demo.png`` (the many-concept scores first),
``selection.png`` (the sparsity-selection curves behind "auto") and the dictionary to
``out_dir``.

    python -m ssae_lens.demo [--config configs/demo.yaml] [--set seeds=[0,1]]

A rerun reuses the converted model, the activation cache and the trained SSAEs.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ssae_lens import models
from ssae_lens._core.backend import Model
from ssae_lens._core.io import save_figure, write_text_atomic
from ssae_lens.compare import (
    Fit,
    FitScores,
    aff_config,
    evaluate_fit,
    fit_ica,
    fit_mean_diff,
    fit_pca,
    fit_ssae,
    fit_supervised,
)
from ssae_lens.config import ConfigError, ExperimentConfig, parse_config_args, save_config
from ssae_lens.data import list_pairs, load_pairs
from ssae_lens.generation import generate_texts
from ssae_lens.metrics import seed_agreement_mcc
from ssae_lens.shift_data import ShiftData, experiment_data, harvest_shift_data, label_encoding
from ssae_lens.ssae.selection import SparsitySelection
from ssae_lens.steering import SteeringVector, steer

__all__ = ["DemoConfig", "run_demo"]

CONCEPT_NAMES = {"language": "French", "gender": "feminine"}


@dataclass
class ManyConceptsSection:
    """The demo's many-concept part: SSAE, aff, PCA and ICA on a built-in dataset with many
    concepts, at ``width_multiplier`` x its number of concepts (the ``train:`` section's other
    options). ``dataset: null`` skips the part; ``max_pairs`` keeps a seeded random subset of
    the pairs (null: all)."""

    dataset: str | None = "categorical"
    width_multiplier: int = 2
    max_pairs: int | None = None

    def __post_init__(self) -> None:
        if self.dataset is not None and self.dataset not in list_pairs():
            raise ConfigError(
                f"many.dataset must be a built-in pairs set with labels ({', '.join(list_pairs())})"
                f" or null, got {self.dataset!r}."
            )
        if self.width_multiplier < 1:
            raise ConfigError(f"many.width_multiplier must be >= 1, got {self.width_multiplier}.")
        if self.max_pairs is not None and self.max_pairs < 8:
            raise ConfigError(f"many.max_pairs must be >= 8 or null, got {self.max_pairs}.")


@dataclass
class DemoConfig(ExperimentConfig):
    """The demo's config: an :class:`~ssae_lens.config.ExperimentConfig` writing to
    ``runs/demo`` (``configs/demo.yaml``), with the many-concept part's ``many:`` section."""

    out_dir: str = "runs/demo"
    many: ManyConceptsSection = field(default_factory=ManyConceptsSection)


@dataclass
class ManyConcepts:
    """The many-concept part's results: per method its fits' scores and seed agreement."""

    name: str
    width: int
    n_concepts: int
    counts: tuple[int, int]  # training, held-out pairs
    scores: dict[str, list[FitScores]]
    agreement: dict[str, float]  # methods with several seeds
    selection: SparsitySelection | None  # the SSAE's (shared by its seeds)


def run_demo(cfg: ExperimentConfig) -> Path:
    """Run the demo and return the path of the Markdown report."""
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    save_config(cfg, out / "config.yaml")
    model = models.load_model(
        cfg.model, backend=cfg.backend, device=cfg.device, precision=cfg.precision
    )
    t_model = time.perf_counter() - t0
    many = cfg.many if isinstance(cfg, DemoConfig) else ManyConceptsSection(dataset=None)
    concepts = _many_concepts(cfg, many, model, out) if many.dataset is not None else None
    t_many = time.perf_counter() - t0 - t_model

    data = experiment_data(cfg, model)
    ssae_cfg = cfg.training_config(d_in=data.shifts_tr.shape[1])
    fits = {
        name: [fit_ssae(data, c, seed=s, cache_dir=out / "models") for s in cfg.seeds]
        for name, c in (("SSAE", ssae_cfg), ("aff", aff_config(ssae_cfg)))
    }
    fits["mean-diff"] = [fit_mean_diff(data)]
    fits["supervised (oracle)"] = [fit_supervised(data)]
    scores = {name: [evaluate_fit(f, data) for f in method] for name, method in fits.items()}
    agreement = _agreement(fits)

    best = fits["SSAE"][0]
    dict_dir = _save_dictionary(best, data, out / "ssae")
    scale = cfg.steer.scale
    if scale is None:
        scale = cfg.steer.scale_fraction * data.median_shift_norm()
    latent_rows, vectors = _latents(best, data)
    generations = _generations(model, cfg.steer.prompts, vectors, scale, cfg)

    plot_path = save_figure(_plot(scores, concepts, cfg.dataset), out / "demo.png", dpi=100)
    selections = {f"{cfg.dataset}, width {ssae_cfg.d_sae}": _selection(best)}
    if concepts is not None:
        selections[f"{concepts.name}, width {concepts.width}"] = concepts.selection
    selections = {k: v for k, v in selections.items() if v is not None}
    selection_path = (
        save_figure(_selection_figure(selections), out / "selection.png", dpi=100)
        if selections
        else None
    )
    total = time.perf_counter() - t0
    report = _report(
        cfg,
        data,
        scores,
        agreement,
        concepts,
        selections,
        latent_rows,
        generations,
        scale,
        dict_dir,
        [plot_path, selection_path],
        {"model": t_model, "many concepts": t_many, "steering": total - t_model - t_many},
    )
    path = write_text_atomic(out / "report.md", report)
    print(report)
    print(f"\nReport: {path}\nDictionary (SAELens format): {dict_dir}\nPlot: {plot_path}")
    return path


def _many_concepts(
    cfg: ExperimentConfig, many: ManyConceptsSection, model: Model, out: Path
) -> ManyConcepts:
    """Harvest ``many.dataset`` and fit SSAE (3 seeds), aff, PCA and ICA at
    ``many.width_multiplier`` x its concepts."""
    assert many.dataset is not None
    pairs = load_pairs(many.dataset)
    if many.max_pairs is not None and many.max_pairs < len(pairs):
        gen = torch.Generator().manual_seed(cfg.harvest.split_seed)
        pairs = pairs.subset(torch.randperm(len(pairs), generator=gen)[: many.max_pairs].sort()[0])
    h = cfg.harvest
    data = harvest_shift_data(
        model,
        pairs,
        cfg.hook_name,
        name=many.dataset,
        position=cfg.position,
        test_fraction=h.test_fraction,
        split_seed=h.split_seed,
        encoding=label_encoding(pairs),
        batch_size=h.batch_size,
        cache_dir=models.cache_root() / "activations" if h.use_cache else None,
    )
    n_concepts = len(data.concepts)
    width = many.width_multiplier * n_concepts
    d_in = data.shifts_tr.shape[1]
    if width > min(d_in, len(data.shifts_tr)):
        raise ConfigError(
            f"many: width {many.width_multiplier} x {n_concepts} concepts = {width} exceeds the "
            f"activation width {d_in} or the {len(data.shifts_tr)} training pairs (PCA and ICA "
            "fit at most that many directions); lower many.width_multiplier or raise "
            "many.max_pairs."
        )
    ssae_cfg = dataclasses.replace(cfg.training_config(d_in=d_in), d_sae=width)
    cache = out / "models"
    fits = {
        "SSAE": [fit_ssae(data, ssae_cfg, seed=s, cache_dir=cache) for s in cfg.seeds],
        "aff": [fit_ssae(data, aff_config(ssae_cfg), seed=s, cache_dir=cache) for s in cfg.seeds],
        "PCA": [fit_pca(data, width)],
        "ICA": [fit_ica(data, width, seed=s) for s in cfg.seeds],
    }
    return ManyConcepts(
        many.dataset,
        width,
        n_concepts,
        (len(data.shifts_tr), len(data.shifts_te)),
        {name: [evaluate_fit(f, data) for f in method] for name, method in fits.items()},
        _agreement(fits),
        _selection(fits["SSAE"][0]),
    )


def _agreement(fits: dict[str, list[Fit]]) -> dict[str, float]:
    """Seed agreement (:func:`~ssae_lens.metrics.seed_agreement_mcc` of the directions) of every
    method fitted with several seeds."""
    return {
        name: seed_agreement_mcc([f.directions for f in method])[0]
        for name, method in fits.items()
        if len(method) > 1
    }


def _selection(fit: Fit) -> SparsitySelection | None:
    """The sparsity selection an SSAE fit trained with (None for a fixed target)."""
    record = fit.sae.cfg.metadata.sparsity_selection if fit.sae is not None else None
    return SparsitySelection.from_dict(record) if record else None


def _selection_figure(selections: dict[str, SparsitySelection]) -> Figure:
    fig = Figure(figsize=(5.5 * len(selections), 3.4), layout="tight")
    for i, (title, selection) in enumerate(selections.items()):
        selection.plot(fig.add_subplot(1, len(selections), i + 1), title)
    return fig


def _save_dictionary(fit: Fit, data: ShiftData, folder: Path) -> Path:
    """The seed-0 SSAE in SAELens format, with where it reads from (the model as
    TransformerLens names it, which steering vectors are checked against)."""
    meta = fit.sae.cfg.metadata
    meta.model_name, meta.hook_name = data.metadata["model"], data.metadata["hook_name"]
    meta.dataset = data.metadata["dataset"]
    fit.sae.save_model(folder)
    return folder


def _latents(fit: Fit, data: ShiftData) -> tuple[list[str], list[tuple[str, SteeringVector]]]:
    """Per concept: a report row (its latent and the held-out pairs with the strongest code)
    and the latent's steering vector, signed to point towards the concept."""
    rows, vectors = [], []
    for c, concept in enumerate(data.concepts):
        latent = fit.order[c]
        sign = 1.0 if float(fit.matched[c] @ fit.directions[latent]) >= 0 else -1.0
        strongest = (fit.codes_te[:, latent] * sign).argsort(descending=True)[:5].tolist()
        examples = ", ".join(f"{data.test.sources[i]} -> {data.test.targets[i]}" for i in strongest)
        label = CONCEPT_NAMES.get(concept, concept)
        rows.append(f"| {latent} | {label} | {concept} | {examples} |")
        vectors.append((label, SteeringVector.from_ssae(fit.sae, latent) * sign))
    return rows, vectors


def _generations(
    model: Model,
    prompts: Sequence[str],
    vectors: list[tuple[str, SteeringVector]],
    scale: float,
    cfg: ExperimentConfig,
) -> list[dict[str, str]]:
    """Greedy continuations of every prompt, unsteered and steered with each vector."""

    def greedy() -> list[str]:
        texts = generate_texts(model, prompts, cfg.steer.max_new_tokens, do_sample=False)
        return [" ".join(t.split()) for t in texts]

    columns = {"unsteered": greedy()}
    for label, vector in vectors:
        with steer(model, vector, scale=scale, positions=cfg.steer.positions):
            columns[label] = greedy()
    return [
        {"prompt": p, **{k: texts[i] for k, texts in columns.items()}}
        for i, p in enumerate(prompts)
    ]


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def _report(
    cfg: ExperimentConfig,
    data: ShiftData,
    scores: dict[str, list[FitScores]],
    agreement: dict[str, float],
    concepts: ManyConcepts | None,
    selections: dict[str, SparsitySelection],
    latent_rows: list[str],
    generations: list[dict[str, str]],
    scale: float,
    dict_dir: Path,
    plots: list[Path | None],
    times: dict[str, float],
) -> str:
    scale_note = (
        f"({cfg.steer.scale_fraction} x the median norm of the training shifts)"
        if cfg.steer.scale is None
        else "(steer.scale)"
    )
    lines = [
        "# ssae-lens demo: what the SSAE finds that the baselines do not",
        "",
        f"Model `{cfg.model}`, hook `{cfg.hook_name}` ({cfg.position} token), seeds "
        f'{cfg.seeds}, training defaults (`sparsity_target="auto"`: chosen from the shifts, '
        "no labels).",
        "",
    ]
    if concepts is not None:
        n_tr, n_te = concepts.counts
        lines += [
            f"## Many concepts: `{concepts.name}` at width {concepts.width}",
            "",
            f"{concepts.n_concepts} concepts (one-hot factor values), {n_tr} training and {n_te} "
            f"held-out pairs; every method gets {concepts.width} directions "
            f"({concepts.width // concepts.n_concepts} x the concepts: a user rarely knows the "
            "exact number).",
            "",
            "| method | seed-agreement MCC | label MCC (held out) | concept alignment |",
            "| --- | --- | --- | --- |",
        ]
        for name, method in concepts.scores.items():
            agree = f"{concepts.agreement[name]:.3f}" if name in concepts.agreement else "-"
            mcc = [s.label_mcc for s in method if s.label_mcc is not None]
            lines.append(
                f"| {name} | {agree} | {_fmt(mcc)} | {_fmt([s.alignment for s in method])} |"
            )
        lines += [
            "",
            "Seed agreement: the MCC between the directions fitted with different seeds (PCA "
            "is deterministic: -). Label MCC: the correlation of each concept's label with its "
            "best-matched code unit on held-out pairs (one to one), averaged over concepts. "
            "Concept alignment: as below. Without the sparsity constraint (aff) the code is "
            "free to rotate and the seeds disagree. Agreement alone is not identification: a "
            "method can find the same directions with every seed without them being the "
            "concepts, which label MCC and concept alignment tell apart.",
            "",
        ]
    lines += [
        f"## Steering: `{cfg.dataset}` at width {cfg.train['d_sae']}",
        "",
        f"{len(data.shifts_tr)} training pairs, {len(data.shifts_te)} held-out pairs.",
        "",
        "| method | seed-agreement MCC | concept alignment | steering accuracy (held out) |",
        "| --- | --- | --- | --- |",
    ]
    for name, method in scores.items():
        agree = f"{agreement[name]:.3f}" if name in agreement else "-"
        accuracy = [s.accuracy for s in method if s.accuracy is not None]
        lines.append(
            f"| {name} | {agree} | {_fmt([s.alignment for s in method])} | {_fmt(accuracy)} |"
        )
    lines += [
        "",
        "Median [min, max] over seeds. Concept alignment: the mean over concepts of the "
        "|cosine| between a concept's learned direction (matched one to one) and its supervised "
        "direction, the mean shift of pairs where only that concept changes (never shown to the "
        "unsupervised methods); mean-diff has one direction for every concept, so its value is "
        "the mean over concepts of that direction's |cosine|. Steering accuracy: cosine of "
        "`z/|z| + v/|v|` with `z~` on held-out pairs, `v` the sum of the directions of the "
        "concepts the pair changes (mean-diff: the mean training shift for every pair). With "
        "two concepts the unconstrained autoencoder and the mean shift do about as well: the "
        "many-concept part above is where the SSAE differs.",
        "",
        "## Latents of the published dictionary (seed 0)",
        "",
        "| latent | reads as | concept | held-out pairs with the strongest code |",
        "| --- | --- | --- | --- |",
        *latent_rows,
        "",
        f"## Greedy generations, steering at `{cfg.steer.positions}` positions with scale "
        f"{scale:.1f}",
        scale_note,
        "",
    ]
    keys = list(generations[0])
    lines.append("| " + " | ".join(keys) + " |")
    lines.append("|" + " --- |" * len(keys))
    for row in generations:
        lines.append("| " + " | ".join(row[k].replace("|", "/") for k in keys) + " |")
    if selections:
        lines += [
            "",
            '## The sparsity targets "auto" chose',
            "",
            "`select_sparsity_target` trains short SSAEs with two seeds over a grid of code "
            "budgets (target x width, the mean L1 norm of a code) and keeps the loosest budget "
            "where the constraint still binds and the seeds agree within 0.05 of the best "
            f"(`{plots[1].name if plots[1] else ''}`: agreement, hollow where the constraint "
            "no longer binds, and the unexplained fraction of the shifts).",
            "",
            "| data | chosen target | budget | search cost (fits) |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {title} | {sel.target:.4g} | {sel.budget:.3g} | {sel.search_fits:.2f} |"
            for title, sel in selections.items()
        ]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    lines += [
        "",
        f"Dictionary saved in SAELens format at `{dict_dir}` "
        "(`sae_lens.SAE.load_from_disk` returns an `ssae_lens.SSAE` after `import ssae_lens`).",
        f"Plots: {', '.join(f'`{p.name}`' for p in plots if p is not None)}. Time: "
        f"{sum(times.values()):.0f} s total ({timing}).",
    ]
    return "\n".join(lines) + "\n"


def _bars(ax: Axes, groups: dict[str, list[float]], labels: list[str], title: str) -> None:
    """Grouped bars: one group per method, one bar per metric (``labels``)."""
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [v[j] for v in groups.values()], width, label=label, color=f"C{j}")
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def _median(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else 0.0


def _plot(
    scores: dict[str, list[FitScores]], concepts: ManyConcepts | None, dataset: str
) -> Figure:
    """The many-concept scores first (seed agreement, label MCC), then the steering part's
    concept alignment and steering accuracy."""
    panels = 2 if concepts is not None else 1
    fig = Figure(figsize=(6 * panels, 3.6), layout="tight")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if concepts is not None:
        groups = {
            name: [
                concepts.agreement.get(name, float("nan")),
                _median([s.label_mcc for s in method]),
            ]
            for name, method in concepts.scores.items()
        }
        _bars(
            axes[0],
            groups,
            ["seed agreement", "label MCC"],
            f"{concepts.name}, {concepts.n_concepts} concepts, width {concepts.width}",
        )
    groups = {
        name: [_median([s.alignment for s in method]), _median([s.accuracy for s in method])]
        for name, method in scores.items()
    }
    _bars(axes[-1], groups, ["concept alignment", "steering accuracy"], f"{dataset}: steering")
    axes[-1].tick_params(axis="x", rotation=15)
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ssae_lens.demo [--config FILE] [--set key=value ...]``."""
    run_demo(parse_config_args(DemoConfig, argv, description="Run the ssae-lens demo."))


if __name__ == "__main__":
    main()
