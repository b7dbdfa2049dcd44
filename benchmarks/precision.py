"""What bfloat16 buys and costs on Gemma-3-270M: speed against float32, and accuracy.

For each precision (:mod:`ssae_lens._core.precision`: ``float32``, ``bf16-autocast``,
``bfloat16``), in one run:

1. **Speed** against float32, from interleaved repeats (each repeat times every precision in a
   rotated order; the ratio is float32 time / precision time within a repeat, reported as the
   median and range over repeats):
   - harvesting: :func:`harvest_activations` of ``n_texts`` sentences in batches of
     ``batch_size`` at ``hook_name``;
   - generation: :func:`generate_tokens`, ``gen_rows`` rows x ``gen_tokens`` new tokens;
   - SAE-TS scale calibration (:func:`calibrate_scales`) and effect collection
     (:func:`measure_effects`) at ``effect_hook`` with a small reference SAE
     (:func:`train_reference_sae` with the ``sae:`` settings, trained once on float32
     activations and cached; the same SAE reads every precision's rollouts).

   Harvesting and generation are then profiled once more (``torch.profiler``, CPU self time
   by kind of operator), to set each speed-up beside that of its matrix products alone.
2. **Activations and shifts**: relative error and cosine of the harvested activations and of
   the ``binary`` shifts against float32.
3. **SAE-TS effects**: correlation with the float32 effects measured with the same random
   numbers, next to the correlation of two float32 runs with different random numbers (the
   sampling noise the effects carry anyway); agreement of the calibrated scales and of the
   generated tokens.
4. **The SSAE**: per dataset (``binary``, ``categorical`` at ``hook_name``) and precision,
   SSAEs for each seed (sparsity target calibrated as in ``benchmarks/paper.py``), fitted and
   scored through :mod:`ssae_lens.compare`: seed agreement, concept alignment (against the
   precision's own supervised directions and against float32's), and the agreement of each
   seed's SSAE with float32's SSAE of the same seed.

    python benchmarks/precision.py [--set seeds=[0,1,2]] [--set repeats=3]

Writes ``<out_dir>/<name>.md``, ``<name>.json`` and ``<name>_config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssae_lens import models
from ssae_lens._core.io import write_json_atomic, write_text_atomic
from ssae_lens._core.precision import PRECISIONS, autocast, check_precision
from ssae_lens._core.threads import intra_op_threads
from ssae_lens.activations import harvest_activations
from ssae_lens.compare import calibrated_target, evaluate_fit, fit_ssae
from ssae_lens.config import (
    ReferenceSAESection,
    RunConfig,
    parse_config_args,
    save_config,
    train_options,
)
from ssae_lens.data import load_pairs
from ssae_lens.generation import generate_tokens
from ssae_lens.metrics import concept_alignment, seed_agreement_mcc
from ssae_lens.sae_ts import calibrate_scales, measure_effects
from ssae_lens.saes.reference import CORPUS_PROMPTS, train_reference_sae
from ssae_lens.shift_data import ShiftData, harvest_shift_data, label_encoding
from ssae_lens.ssae.model import TrainingSSAEConfig


@dataclass
class PrecisionConfig(RunConfig):
    """Every size of the study (saved next to its results as ``<name>_config.yaml``).

    ``precision`` (from :class:`RunConfig`) is not used: the study runs every precision.
    """

    out_dir: str = "benchmarks/results"
    name: str = "precision"
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    threads: int | None = 1  # torch intra-op threads while the study runs (None: unchanged)
    repeats: int = 3  # interleaved timing repeats
    n_texts: int = 256  # sentences harvested per timing
    batch_size: int = 32
    gen_rows: int = 32
    gen_tokens: int = 32
    effect_hook: str = "blocks.6.hook_resid_post"
    sae: ReferenceSAESection = field(
        default_factory=lambda: ReferenceSAESection(
            d_sae=512,
            n_tokens=100_000,
            corpus_options={"n_generated": 16, "generated_tokens": 32, "n_sentences": 500},
        )
    )
    n_directions: int = 16  # half decoder rows, half random directions
    effect_prompts: list[str] = field(default_factory=lambda: ["I think that", "The story begins"])
    effect_samples: int = 4
    effect_tokens: int = 16
    calibration_directions: int = 2
    datasets: list[str] = field(default_factory=lambda: ["binary", "categorical"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # TrainingSSAEConfig fields but d_sae and sparsity_target (calibrated as in paper.py).
    train: dict[str, Any] = field(default_factory=lambda: {"training_steps": 3000})
    seed: int = 0

    def __post_init__(self) -> None:
        self.train = train_options(self.train, excluded=("d_sae", "sparsity_target"))
        wanted = [check_precision(p) for p in self.precisions]
        # float32 is the reference every other precision is compared with: it runs first.
        self.precisions = ["float32", *(p for p in dict.fromkeys(wanted) if p != "float32")]


# ------------------------------------------------------------------------------ helpers


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _fmt(s: dict[str, float], digits: int = 3) -> str:
    if s["min"] == s["max"]:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def _row_errors(x: Tensor, reference: Tensor) -> dict[str, float]:
    """Per row: relative error ``|x - ref| / |ref|`` (median and worst) and the least cosine."""
    x, reference = x.double(), reference.double()
    relative = (x - reference).norm(dim=-1) / reference.norm(dim=-1)
    cosine = torch.cosine_similarity(x, reference, dim=-1)
    return {
        "median_rel_error": float(relative.median()),
        "max_rel_error": float(relative.max()),
        "min_cosine": float(cosine.min()),
    }


def _correlation(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# -------------------------------------------------------------------------------- speed


def speed_and_outputs(
    cfg: PrecisionConfig, by_precision: dict[str, Any], sae: Any
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Interleaved timings of every task and precision, and each task's last outputs."""
    texts = list(load_pairs("sentences").sources)[: cfg.n_texts]
    rows = [CORPUS_PROMPTS[i % len(CORPUS_PROMPTS)] for i in range(cfg.gen_rows)]
    gen = torch.Generator().manual_seed(cfg.seed)
    d_model, d_sae = sae.W_dec.shape[1], sae.W_dec.shape[0]
    half = cfg.n_directions // 2
    picked = torch.randperm(d_sae, generator=gen)[:half]
    directions = torch.cat(
        [sae.W_dec.detach()[picked], torch.randn(cfg.n_directions - half, d_model, generator=gen)]
    )
    directions = directions / directions.norm(dim=1, keepdim=True)
    calibration_texts = list(load_pairs("sentences").targets)[: cfg.calibration_directions]
    cal_dirs = directions[:: max(1, cfg.n_directions // cfg.calibration_directions)]
    cal_dirs = cal_dirs[: cfg.calibration_directions]

    float32 = by_precision["float32"]
    acts = harvest_activations(float32, calibration_texts, cfg.effect_hook, "all", progress=False)
    norm = float(acts.norm(dim=1).mean())
    grid = torch.logspace(math.log10(0.02 * norm), math.log10(2 * norm), 6)
    # One effect scale for every precision: the median float32 calibration.
    scale = float(
        calibrate_scales(
            float32, cal_dirs, cfg.effect_hook, reference_texts=calibration_texts, scales=grid
        ).median()
    )

    def effects(model: Any, precision: str, seed: int = cfg.seed) -> Tensor:
        return measure_effects(
            model, sae, directions, scale, prompts=cfg.effect_prompts,
            n_samples=cfg.effect_samples, max_new_tokens=cfg.effect_tokens, batch_size=64,
            seed=seed, precision=precision,
        )  # fmt: skip

    d_mlp = by_precision["float32"].cfg.d_mlp
    tokens_per_batch = sum(len(float32.to_tokens(t)[0]) for t in texts[: cfg.batch_size])
    x = torch.randn(tokens_per_batch, d_model, generator=gen)
    w = torch.randn(d_model, d_mlp, generator=gen) / d_model**0.5

    def matmul(model: Any, precision: str) -> None:
        a, b = (x.bfloat16(), w.bfloat16()) if precision == "bfloat16" else (x, w)
        with autocast(precision, x.device):
            for _ in range(20):
                a @ b

    tasks: dict[str, Callable[[Any, str], Any]] = {
        "matmul": matmul,
        "harvest": lambda m, p: harvest_activations(
            m, texts, cfg.hook_name, batch_size=cfg.batch_size, progress=False, precision=p
        ),
        "generate": lambda m, p: generate_tokens(
            m, rows, cfg.gen_tokens, seed=cfg.seed, precision=p
        )[0],
        "calibrate": lambda m, p: calibrate_scales(
            m,
            cal_dirs,
            cfg.effect_hook,
            reference_texts=calibration_texts,
            scales=grid,
            precision=p,
        ),  # fmt: skip
        "effects": effects,
    }
    # Warm-up: first-call allocations and kernel selection, outside the timings.
    for p in cfg.precisions:
        model = by_precision[p]
        matmul(model, p)
        harvest_activations(model, texts[:8], cfg.hook_name, progress=False, precision=p)
        generate_tokens(model, rows[:4], 2, seed=0, precision=p)

    seconds: dict[str, dict[str, list[float]]] = {t: {p: [] for p in cfg.precisions} for t in tasks}
    outputs: dict[str, dict[str, Any]] = {t: {} for t in tasks}
    for r in range(cfg.repeats):
        order = (
            cfg.precisions[r % len(cfg.precisions) :] + cfg.precisions[: r % len(cfg.precisions)]
        )
        for task, fn in tasks.items():
            for p in order:
                elapsed, out = _timed(lambda: fn(by_precision[p], p))  # noqa: B023
                seconds[task][p].append(elapsed)
                outputs[task][p] = out
                print(f"repeat {r} {task:9s} {p:13s} {elapsed:7.1f} s", flush=True)
    outputs["effects_other_seed"] = {"float32": effects(float32, "float32", cfg.seed + 1)}
    speed: dict[str, Any] = {
        "seconds": seconds,
        "ratio": {},
        "effect_scale": scale,
        "matmul_shape": [tokens_per_batch, d_model, d_mlp],
        "profile": {
            task: {p: op_profile(lambda: tasks[task](by_precision[p], p)) for p in cfg.precisions}  # noqa: B023
            for task in ("harvest", "generate")
        },
    }
    for task in tasks:
        base = seconds[task]["float32"]
        speed["ratio"][task] = {
            p: _spread([b / t for b, t in zip(base, seconds[task][p], strict=True)])
            for p in cfg.precisions
            if p != "float32"
        }
    return speed, outputs


def op_profile(fn: Callable[[], Any]) -> dict[str, float]:
    """Seconds of CPU self time per kind of operator while ``fn`` runs (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    kinds = {"matrix products": _MATMUL_OPS, "copies and casts": _COPY_OPS}
    out = dict.fromkeys([*kinds, "other"], 0.0)
    for event in prof.key_averages():
        kind = next((k for k, ops in kinds.items() if event.key in ops), "other")
        out[kind] += event.self_cpu_time_total / 1e6
    return out


def _profile_ratio(profile: dict[str, dict[str, float]], precision: str, kind: str) -> float:
    """float32's CPU self time over ``precision``'s, for one kind of operator or ``"all"``."""

    def seconds(p: str) -> float:
        return sum(profile[p].values()) if kind == "all" else profile[p][kind]

    return seconds("float32") / seconds(precision)


_MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
_COPY_OPS = ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")


def output_agreement(cfg: PrecisionConfig, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How far each precision's outputs are from float32's."""
    result: dict[str, Any] = {}
    new = slice(-cfg.gen_tokens, None)
    noise = _correlation(outputs["effects"]["float32"], outputs["effects_other_seed"]["float32"])
    result["effects_float32_other_random_numbers_correlation"] = noise
    for p in cfg.precisions:
        if p == "float32":
            continue
        tokens, base = outputs["generate"][p][:, new], outputs["generate"]["float32"][:, new]
        same = (tokens == base).all(dim=0)
        first = [
            int((row != ref).nonzero()[0]) if bool((row != ref).any()) else cfg.gen_tokens
            for row, ref in zip(tokens, base, strict=True)
        ]
        e, e32 = outputs["effects"][p], outputs["effects"]["float32"]
        per_direction = [_correlation(a, b) for a, b in zip(e, e32, strict=True)]
        scales, scales32 = outputs["calibrate"][p], outputs["calibrate"]["float32"]
        result[p] = {
            "activations": _row_errors(outputs["harvest"][p], outputs["harvest"]["float32"]),
            "generated_tokens_equal": float((tokens == base).float().mean()),
            "rows_identical": int((tokens == base).all(dim=1).sum()),
            "steps_identical_in_every_row": int(same.long().cumprod(0).sum()),
            "first_divergence_median": statistics.median(first),
            "effects_correlation": _correlation(e, e32),
            "effects_correlation_per_direction": _spread(per_direction),
            "effects_rel_error": float((e - e32).norm() / e32.norm()),
            "calibrated_scale_rel_diff": _spread(((scales - scales32).abs() / scales32).tolist()),
        }
    return result


# -------------------------------------------------------------------------------- SSAE


def ssae_study(cfg: PrecisionConfig, by_precision: dict[str, Any]) -> dict[str, Any]:
    """Shift errors and SSAE metrics per dataset and precision."""
    cache = models.cache_root() / "activations"
    fits_cache = models.cache_root() / "precision"
    result: dict[str, Any] = {}
    for name in cfg.datasets:
        pairs = load_pairs(name)
        data: dict[str, ShiftData] = {}
        for p in cfg.precisions:
            data[p] = harvest_shift_data(
                by_precision[p], pairs, cfg.hook_name, name=name, encoding=label_encoding(pairs),
                batch_size=cfg.batch_size, cache_dir=cache, progress=False, precision=p,
            )  # fmt: skip
        ref = data["float32"]
        shifts32 = torch.cat([ref.shifts_tr, ref.shifts_te])
        src32 = torch.cat([ref.src_tr, ref.src_te])
        entry: dict[str, Any] = {"pairs": len(shifts32), "concepts": len(ref.concepts)}
        fits: dict[str, list[Any]] = {}
        for p in cfg.precisions:
            d = data[p]
            k = len(d.concepts)
            base = TrainingSSAEConfig(d_in=d.shifts_tr.shape[1], d_sae=k, **cfg.train)
            fits[p] = []
            for seed in cfg.seeds:
                target = calibrated_target(d, base, seed=seed, cache_dir=fits_cache)
                tcfg = dataclasses.replace(base, sparsity_target=target)
                fits[p].append(fit_ssae(d, tcfg, seed=seed, cache_dir=fits_cache))
            scores = [evaluate_fit(f, d) for f in fits[p]]
            entry[p] = {
                "seed_agreement": _spread(seed_agreement_mcc([f.directions for f in fits[p]])[1]),
                "alignment": _spread([s.alignment for s in scores]),
                "alignment_vs_float32_reference": _spread(
                    [concept_alignment(f.directions, ref.reference) for f in fits[p]]
                ),
                "accuracy": _spread([s.accuracy for s in scores]),
            }
            if p != "float32":
                shifts = torch.cat([d.shifts_tr, d.shifts_te])
                entry[p]["shifts"] = _row_errors(shifts, shifts32)
                entry[p]["source_activations"] = _row_errors(torch.cat([d.src_tr, d.src_te]), src32)
                entry[p]["reference_cosine"] = _spread(
                    torch.cosine_similarity(d.reference, ref.reference, dim=-1).tolist()
                )
                entry[p]["same_seed_agreement_with_float32"] = _spread(
                    [
                        seed_agreement_mcc([a.directions, b.directions])[0]
                        for a, b in zip(fits[p], fits["float32"], strict=True)
                    ]
                )
        result[name] = entry
    return result


# ------------------------------------------------------------------------------ report


def _within(value: dict[str, float], spread: dict[str, float]) -> bool:
    """Whether a median lies within float32's seed range."""
    return spread["min"] - 1e-9 <= value["median"] <= spread["max"] + 1e-9


def checks(cfg: PrecisionConfig, results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The issue's must-shows, each with whether it holds and the numbers behind it."""
    out = []
    ratio = results["speed"]["ratio"]
    for task in ("harvest", "generate"):
        for p, r in ratio[task].items():
            products = _profile_ratio(results["speed"]["profile"][task], p, "matrix products")
            detail = f"{_fmt(r, 2)} (its matrix products alone: {products:.2f}x)"
            out.append((f"{task} >= 2x float32 ({p})", r["median"] >= 2.0, detail))
    for name in cfg.datasets:
        entry = results["ssae"][name]
        for p in cfg.precisions:
            if p == "float32":
                continue
            for metric in ("seed_agreement", "alignment_vs_float32_reference"):
                ok = _within(entry[p][metric], entry["float32"][metric])
                detail = f"{_fmt(entry[p][metric])} vs float32 {_fmt(entry['float32'][metric])}"
                out.append((f"{name} {metric.replace('_', ' ')} ({p})", ok, detail))
    return out


def render(cfg: PrecisionConfig, results: dict[str, Any]) -> str:
    """The Markdown report."""
    env = results["environment"]
    others = [p for p in cfg.precisions if p != "float32"]
    head = " | ".join(others)
    speed = results["speed"]
    lines = [
        "# bfloat16 on Gemma-3-270M: speed and accuracy against float32",
        "",
        f"Command: `{env['command']}` (`{cfg.name}_config.yaml` beside this file holds the "
        f"config). Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']}, "
        f"{env['threads']} intra-op thread(s); run at nice {env['nice']}, load average "
        f"{env['load_before']} before and {env['load_after']} after (above one per core, other "
        f"work shared the machine and absolute times are not comparable between runs): the "
        f"ratios come from {cfg.repeats} interleaved repeats (each repeat times every precision "
        f"back to back, in a rotated order). Total {results['seconds']:.0f} s.",
        "",
        "## Checks",
        "",
        "| check | holds | numbers |",
        "| --- | --- | --- |",
    ]
    for name, ok, detail in checks(cfg, results):
        lines.append(f"| {name} | {'yes' if ok else '**no**'} | {detail} |")
    m, k, n = speed["matmul_shape"]
    what = {
        "matmul": f"reference: 20 matrix products ({m} x {k}) @ ({k} x {n}), one batch's MLP "
        "input projection",
        "harvest": f"harvest_activations, {cfg.n_texts} sentences, batch {cfg.batch_size}, "
        f"`{cfg.hook_name}`",
        "generate": f"generate_tokens, {cfg.gen_rows} rows x {cfg.gen_tokens} new tokens (sampled)",
        "calibrate": f"calibrate_scales, {cfg.calibration_directions} directions x 6 scales x "
        f"{cfg.calibration_directions} sentences, `{cfg.effect_hook}`",
        "effects": f"measure_effects, {cfg.n_directions} directions x "
        f"{len(cfg.effect_prompts)} prompts x {cfg.effect_samples} samples x "
        f"{cfg.effect_tokens} tokens, `{cfg.effect_hook}`",
    }
    lines += [
        "",
        "## Speed (float32 time / precision time; median [range] over repeats)",
        "",
        f"| task | float32 s (median) | {head} |",
        "| --- | --- |" + " --- |" * len(others),
    ]
    for task, ratios in speed["ratio"].items():
        base = statistics.median(speed["seconds"][task]["float32"])
        cells = " | ".join(f"{_fmt(ratios[p], 2)}x" for p in others)
        lines.append(f"| {what[task]} | {base:.1f} | {cells} |")
    lines += [
        "",
        "Where the time goes, from one more run of each task under torch.profiler (seconds of "
        "CPU self time; autocast's casts count as copies), and the float32 / precision ratio "
        "of the matrix products alone and of everything. The matrix products' ratio is what "
        "this machine's bfloat16 kernels give at these shapes; the whole task reaches it only "
        "if the rest of its work speeds up as much.",
    ]
    for task, by_p in speed["profile"].items():
        lines += [
            "",
            f"| {what[task]} | matrix products | copies and casts | other | "
            "matrix products speed-up | overall speed-up |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for p, kinds in by_p.items():
            cells = " | ".join(f"{v:.2f}" for v in kinds.values())
            ratios = (
                " | ".join(f"{_profile_ratio(by_p, p, k):.2f}x" for k in ("matrix products", "all"))
                if p != "float32"
                else "- | -"
            )
            lines.append(f"| {p} | {cells} | {ratios} |")
    agree = results["agreement"]
    lines += [
        "",
        "## Outputs against float32",
        "",
        f"| quantity | {head} |",
        "| --- |" + " --- |" * len(others),
    ]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(agree[p]) for p in others) + " |")

    row(
        "harvested activations: relative error median / worst, least cosine",
        lambda a: (
            f"{a['activations']['median_rel_error']:.2e} / "
            f"{a['activations']['max_rel_error']:.2e}, {a['activations']['min_cosine']:.4f}"
        ),
    )
    row(
        "generated tokens equal to float32's (same random numbers)",
        lambda a: (
            f"{a['generated_tokens_equal']:.2f} ({a['rows_identical']}/{cfg.gen_rows} "
            f"rows identical; first difference at token {a['first_divergence_median']:g}, median)"
        ),
    )
    row(
        "calibrated scales: relative difference",
        lambda a: _fmt(a["calibrated_scale_rel_diff"]),
    )
    row(
        "SAE-TS effects: correlation with float32 (all entries)",
        lambda a: f"{a['effects_correlation']:.4f}",
    )
    row(
        "SAE-TS effects: correlation per direction",
        lambda a: _fmt(a["effects_correlation_per_direction"]),
    )
    row(
        "SAE-TS effects: relative error |y - y32| / |y32|",
        lambda a: f"{a['effects_rel_error']:.3f}",
    )
    lines += [
        "",
        "Sampling noise for scale: two float32 effect measurements with different random "
        "numbers correlate at "
        f"{agree['effects_float32_other_random_numbers_correlation']:.4f}. Effects at scale "
        f"{speed['effect_scale']:.0f} (median float32 calibration: LM loss +0.5 nats).",
    ]
    for name, entry in results["ssae"].items():
        lines += [
            "",
            f"## SSAE on {name} ({entry['pairs']} pairs, {entry['concepts']} concepts, "
            f"`{cfg.hook_name}`, seeds {cfg.seeds}; median [min-max] over seeds)",
            "",
            f"| quantity | float32 | {head} |",
            "| --- | --- |" + " --- |" * len(others),
        ]
        for metric, label in (
            ("seed_agreement", "seed agreement (pairs of seeds)"),
            ("alignment", "concept alignment (own supervised directions)"),
            ("alignment_vs_float32_reference", "concept alignment (float32's directions)"),
            ("accuracy", "steering accuracy"),
        ):
            cells = " | ".join(_fmt(entry[p][metric]) for p in cfg.precisions)
            lines.append(f"| {label} | {cells} |")
        lines.append(
            "| agreement with float32's SSAE of the same seed | - | "
            + " | ".join(_fmt(entry[p]["same_seed_agreement_with_float32"]) for p in others)
            + " |"
        )
        for key, label in (("shifts", "shifts"), ("source_activations", "source activations")):
            lines.append(
                f"| {label}: relative error median / worst, least cosine | - | "
                + " | ".join(
                    f"{entry[p][key]['median_rel_error']:.2e} / "
                    f"{entry[p][key]['max_rel_error']:.2e}, {entry[p][key]['min_cosine']:.4f}"
                    for p in others
                )
                + " |"
            )
        lines.append(
            "| supervised directions: cosine to float32's | - | "
            + " | ".join(_fmt(entry[p]["reference_cosine"], 4) for p in others)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _environment(cfg: PrecisionConfig) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": "python benchmarks/precision.py "
        f"--config {Path(cfg.out_dir) / (cfg.name + '_config.yaml')}",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "nice": os.nice(0),
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def run_precision(cfg: PrecisionConfig) -> Path:
    """Run the study and return the path of the Markdown report."""
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    save_config(cfg, out / f"{cfg.name}_config.yaml")
    with intra_op_threads(cfg.threads):
        env = _environment(cfg)
        float32 = models.load_model(cfg.model, device=cfg.device)
        by_precision: dict[str, Any] = {"float32": float32, "bf16-autocast": float32}
        if "bfloat16" in cfg.precisions:
            by_precision["bfloat16"] = models.load_model(
                cfg.model, device=cfg.device, precision="bfloat16"
            )
        sae = train_reference_sae(
            float32, cfg.effect_hook, seed=cfg.seed, device=cfg.device, **cfg.sae.kwargs()
        )
        speed, outputs = speed_and_outputs(cfg, by_precision, sae)
        results: dict[str, Any] = {
            "environment": env,
            "speed": speed,
            "agreement": output_agreement(cfg, outputs),
            "ssae": ssae_study(cfg, by_precision),
        }
    env["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    results["seconds"] = time.perf_counter() - t0
    results["checks"] = [list(c) for c in checks(cfg, results)]
    write_json_atomic(out / f"{cfg.name}.json", {"config": cfg.to_dict(), **results})
    report = render(cfg, results)
    path = write_text_atomic(out / f"{cfg.name}.md", report)
    print(report)
    return path


def main() -> None:
    run_precision(parse_config_args(PrecisionConfig, description=__doc__.split("\n")[0]))


if __name__ == "__main__":
    main()
