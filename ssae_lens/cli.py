"""The ``ssae-lens`` command line: harvest, train, evaluate, steer, diagnose, publish, demo, paper.

Every command reads a YAML config (see ``configs/`` and :mod:`ssae_lens.config`), accepts
``--set key=value`` overrides (dotted keys for sections: ``--set train.d_sae=4``), writes its
results and the resolved ``config.yaml`` under ``<out_dir>/<command>/`` and prints where they
went. A pipeline is three commands on one config::

    ssae-lens harvest configs/binary.yaml
    ssae-lens train configs/binary.yaml
    ssae-lens evaluate configs/binary.yaml

The commands parse, call the library and write outputs. Each imports what it needs when it
runs (the ``ssae-lens`` process skips the eager imports of ``ssae_lens/__init__.py``), so
``--help`` answers without loading torch or SAELens.
"""

from __future__ import annotations

import functools
import json
import runpy
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ssae_lens._core.io import write_text_atomic
from ssae_lens.config import ConfigError, ExperimentConfig, load_config, save_config

if TYPE_CHECKING:
    from sae_lens import SAE

    from ssae_lens._core.backend import Model
    from ssae_lens.shift_data import ShiftData

app = typer.Typer(
    name="ssae-lens",
    help="Sparse Shift Autoencoders and steering for SAELens / TransformerLens.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags show no "<bool>" value they do not take
)

SHIFTS_FILENAME = "shifts.safetensors"

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file (see configs/).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config key (repeatable)."),
]


def _fail(message: str, code: int) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _clean_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Report a user's mistake (a bad config, value or file; a model that cannot be loaded) as
    one line naming it, with exit status 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (ValueError, KeyError, OSError) as e:  # ConfigError is a ValueError
            message = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
            _fail(message.splitlines()[0] if message else type(e).__name__, 2)

    return wrapper


def _experiment(config: Path, overrides: list[str] | None) -> ExperimentConfig:
    return load_config(config, ExperimentConfig, overrides or [])


def _results_dir(cfg: ExperimentConfig, command: str) -> Path:
    out = Path(cfg.out_dir) / command
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return out


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist.")
    return path


def _shift_data(
    cfg: ExperimentConfig, shifts: Path | None, model: Model | None = None
) -> ShiftData:
    """The shifts file given, or the config's ``harvest`` output (harvested now if missing,
    with ``model`` if given)."""
    from ssae_lens.shift_data import ShiftData, experiment_data

    if shifts is not None:
        return ShiftData.load(shifts)
    default = Path(cfg.out_dir) / "harvest" / SHIFTS_FILENAME
    if not default.exists():
        typer.echo(f"No {default}: harvesting first.")
        experiment_data(cfg, model).save(default)
        _results_dir(cfg, "harvest")
    return ShiftData.load(default)


