"""Processes against threads: SAE-TS effect collection and harvesting on Gemma-3-270M.

On a machine with ``2 * threads`` cores, compares in one run the throughput of

- 2 processes x ``threads`` threads each (``torchrun --nproc_per_node=2``, the work shared
  through :mod:`ssae_lens.distributed`), against
- 1 process x ``2 * threads`` threads (torch's intra-op threading),

for :func:`~ssae_lens.sae_ts.measure_effects` (tokens generated per second, readout included)
and for :func:`~ssae_lens.harvest_shifts` (tokens fed per second). The two configurations run
back to back, alternating, ``repeats`` times each; every launch loads the model, then times
the harvest and the effects between barriers (model loading is not timed). The 1-minute load
average before each launch is recorded: on a shared machine the other processes take their
share of the cores too. The SAE is a seeded random 2048-wide StandardSAE (the cost of
encoding does not depend on its training).

    python benchmarks/distributed.py [--config FILE] [--set n_directions=64]

Writes ``<out_dir>/<name>.md`` and ``<name>.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ssae_lens._core.io import write_text_atomic
from ssae_lens._core.threads import intra_op_threads
from ssae_lens.config import RunConfig, parse_config_args, save_config


@dataclass
class DistributedBenchConfig(RunConfig):
    """Sizes of the benchmark (saved next to its results)."""

    hook_name: str = "blocks.6.hook_resid_post"
    out_dir: str = "benchmarks/results"
    name: str = "distributed"
    threads: int = 1  # t: threads per process in the 2-process configuration
    repeats: int = 2  # launches of each configuration, alternating
    # processes x threads in units of t: the comparison (1x2 vs 2x1) and a 1x1 reference
    configurations: list[str] = field(default_factory=lambda: ["1x2", "2x1", "1x1"])
    # effects: directions x prompts x samples rollouts of `tokens` tokens
    n_directions: int = 16
    chunk_size: int = 4  # directions per chunk (each rank's unit of work)
    prompts: list[str] = field(default_factory=lambda: ["I think that", "The story begins"])
    samples: int = 2
    tokens: int = 8
    batch_size: int = 64  # rollouts per generate call (a chunk is 4 x 4 = 16 of them)
    d_sae: int = 2048
    scale: float = 200.0
    # harvest: the pairs of a built-in dataset, last token
    harvest_dataset: str = "sentences"
    harvest_pairs: int = 200  # the first pairs of the dataset
    harvest_batch_size: int = 32
    seed: int = 0


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:  # one launch: time and append the result to the given file
        i = argv.index("--worker")
        results = argv[i + 1]
        cfg = parse_config_args(DistributedBenchConfig, argv[:i] + argv[i + 2 :])
        worker(cfg, Path(results))
        return
    cfg = parse_config_args(DistributedBenchConfig, argv, description=__doc__.split("\n")[0])
    drive(cfg)


def drive(cfg: DistributedBenchConfig) -> None:
    """Launch the configurations alternately and write the report."""
    out = Path(cfg.out_dir)
    save_config(cfg, out / f"{cfg.name}_config.yaml")
    runs = []
    with tempfile.TemporaryDirectory(prefix="ssae-lens-bench-") as tmp:
        config, results = Path(tmp) / "config.yaml", Path(tmp) / "results.jsonl"
        save_config(cfg, config)
        for repeat in range(cfg.repeats):
            for name in cfg.configurations:
                load = os.getloadavg()[0]
                start = time.perf_counter()
                launch(cfg, name, config, results)
                lines = results.read_text().splitlines()
                run = json.loads(lines[-1])
                run.update(configuration=name, repeat=repeat, load_before=load)
                run["launch_s"] = time.perf_counter() - start
                runs.append(run)
                print(json.dumps(run), flush=True)
    report(cfg, runs, os.getloadavg())


def launch(cfg: DistributedBenchConfig, name: str, config: Path, results: Path) -> None:
    procs, per_process = (int(part) for part in name.split("x"))
    threads = cfg.threads * per_process
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    script = [str(Path(__file__)), "--config", str(config), "--worker", str(results)]
    script += ["--set", f"threads={threads}"]
    if procs == 1:
        cmd = [sys.executable, *script]
    else:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        cmd = [sys.executable, *launcher, *script]
    subprocess.run(cmd, env=env, check=True)


def worker(cfg: DistributedBenchConfig, results: Path) -> None:
    """Time the harvest and the effects in this launch (every rank); rank 0 records them."""
    from sae_lens import StandardSAE, StandardSAEConfig

    from ssae_lens.activations import PairedActivationStore, harvest_shifts
    from ssae_lens.data import load_pairs
    from ssae_lens.distributed import barrier, process_group
    from ssae_lens.generation import generate_tokens
    from ssae_lens.models import load_model
    from ssae_lens.sae_ts import measure_effects
    from ssae_lens.steering import steer_rows

    with intra_op_threads(cfg.threads), process_group() as ctx:
        model = load_model(cfg.model, device=cfg.device)
        sae_cfg = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=cfg.d_sae)
        sae_cfg.metadata.hook_name = cfg.hook_name
        sae = StandardSAE(sae_cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            for param in sae.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) / model.cfg.d_model**0.5)
        directions = torch.randn(cfg.n_directions, model.cfg.d_model, generator=gen)
        directions /= directions.norm(dim=1, keepdim=True)
        pairs = load_pairs(cfg.harvest_dataset)
        pairs = pairs.subset(range(min(cfg.harvest_pairs, len(pairs))))
        timings = {}
        # Warm-up, not timed: the first passes of a process pay one-time costs (kernels,
        # allocations) that would otherwise dominate the short timed runs.
        harvest_shifts(model, pairs.subset(range(8)), cfg.hook_name, progress=False)
        with torch.no_grad(), steer_rows(model, directions[:2], cfg.hook_name, cfg.scale):
            generate_tokens(model, cfg.prompts[:1] * 2, 2, do_sample=False)

        barrier(ctx)
        start = time.perf_counter()
        store = PairedActivationStore(
            model, pairs, cfg.hook_name, batch_size=cfg.harvest_batch_size, progress=False
        )
        store.harvest()
        barrier(ctx)
        timings["harvest_s"] = time.perf_counter() - start
        timings["harvest_tokens"] = store.n_tokens

        barrier(ctx)
        start = time.perf_counter()
        measure_effects(
            model,
            sae,
            directions,
            cfg.scale,
            prompts=cfg.prompts,
            n_samples=cfg.samples,
            max_new_tokens=cfg.tokens,
            batch_size=cfg.batch_size,
            chunk_size=cfg.chunk_size,
            seed=cfg.seed,
        )
        barrier(ctx)
        timings["effects_s"] = time.perf_counter() - start
        # generated tokens: every direction's rollouts and the unsteered baseline's
        rollouts = len(cfg.prompts) * cfg.samples
        timings["effects_tokens"] = (cfg.n_directions + 1) * rollouts * cfg.tokens
        if ctx.is_main:
            row = dict(procs=ctx.world_size, threads=torch.get_num_threads(), **timings)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")


def report(cfg: DistributedBenchConfig, runs: list[dict], load_after: tuple) -> None:
    """Tokens/s of every launch, the ratios of the mean rates, the load averages."""
    rates: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for task in ("effects", "harvest"):
            rate = run[f"{task}_tokens"] / run[f"{task}_s"]
            rates.setdefault(task, {}).setdefault(run["configuration"], []).append(rate)
    mean = {task: {c: statistics.mean(r) for c, r in by.items()} for task, by in rates.items()}
    pairs = [("2x1", "1x2"), ("2x1", "1x1"), ("1x2", "1x1")]
    pairs = [(a, b) for a, b in pairs if a in cfg.configurations and b in cfg.configurations]
    ratios = {task: {f"{a}/{b}": mean[task][a] / mean[task][b] for a, b in pairs} for task in mean}
    t = cfg.threads

    def label(name: str) -> str:
        procs, per = (int(x) for x in name.split("x"))
        return f"{procs} proc x {per * t} thread{'s' if per * t > 1 else ''}"

    lines = [
        f"# Processes vs threads on {cfg.model} ({os.cpu_count()} cores)",
        "",
        f"Command: `python benchmarks/distributed.py --config "
        f"{Path(cfg.out_dir) / f'{cfg.name}_config.yaml'}`. Configurations (processes x "
        f"threads): {', '.join(label(c) for c in cfg.configurations)}; 2 processes run under "
        "`torchrun --standalone --nproc_per_node=2` and share the work through "
        f"`ssae_lens.distributed`. Launched alternately, {cfg.repeats} launches each; every "
        "launch loads the model and warms up (a short harvest and generation) before the "
        "timed part, which runs between barriers.",
        "",
        f"- effects: `measure_effects` of {cfg.n_directions} random unit directions at "
        f"{cfg.hook_name} (chunks of {cfg.chunk_size}), {len(cfg.prompts)} prompts x "
        f"{cfg.samples} samples x {cfg.tokens} tokens, unsteered readout, a random "
        f"{cfg.d_sae}-wide StandardSAE; tokens = generated tokens, the baseline's included.",
        f"- harvest: `PairedActivationStore` of the first {cfg.harvest_pairs} "
        f"{cfg.harvest_dataset} pairs at "
        f"{cfg.hook_name}, last token, batch {cfg.harvest_batch_size}; tokens = tokens fed.",
        "",
        "| task | "
        + " | ".join(f"{label(c)} (tokens/s per launch)" for c in cfg.configurations)
        + " | "
        + " | ".join(f"ratio {a} / {b}" for a, b in pairs)
        + " |",
        "|---|" + "---|" * (len(cfg.configurations) + len(pairs)),
    ]
    for task, by in rates.items():
        cells = [", ".join(f"{r:.3g}" for r in by[c]) for c in cfg.configurations]
        cells += [f"**{ratios[task][f'{a}/{b}']:.2f}**" for a, b in pairs]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    loads = ", ".join(f"{run['configuration']} {run['load_before']:.1f}" for run in runs)
    lines += [
        "",
        "Ratios are of the mean tokens/s over the launches of each configuration.",
        f"1-minute load average before each launch, in order: {loads}; after the last: "
        f"{load_after[0]:.1f}. The machine was shared with other jobs.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(cfg.out_dir)
    write_text_atomic(out / f"{cfg.name}.md", text)
    payload = dict(runs=runs, ratios=ratios, load_after=list(load_after), config=cfg.to_dict())
    write_text_atomic(out / f"{cfg.name}.json", json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
