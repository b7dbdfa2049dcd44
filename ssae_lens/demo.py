"""The main job, end to end on the embedded Gemma-3-270M (``make demo``, ``ssae-lens demo``).

Harvest the ``binary`` pairs (language and gender), train SSAEs with several seeds and the
unconstrained autoencoder ("aff"), score them against the mean shift and the supervised
directions (:mod:`ssae_lens.compare`), save the seed-0 dictionary in SAELens format, name its
latents ("French", "feminine") and generate steered text with each. Writes ``report.md``,
``config.yaml``, ``demo.png`` and the dictionary to ``out_dir``.

    python -m ssae_lens.demo [--config configs/demo.yaml] [--set seeds=[0,1]]

A rerun reuses the converted model, the activation cache and the trained SSAEs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from transformer_lens import HookedTransformer

from ssae_lens import models
from ssae_lens._core.io import save_figure, write_text_atomic
from ssae_lens.compare import (
    Fit,
    FitScores,
    aff_config,
    evaluate_fit,
    fit_mean_diff,
    fit_ssae,
    fit_supervised,
)
from ssae_lens.config import ExperimentConfig, parse_config_args, save_config
from ssae_lens.generation import generate_texts
from ssae_lens.metrics import seed_agreement_mcc
from ssae_lens.shift_data import ShiftData, experiment_data
from ssae_lens.steering import SteeringVector, steer

__all__ = ["DemoConfig", "run_demo"]

CONCEPT_NAMES = {"language": "French", "gender": "feminine"}


@dataclass
class DemoConfig(ExperimentConfig):
    """The demo's config: an :class:`~ssae_lens.config.ExperimentConfig` writing to
    ``runs/demo`` (``configs/demo.yaml``)."""

    out_dir: str = "runs/demo"


def run_demo(cfg: ExperimentConfig) -> Path:
    """Run the demo and return the path of the Markdown report."""
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    save_config(cfg, out / "config.yaml")
    model = models.load_model(cfg.model, device=cfg.device)
    data = experiment_data(cfg, model)
    t_harvest = time.perf_counter() - t0

    ssae_cfg = cfg.training_config(d_in=data.shifts_tr.shape[1])
    fits = {
        name: [fit_ssae(data, c, seed=s, cache_dir=out / "models") for s in cfg.seeds]
        for name, c in (("SSAE", ssae_cfg), ("aff", aff_config(ssae_cfg)))
    }
    fits["mean-diff"] = [fit_mean_diff(data)]
    fits["supervised (oracle)"] = [fit_supervised(data)]
    scores = {name: [evaluate_fit(f, data) for f in method] for name, method in fits.items()}
    agreement = {
        name: seed_agreement_mcc([f.directions for f in method])[0]
        for name, method in fits.items()
        if len(method) > 1
    }

    best = fits["SSAE"][0]
    dict_dir = _save_dictionary(best, data, out / "ssae")
    scale = cfg.steer.scale
    if scale is None:
        scale = cfg.steer.scale_fraction * data.median_shift_norm()
    latent_rows, vectors = _latents(best, data)
    generations = _generations(model, cfg.steer.prompts, vectors, scale, cfg)

    plot_path = save_figure(_plot(scores), out / "demo.png", dpi=120)
    report = _report(
        cfg,
        data,
        scores,
        agreement,
        latent_rows,
        generations,
        scale,
        dict_dir,
        plot_path,
        (t_harvest, time.perf_counter() - t0),
    )
    path = write_text_atomic(out / "report.md", report)
    print(report)
    print(f"\nReport: {path}\nDictionary (SAELens format): {dict_dir}\nPlot: {plot_path}")
    return path


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
    model: HookedTransformer,
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
    latent_rows: list[str],
    generations: list[dict[str, str]],
    scale: float,
    dict_dir: Path,
    plot_path: Path,
    times: tuple[float, float],
) -> str:
    scale_note = (
        f"({cfg.steer.scale_fraction} x the median norm of the training shifts)"
        if cfg.steer.scale is None
        else "(steer.scale)"
    )
    lines = [
        "# ssae-lens demo: SSAE on language x gender word pairs",
        "",
        f"Model `{cfg.model}`, hook `{cfg.hook_name}` ({cfg.position} token), dataset "
        f"`{cfg.dataset}`: {len(data.shifts_tr)} training pairs, {len(data.shifts_te)} held-out "
        f"pairs; seeds {cfg.seeds}; SSAE width {cfg.train['d_sae']}.",
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
        "concepts the pair changes (mean-diff: the mean training shift for every pair).",
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
    lines += [
        "",
        f"Dictionary saved in SAELens format at `{dict_dir}` "
        "(`sae_lens.SAE.load_from_disk` returns an `ssae_lens.SSAE` after `import ssae_lens`).",
        f"Plot: `{plot_path.name}`. Time: {times[1]:.0f} s total "
        f"({times[0]:.0f} s model + harvest).",
    ]
    return "\n".join(lines) + "\n"


def _plot(scores: dict[str, list[FitScores]]) -> Figure:
    names = list(scores)
    fig = Figure(figsize=(9, 3.5), layout="tight")
    for ax, attr, title in zip(
        fig.subplots(1, 2),
        ("alignment", "accuracy"),
        ("concept alignment", "steering accuracy (held out)"),
        strict=True,
    ):
        values = [[getattr(s, attr) for s in scores[n]] for n in names]
        heights = [statistics.median(v) if None not in v else 0.0 for v in values]
        ax.bar(names, heights, color=[f"C{i}" for i in range(len(names))])
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=20)
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ssae_lens.demo [--config FILE] [--set key=value ...]``."""
    run_demo(parse_config_args(DemoConfig, argv, description="Run the ssae-lens demo."))


if __name__ == "__main__":
    main()