def _ssae_dirs(cfg: ExperimentConfig, ssae: list[Path] | None) -> list[Path]:
    if ssae:
        return [_existing(p, "SSAE folder") for p in ssae]
    folders = [Path(cfg.out_dir) / "train" / f"seed{s}" for s in cfg.seeds]
    missing = [str(f) for f in folders if not (f / "cfg.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"no trained SSAE at {missing[0]}; run `ssae-lens train` first or pass --ssae."
        )
    return folders


def _load_sae(path: Path) -> SAE:
    from ssae_lens.ssae.loading import load  # registers the "ssae" architecture with SAELens

    return load(path)


# ------------------------------------------------------------------------------ commands


@app.command()
@_clean_errors
def harvest(config: ConfigArg, set_: SetOpt = None) -> None:
    """Harvest activation shifts of the config's pairs into a safetensors file.

    Example: ssae-lens harvest configs/binary.yaml --set harvest.batch_size=16
    """
    from ssae_lens.shift_data import experiment_data

    cfg = _experiment(config, set_)
    path = experiment_data(cfg).save(Path(cfg.out_dir) / "harvest" / SHIFTS_FILENAME)
    out = _results_dir(cfg, "harvest")
    typer.echo(f"Shifts: {path}\nConfig: {out / 'config.yaml'}")


@app.command()
@_clean_errors
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    shifts: Annotated[
        Path | None, typer.Option(help="Shifts file from `harvest` (default: harvest now).")
    ] = None,
) -> None:
    """Train one SSAE per seed on the shifts and save each in SAELens format.

    Example: ssae-lens train configs/binary.yaml --set seeds=[0,1] --set train.training_steps=500
    """
    from ssae_lens._core.io import atomic_dir, save_figure
    from ssae_lens.ssae.selection import select_sparsity_target
    from ssae_lens.ssae.training import train_ssae

    cfg = _experiment(config, set_)
    data = _shift_data(cfg, shifts)
    tcfg = cfg.training_config(d_in=data.shifts_tr.shape[1])
    out = _results_dir(cfg, "train")
    selection = None
    if tcfg.sparsity == "constraint" and tcfg.sparsity_target == "auto":  # once for all seeds
        selection = select_sparsity_target(data.shifts_tr, tcfg)
        plot = save_figure(selection.figure(), out / "sparsity_selection.png", dpi=100)
        typer.echo(
            f"sparsity_target auto: {selection.target:.4g} (code budget {selection.budget:.3g}; "
            f"curve: {plot})"
        )
    for seed in cfg.seeds:
        sae = train_ssae(
            data.shifts_tr,
            tcfg,
            seed=seed,
            selection=selection,
            model_name=data.metadata.get("model", cfg.model),
            hook_name=data.metadata.get("hook_name", cfg.hook_name),
            dataset=data.metadata.get("dataset", cfg.dataset),
        )
        folder = out / f"seed{seed}"
        with atomic_dir(folder, exists="replace") as tmp:
            sae.save_model(tmp)
        typer.echo(f"SSAE (seed {seed}, SAELens format): {folder}")
    typer.echo(f"Config: {out / 'config.yaml'}")


@app.command()
@_clean_errors
def evaluate(
    config: ConfigArg,
    set_: SetOpt = None,
    ssae: Annotated[
        list[Path] | None, typer.Option(help="SSAE folder(s) (default: the `train` outputs).")
    ] = None,
    shifts: Annotated[Path | None, typer.Option(help="Shifts file from `harvest`.")] = None,
) -> None:
    """Seed agreement (MCC), concept alignment, steering accuracy and label MCC, as JSON.

    Each SSAE's own numbers are also stored with it (``metadata.metrics`` in its cfg.json),
    where ``publish`` reads them for the model card.

    Example: ssae-lens evaluate configs/binary.yaml
    """
    from ssae_lens.compare import evaluate_ssaes

    cfg = _experiment(config, set_)
    folders = _ssae_dirs(cfg, ssae)
    saes = [_load_sae(p) for p in folders]
    data = _shift_data(cfg, shifts)
    metrics = evaluate_ssaes(saes, data)
    for i, (folder, sae) in enumerate(zip(folders, saes, strict=True)):
        sae.cfg.metadata.metrics = _own_metrics(metrics, i, data)
        write_text_atomic(folder / "cfg.json", json.dumps(sae.cfg.to_dict()))
    out = _results_dir(cfg, "evaluate")
    path = write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    for key, value in metrics.items():
        typer.echo(f"{key}: {value}")
    typer.echo(f"Metrics: {path}\nConfig: {out / 'config.yaml'}")


