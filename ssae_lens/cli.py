"""The ``ssae-lens`` command line: harvest, train, evaluate, steer, diagnose, publish, demo, paper,
effects, sae-ts.

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

``harvest``, ``effects`` and ``sae-ts`` also run under ``torchrun`` unchanged
(``torchrun --nproc_per_node=N -m ssae_lens harvest CONFIG``): the processes share the work
(:mod:`ssae_lens.distributed`), rank 0 alone writes the outputs and prints, and the result is
that of one process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import runpy
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ssae_lens._core.io import write_text_atomic
from ssae_lens.config import ConfigError, ExperimentConfig, load_config, save_config

if TYPE_CHECKING:
    from sae_lens import SAE

    from ssae_lens._core.backend import Model
    from ssae_lens.distributed import DistributedContext
    from ssae_lens.sae_ts import EffectData
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
EFFECTS_FILENAME = "effects.safetensors"

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file (see configs/).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config key (repeatable)."),
]


def _fail(message: str, code: int, error: BaseException) -> None:
    typer.echo(f"Error: {message}", err=True)
    if _torchrun():  # torchrun's failure summary then names this rank and the error
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(error)
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
            _fail(message.splitlines()[0] if message else type(e).__name__, 2, e)

    return wrapper


def _torchrun() -> bool:
    """Whether ``torchrun`` (torch's elastic agent) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "TORCHELASTIC_ERROR_FILE" in os.environ


@contextmanager
def _ranks() -> Iterator[DistributedContext]:
    """The process group of a ``torchrun`` launch (nothing for one process)."""
    from ssae_lens.distributed import process_group

    with process_group() as ctx:
        yield ctx


def _echo(ctx: DistributedContext, message: str) -> None:
    """Print on rank 0 only."""
    if ctx.is_main:
        typer.echo(message)


def _model(cfg: ExperimentConfig, ctx: DistributedContext) -> Model:
    """``cfg.model`` on ``cfg.device`` (``cuda`` means this rank's GPU), converted by rank 0
    first when it is not cached yet."""
    from ssae_lens import models
    from ssae_lens.distributed import main_first

    device = cfg.device
    if device == "cuda" and ctx.device.type == "cuda":
        device = str(ctx.device)
    with main_first(ctx, "rank 0 to load the model"):
        return models.load_model(
            cfg.model, backend=cfg.backend, device=device, precision=cfg.precision
        )


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
    with _ranks() as ctx:
        data = experiment_data(cfg, None if cfg.dataset == "synthetic" else _model(cfg, ctx))
        if ctx.is_main:
            path = data.save(Path(cfg.out_dir) / "harvest" / SHIFTS_FILENAME)
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
    model = models.load_model(
        cfg.model, backend=cfg.backend, device=cfg.device, precision=cfg.precision
    )
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


@app.command()
@_clean_errors
def effects(config: ConfigArg, set_: SetOpt = None) -> None:
    """Measure SAE-TS effects of decoder rows, mixes of rows and random directions on an SAE.

    Example: ssae-lens effects configs/effects.yaml --set effects.n_decoder=64
    """
    cfg = _experiment(config, set_)
    with _ranks() as ctx:
        model = _model(cfg, ctx)
        sae, source = _effects_sae(cfg, model, ctx)
        data = _measure_effects(cfg, model, sae, source)
        if ctx.is_main:
            out = _results_dir(cfg, "effects")
            path = data.save(out / EFFECTS_FILENAME)
            s = data.summary()
            typer.echo(
                f"Effects of {s['n_directions']} directions on {data.effects.shape[1]} features "
                f"({s['tokens_per_direction']} tokens each): {path}\nConfig: {out / 'config.yaml'}"
            )


@app.command(name="sae-ts")
@_clean_errors
def sae_ts(config: ConfigArg, set_: SetOpt = None) -> None:
    """Fit the SAE-TS effect model and write a steering vector per target of sae_ts.targets.

    Example: ssae-lens sae-ts configs/effects.yaml --set "sae_ts.targets={f12: [12]}"
    """
    from ssae_lens.sae_ts import EffectData, sae_ts_vector

    cfg = _experiment(config, set_)
    if not cfg.sae_ts.targets:
        raise ConfigError("sae_ts.targets is empty; e.g. --set 'sae_ts.targets={f12: [12]}'.")
    with _ranks() as ctx:
        model = _model(cfg, ctx)
        sae, source = _effects_sae(cfg, model, ctx)
        t = cfg.sae_ts
        file = Path(t.effects) if t.effects else Path(cfg.out_dir) / "effects" / EFFECTS_FILENAME
        if t.effects_repo:
            data = EffectData.from_pretrained(
                t.effects_repo, sae=sae, subfolder=t.effects_subfolder
            )
        elif file.exists() or t.effects:
            data = EffectData.load(file, sae=sae)
        else:
            _echo(ctx, f"No {file}: measuring the effects first.")
            data = _measure_effects(cfg, model, sae, source)
            if ctx.is_main:
                data.save(file)
                _results_dir(cfg, "effects")
        if not ctx.is_main:
            return
        d_sae = data.effects.shape[1]
        for name, target in t.targets.items():
            bad = [f for f in target if f >= d_sae]
            if bad:
                raise ValueError(f"sae_ts.targets.{name}: features {bad} >= d_sae = {d_sae}.")
        effect_model, report = data.fit(
            weight_decay=t.weight_decay, test_fraction=t.test_fraction, seed=t.seed
        )
        out = _results_dir(cfg, "sae-ts")
        effect_model.save(out / "effect_model.safetensors")
        write_text_atomic(out / "fit.json", json.dumps(report.to_dict(), indent=2) + "\n")
        typer.echo(
            f"Effect model: {out / 'effect_model.safetensors'} (held-out R^2 {report.r2:.3f}, "
            f"weight decay {effect_model.provenance['weight_decay']:g})"
        )
        scale = float(data.scales.median())
        for name, target in t.targets.items():
            vector = sae_ts_vector(effect_model, target, bias_weight=t.bias_weight)
            vector.default_scale = scale  # the scale the effects were measured at
            folder = out / "vectors" / name
            vector.save(folder)
            typer.echo(f"{name}: {vector!r} -> {folder}")
        typer.echo(f"Config: {out / 'config.yaml'}")


def _effects_sae(
    cfg: ExperimentConfig, model: Model, ctx: DistributedContext
) -> tuple[SAE, dict[str, Any]]:
    """The SAE of the ``effects:`` section and how to load it again."""
    from sae_lens import SAE

    from ssae_lens.distributed import main_first

    e = cfg.effects
    if e.sae_path:
        sae, source = _load_sae(_existing(Path(e.sae_path), "SAE folder")), {"path": e.sae_path}
    elif e.sae_release:
        sae = SAE.from_pretrained(e.sae_release, e.sae_id, device=str(model.cfg.device))
        source = {"release": e.sae_release, "sae_id": e.sae_id}
    else:
        from ssae_lens.saes.reference import train_reference_sae

        options = {**cfg.sae.kwargs(), "seed": e.seed}
        with main_first(ctx, "rank 0 to train the reference SAE"):
            sae = train_reference_sae(model, cfg.hook_name, device=str(model.cfg.device), **options)
        source = {"reference": {"model": cfg.model, "hook_name": cfg.hook_name, **options}}
    read = sae.cfg.metadata.hook_name
    if read and read != cfg.hook_name:
        raise ValueError(
            f"The SAE reads {read} but hook_name is {cfg.hook_name}: set hook_name: {read}."
        )
    sae.cfg.metadata.hook_name = cfg.hook_name
    return sae, source


def _measure_effects(
    cfg: ExperimentConfig,
    model: Model,
    sae: SAE,
    source: dict[str, Any],
) -> EffectData:
    """The effect data the ``effects:`` section describes (resumable chunks under
    ``<out_dir>/effects/``, shared by the ranks of a ``torchrun`` launch)."""
    import torch

    from ssae_lens._core.cache import dictionary_fingerprint, model_fingerprint, tensor_digest
    from ssae_lens.data import attribute_texts
    from ssae_lens.sae_ts import EFFECT_PROMPTS, EffectData, calibrate_scales, effect_directions
    from ssae_lens.sae_ts.calibration import DEFAULT_LOSS_INCREASE

    e = cfg.effects
    first = list(dict.fromkeys([*e.features, *(f for t in cfg.sae_ts.targets.values() for f in t)]))
    directions, features = effect_directions(
        sae,
        n_decoder=e.n_decoder,
        n_mix=e.n_mix,
        n_random=e.n_random,
        first=first,
        generator=torch.Generator().manual_seed(e.seed),
    )
    kinds = {"decoder rows": len(features), "mixes of 2-4 rows": e.n_mix, "random": e.n_random}
    weights = model_fingerprint(model) + dictionary_fingerprint(sae)

    def work(kind: str, *keys: Any) -> Path:
        """A resumable chunk folder, named by what changes its values (a rerun with other
        settings gets its own)."""
        digest = hashlib.sha256((weights + json.dumps(keys, sort_keys=True)).encode())
        return Path(cfg.out_dir) / "effects" / f"{kind}-{digest.hexdigest()[:16]}"

    if e.scale is not None:
        scales = torch.tensor(float(e.scale))
        protocol = f"one given scale, {e.scale:g}, for every direction"
    else:
        texts = e.calibration_texts or attribute_texts("tense", n=4, seed=e.seed)[0]
        calibrated = (
            directions if e.calibrate == "each" else _spread(directions, e.calibration_directions)
        )
        target = dict(target_loss=e.target_loss, target_loss_increase=e.target_loss_increase)
        found = calibrate_scales(
            model,
            calibrated,
            cfg.hook_name,
            reference_texts=texts,
            **target,
            chunk_size=e.chunk_size if e.calibrate == "each" else 1,  # never by world size
            cache_dir=work("calibration", tensor_digest(calibrated), texts, target),
        )
        goal = (
            f"reaches {e.target_loss} nats"
            if e.target_loss is not None
            else f"rises by {e.target_loss_increase or DEFAULT_LOSS_INCREASE} nats"
        )
        what = f"the LM loss on {len(texts)} reference texts {goal}"
        if e.calibrate == "each":
            scales, protocol = found, f"each direction's own scale at which {what}"
        else:
            scales = found.median()
            protocol = (
                f"one scale for every direction: the median over {len(calibrated)} of them of "
                f"the scale at which {what} (calibrate_scales)"
            )
    options = dict(
        prompts=EFFECT_PROMPTS if e.prompts is None else e.prompts,
        n_samples=e.n_samples,
        total_tokens=e.total_tokens,
        max_new_tokens=e.max_new_tokens,
        positions=e.positions,
        batch_size=e.batch_size,
        seed=e.seed,
        do_sample=True,
        temperature=e.temperature,
        top_k=e.top_k,
        steer_readout=e.readout == "steered",
        chunk_size=e.chunk_size,
    )
    return EffectData.measure(
        model,
        sae,
        directions,
        scales,
        source=source,
        scale_protocol=protocol,
        kinds=kinds,
        cache_dir=work("chunks", tensor_digest(directions, scales), options),
        **options,
    )


def _spread(directions: Any, k: int) -> Any:
    """``k`` rows spread evenly over ``directions`` (so every kind is represented)."""
    n = directions.shape[0]
    k = max(1, min(k, n))
    return directions[[i * n // k for i in range(k)]]


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
    """The ``ssae-lens`` console script (``python -m ssae_lens``, also under ``torchrun``)."""
    if _torchrun():
        # torchrun's failure summary then shows the failing rank's error, not only its exit
        # code; imported here so that --help outside torchrun does not load torch.
        from torch.distributed.elastic.multiprocessing.errors import record

        record(app)(prog_name="ssae-lens")
        return
    app(prog_name="ssae-lens")


if __name__ == "__main__":
    sys.exit(main())