@app.command()
@_clean_errors
def steer(
    config: ConfigArg,
    set_: SetOpt = None,
    ssae: Annotated[
        Path | None, typer.Option(help="SSAE folder; steer with decoder row `steer.latent`.")
    ] = None,
    vector: Annotated[Path | None, typer.Option(help="A saved SteeringVector folder.")] = None,
) -> None:
    """Print unsteered and steered greedy generations side by side.

    Example: ssae-lens steer configs/binary.yaml --set steer.latent=1 --set steer.scale=40
    """
    from ssae_lens import models
    from ssae_lens.generation import generate_texts
    from ssae_lens.steering import SteeringVector
    from ssae_lens.steering import steer as steering

    cfg = _experiment(config, set_)
    scale = cfg.steer.scale
    if vector is not None:
        vec = SteeringVector.load(_existing(vector, "steering vector"))
        scale = vec.default_scale if scale is None else scale
    else:
        sae = _load_sae(ssae if ssae is not None else _ssae_dirs(cfg, None)[0])
        if not 0 <= cfg.steer.latent < sae.cfg.d_sae:
            raise ValueError(
                f"steer.latent={cfg.steer.latent} is out of range [0, {sae.cfg.d_sae})."
            )
        vec = SteeringVector.from_ssae(sae, cfg.steer.latent, hook_name=cfg.hook_name)
    model = models.load_model(cfg.model, backend=cfg.backend, device=cfg.device)
    if scale is None:  # an SSAE decoder row: a fraction of the typical shift
        scale = cfg.steer.scale_fraction * _shift_data(cfg, None, model).median_shift_norm()
    vec.check_compatible(model)

    def greedy() -> list[str]:
        texts = generate_texts(model, cfg.steer.prompts, cfg.steer.max_new_tokens, do_sample=False)
        return [" ".join(t.split()) for t in texts]

    plain = greedy()
    with steering(model, vec, scale=scale, positions=cfg.steer.positions):
        steered = greedy()
    rows = [
        {"prompt": p, "unsteered": u, "steered": s}
        for p, u, s in zip(cfg.steer.prompts, plain, steered, strict=True)
    ]
    out = _results_dir(cfg, "steer")
    path = write_text_atomic(
        out / "generations.json",
        json.dumps({"vector": repr(vec), "scale": scale, "rows": rows}, indent=2),
    )
    typer.echo(f"{vec!r} at scale {scale:g}")
    typer.echo(_side_by_side(rows))
    typer.echo(f"Generations: {path}\nConfig: {out / 'config.yaml'}")


@app.command()
@_clean_errors
def diagnose(
    config: ConfigArg,
    vector: Annotated[Path, typer.Option(help="A saved SteeringVector folder.")],
    sae: Annotated[Path, typer.Option(help="A SAELens SAE folder (cfg.json + weights).")],
    set_: SetOpt = None,
) -> None:
    """Diagnose how an SAE decomposes a steering vector; saves the plot and a JSON report.

    Example: ssae-lens diagnose configs/binary.yaml --vector runs/v --sae runs/sae
    """
    from ssae_lens.steering import SteeringVector
    from ssae_lens.steering.diagnostics import diagnose_decomposition

    cfg = _experiment(config, set_)
    vec = SteeringVector.load(_existing(vector, "steering vector"))
    dictionary = _load_sae(_existing(sae, "SAE folder"))
    report = diagnose_decomposition(
        dictionary, vec, scales=cfg.diagnose.scales, top_k=cfg.diagnose.top_k
    )
    out = _results_dir(cfg, "diagnose")
    plot = report.plot(out / "diagnose.png")
    path = write_text_atomic(
        out / "report.json", json.dumps(report.to_dict(), indent=2, default=str) + "\n"
    )
    typer.echo(report.summary())
    typer.echo(f"Report: {path}\nPlot: {plot}\nConfig: {out / 'config.yaml'}")


@app.command()
@_clean_errors
def publish(
    config: ConfigArg,
    set_: SetOpt = None,
    ssae: Annotated[
        Path | None, typer.Option(help="SSAE folder (default: the first seed of `train`).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write the folder only; upload nothing.")
    ] = False,
) -> None:
    """Write the SAELens Hub layout with a model card and upload it to the Hugging Face Hub.

    The card lists every dictionary in the repository with the model, hook point, dataset and
    metrics recorded in its own cfg.json (by `train` and `evaluate`).

    Example: ssae-lens publish configs/binary.yaml --set publish.repo_id=me/ssae-binary --dry-run
    """
    from ssae_lens.publish import publish as publish_sae

    cfg = _experiment(config, set_)
    if not cfg.publish.repo_id:
        raise ConfigError("publish.repo_id is not set; e.g. --set publish.repo_id=user/name.")
    sae = _load_sae(ssae if ssae is not None else _ssae_dirs(cfg, None)[0])
    out = _results_dir(cfg, "publish")
    dry = dry_run or cfg.publish.dry_run
    written = publish_sae(
        sae,
        cfg.publish.repo_id,
        cfg.publish.sae_id or sae.cfg.metadata.hook_name or cfg.hook_name,
        out_dir=out / cfg.publish.repo_id.replace("/", "--"),
        dry_run=dry,
    )
    action = "Written (dry run, nothing uploaded)" if dry else f"Uploaded to {cfg.publish.repo_id}"
    typer.echo(f"{action}: {written}\nConfig: {out / 'config.yaml'}")


@app.command()
@_clean_errors
def demo(config: ConfigArg, set_: SetOpt = None) -> None:
    """Run the main demo (harvest, 3-seed SSAEs, baselines, steering, report).

    Example: ssae-lens demo configs/demo.yaml --set seeds=[0,1]
    """
    from ssae_lens.demo import DemoConfig, run_demo

    cfg = load_config(config, DemoConfig, set_ or [])
    report = run_demo(cfg)
    typer.echo(f"Report: {report}\nConfig: {Path(cfg.out_dir) / 'config.yaml'}")


@app.command()
@_clean_errors
def paper(config: ConfigArg, set_: SetOpt = None) -> None:
    """Reproduce the SSAE paper's tables: runs benchmarks/paper.py of a repository checkout.

    Example: ssae-lens paper configs/paper.yaml --set seeds=[0,1] --set layers=[12]
    """
    script = _benchmark_script("paper.py")
    _existing(config, "config file")
    _run_script(script, ["--config", str(config), *(f"--set={s}" for s in set_ or [])])


# ------------------------------------------------------------------------------- helpers


def _own_metrics(metrics: dict[str, Any], i: int, data: ShiftData) -> dict[str, Any]:
    """SSAE ``i``'s entries of :func:`~ssae_lens.compare.evaluate_ssaes`'s metrics (the
    seed agreement is shared by the SSAEs evaluated together) and what they were computed on."""
    own: dict[str, Any] = {}
    for key, value in metrics.items():
        if key.endswith("_pairs"):
            continue
        own[key] = value[i] if isinstance(value, list) else value
    own["evaluated_on"] = f"{data.name}: {data.shifts_te.shape[0]} held-out shifts"
    return own


def _benchmark_script(name: str) -> Path:
    """``benchmarks/<name>`` of the repository this package is imported from, or of the
    current folder."""
    roots = [Path(__file__).resolve().parents[1], Path.cwd()]
    for root in roots:
        script = root / "benchmarks" / name
        if script.is_file():
            return script
    raise FileNotFoundError(
        f"benchmarks/{name} is not next to this installation or in {Path.cwd()}: the studies "
        "live in the ssae-lens repository, not in the package; run this command in a clone of "
        f"it (or there: python benchmarks/{name} --config configs/{Path(name).stem}.yaml)."
    )


def _run_script(script: Path, argv: Sequence[str]) -> None:
    """Run ``script`` as ``__main__`` with ``argv``, as ``python script argv`` would."""
    saved = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved


def _side_by_side(rows: list[dict[str, str]], width: int = 40) -> str:
    def cell(text: str) -> str:
        return text if len(text) <= width else text[: width - 3] + "..."

    lines = [f"{'prompt':<{width}} | {'unsteered':<{width}} | steered"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(
            f"{cell(r['prompt']):<{width}} | {cell(r['unsteered']):<{width}} | {cell(r['steered'])}"
        )
    return "\n".join(lines)


def main() -> None:
    """The ``ssae-lens`` console script."""
    app(prog_name="ssae-lens")


if __name__ == "__main__":
    sys.exit(main())
