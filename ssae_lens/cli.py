"""The ``ssae-lens`` command line: harvest, train, evaluate, steer, diagnose, publish, demo.

Every command reads a YAML config (see ``configs/`` and :mod:`ssae_lens.config`), accepts
``--set key=value`` overrides (dotted keys for sections: ``--set train.d_sae=4``), writes its
results and the resolved ``config.yaml`` under ``<out_dir>/<command>/`` and prints where they
went. A pipeline is three commands on one config::

    ssae-lens harvest configs/binary.yaml
    ssae-lens train configs/binary.yaml
    ssae-lens evaluate configs/binary.yaml
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ssae_lens import models
from ssae_lens._core.io import atomic_path, write_text_atomic
from ssae_lens.config import ConfigError, ExperimentConfig, load_config, save_config

app = typer.Typer(
    name="ssae-lens",
    help="Sparse Shift Autoencoders and steering for SAELens / TransformerLens.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SHIFTS_FILENAME = "shifts.safetensors"
_SPLITS = ("train", "test")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file (see configs/).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: key=value (repeatable)."),
]


def _fail(message: str, code: int) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _clean_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Report a bad config (exit 2) or bad input (exit 1) as one line instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except ConfigError as e:
            _fail(str(e), 2)
        except (FileNotFoundError, ValueError, KeyError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            _fail(str(message).splitlines()[0] if str(message) else type(e).__name__, 1)

    return wrapper


def _experiment(config: Path, overrides: list[str] | None) -> ExperimentConfig:
    return load_config(config, ExperimentConfig, overrides or [])


def _results_dir(cfg: Any, command: str) -> Path:
    out = Path(cfg.out_dir) / command
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return out


def _existing(path: Path | None, what: str) -> Path | None:
    if path is not None and not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist.")
    return path


# ---------------------------------------------------------------------------------- data


def _load_dataset(cfg: ExperimentConfig) -> Any:
    from ssae_lens.data import ConceptPairs, load_pairs

    if cfg.dataset.endswith(".jsonl"):
        return ConceptPairs.from_jsonl(_existing(Path(cfg.dataset), "pairs file"))
    if cfg.dataset.endswith(".csv"):
        return ConceptPairs.from_csv(_existing(Path(cfg.dataset), "pairs file"))
    return load_pairs(cfg.dataset)


def harvest_to_file(cfg: ExperimentConfig, path: Path) -> Path:
    """Harvest (or sample, for ``synthetic``) train/test shifts and save them to ``path``.

    Keys: ``{split}.shifts`` ``(n, d)``, and where available ``{split}.source`` /
    ``{split}.target`` (activations of both sides) and ``{split}.labels`` ``(n, c)``.
    """
    tensors: dict[str, Tensor] = {}
    meta = {"dataset": cfg.dataset, "model": cfg.model, "hook_name": cfg.hook_name}
    if cfg.dataset == "synthetic":
        from ssae_lens.data.synthetic import make_synthetic_shifts

        data = make_synthetic_shifts(**cfg.synthetic)
        n_test = round(len(data.shifts) * cfg.harvest.test_fraction)
        gen = torch.Generator().manual_seed(cfg.harvest.split_seed)
        order = torch.randperm(len(data.shifts), generator=gen)
        for split, idx in zip(_SPLITS, (order[n_test:], order[:n_test]), strict=True):
            tensors[f"{split}.shifts"] = data.shifts[idx]
            tensors[f"{split}.labels"] = data.concept_changes[idx]
        tensors["mixing"] = data.mixing
        meta["concepts"] = json.dumps([f"concept_{i}" for i in range(data.mixing.shape[1])])
    else:
        from ssae_lens.activations import harvest_shifts

        pairs = _load_dataset(cfg)
        model = models.load_model(cfg.model)
        splits = pairs.split(cfg.harvest.test_fraction, seed=cfg.harvest.split_seed)
        cache = models.cache_root() / "activations" if cfg.harvest.use_cache else None
        concepts = pairs.concepts
        for split, part in zip(_SPLITS, splits, strict=True):
            source, target = harvest_shifts(
                model,
                part,
                cfg.hook_name,
                cfg.position,
                batch_size=cfg.harvest.batch_size,
                cache_dir=cache,
                return_both=True,
            )
            tensors[f"{split}.source"], tensors[f"{split}.target"] = source, target
            tensors[f"{split}.shifts"] = target - source
            if concepts:
                tensors[f"{split}.labels"] = part.label_matrix(concepts)[0].float()
        meta["concepts"] = json.dumps(concepts)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path


def load_shifts(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of a file written by ``ssae-lens harvest``."""
    _existing(path, "shifts file")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        meta = f.metadata() or {}
    if "train.shifts" not in tensors:
        raise ValueError(f"{path} holds no 'train.shifts'; write it with `ssae-lens harvest`.")
    return tensors, meta


def _shifts_for(cfg: ExperimentConfig, shifts: Path | None) -> tuple[dict[str, Tensor], dict]:
    if shifts is not None:
        return load_shifts(shifts)
    default = Path(cfg.out_dir) / "harvest" / SHIFTS_FILENAME
    if not default.exists():
        typer.echo(f"No {default}: harvesting first.")
        harvest_to_file(cfg, default)
        _results_dir(cfg, "harvest")
    return load_shifts(default)


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


def _load_sae(path: Path) -> Any:
    from sae_lens import SAE

    if not (path / "cfg.json").exists():
        raise FileNotFoundError(f"{path} is not a SAELens SAE folder (no cfg.json).")
    return SAE.load_from_disk(path)


# ------------------------------------------------------------------------------ commands


@app.command()
@_clean_errors
def harvest(config: ConfigArg, set_: SetOpt = None) -> None:
    """Harvest activation shifts of the config's pairs into a safetensors file.

    Example: ssae-lens harvest configs/binary.yaml --set harvest.batch_size=16
    """
    cfg = _experiment(config, set_)
    path = harvest_to_file(cfg, Path(cfg.out_dir) / "harvest" / SHIFTS_FILENAME)
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
    from ssae_lens.ssae.training import train_ssae

    cfg = _experiment(config, set_)
    tensors, meta = _shifts_for(cfg, shifts)
    data = tensors["train.shifts"]
    tcfg = cfg.training_config(d_in=data.shape[1])
    out = _results_dir(cfg, "train")
    for seed in cfg.seeds:
        sae = train_ssae(data, tcfg, seed=seed)
        sae.cfg.metadata.model_name = meta.get("model", cfg.model)
        sae.cfg.metadata.hook_name = meta.get("hook_name", cfg.hook_name)
        sae.cfg.metadata.dataset = meta.get("dataset", cfg.dataset)
        folder = out / f"seed{seed}"
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".seed{seed}."))
        sae.save_model(tmp)
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        os.replace(tmp, folder)
        typer.echo(f"SSAE (seed {seed}, SAELens format): {folder}")
    typer.echo(f"Config: {out / 'config.yaml'}")


def evaluate_ssaes(saes: list[Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Seed agreement, concept alignment and held-out steering accuracy of trained SSAEs.

    Alignment is the matched |cosine| of each SSAE's directions with the supervised concept
    directions (or the true mixing columns for synthetic data); steering accuracy adds, per
    held-out pair, the sign-matched directions of the concepts it changes.
    """
    from ssae_lens.metrics import (
        concept_directions,
        matched_cosine,
        seed_agreement_mcc,
        steering_accuracy,
    )

    metrics: dict[str, Any] = {"n_ssaes": len(saes)}
    if len(saes) > 1:
        mean, per_pair = seed_agreement_mcc([s.steering_directions() for s in saes])
        metrics["seed_agreement_mcc"], metrics["seed_agreement_pairs"] = mean, per_pair
    if "mixing" in tensors:
        reference = tensors["mixing"].T
    elif "train.labels" in tensors:
        reference = concept_directions(tensors["train.shifts"], tensors["train.labels"])
    else:
        return metrics
    alignment, accuracy = [], []
    for sae in saes:
        dirs = sae.steering_directions().detach()
        m = matched_cosine(dirs, reference)
        alignment.append(m.mcc)
        if "test.source" in tensors and "test.labels" in tensors:
            matched = torch.zeros_like(reference)
            for r, c in zip(m.rows, m.cols, strict=True):
                matched[c] = dirs[r] * torch.sign(dirs[r] @ reference[c])
            unit = matched / matched.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            per_pair = tensors["test.labels"] @ unit
            accuracy.append(
                steering_accuracy(tensors["test.source"], tensors["test.target"], per_pair)
            )
    metrics["concept_alignment"] = alignment
    if accuracy:
        metrics["steering_accuracy"] = accuracy
    return metrics


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
    """Seed agreement (MCC), concept alignment and steering accuracy, written as JSON.

    Example: ssae-lens evaluate configs/binary.yaml
    """
    cfg = _experiment(config, set_)
    saes = [_load_sae(p) for p in _ssae_dirs(cfg, ssae)]
    tensors, _ = _shifts_for(cfg, shifts)
    metrics = evaluate_ssaes(saes, tensors)
    out = _results_dir(cfg, "evaluate")
    path = out / "metrics.json"
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")
    for key, value in metrics.items():
        typer.echo(f"{key}: {value}")
    typer.echo(f"Metrics: {path}\nConfig: {out / 'config.yaml'}")


@app.command()
@_clean_errors
def steer(
    config: ConfigArg,
    set_: SetOpt = None,
    ssae: Annotated[
        Path | None, typer.Option(help="SSAE folder; steer with column `steer.latent`.")
    ] = None,
    vector: Annotated[Path | None, typer.Option(help="A saved SteeringVector folder.")] = None,
) -> None:
    """Print unsteered and steered greedy generations side by side.

    Example: ssae-lens steer configs/binary.yaml --set steer.latent=1 --set steer.scale=40
    """
    from ssae_lens.steering import SteeringVector
    from ssae_lens.steering import steer as steering

    cfg = _experiment(config, set_)
    if vector is not None:
        vec = SteeringVector.load(_existing(vector, "steering vector"))
    else:
        folder = ssae or _ssae_dirs(cfg, None)[0]
        sae = _load_sae(_existing(folder, "SSAE folder"))
        if not 0 <= cfg.steer.latent < sae.cfg.d_sae:
            raise ValueError(
                f"steer.latent={cfg.steer.latent} is out of range [0, {sae.cfg.d_sae})."
            )
        vec = SteeringVector.from_ssae(sae, cfg.steer.latent, hook_name=cfg.hook_name)
    model = models.load_model(cfg.model)
    vec.check_compatible(model)
    scale = vec.default_scale if cfg.steer.scale is None else cfg.steer.scale
    rows = []
    for prompt in cfg.steer.prompts:
        plain = _generate(model, prompt, cfg.steer.max_new_tokens)
        with steering(model, vec, scale=scale, positions=cfg.steer.positions):
            steered = _generate(model, prompt, cfg.steer.max_new_tokens)
        rows.append({"prompt": prompt, "unsteered": plain, "steered": steered})
    out = _results_dir(cfg, "steer")
    path = out / "generations.json"
    write_text_atomic(
        path, json.dumps({"vector": repr(vec), "scale": scale, "rows": rows}, indent=2)
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
    path = out / "report.json"
    write_text_atomic(path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
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

    Example: ssae-lens publish configs/binary.yaml --set publish.repo_id=me/ssae-binary --dry-run
    """
    from ssae_lens.publish import publish as publish_sae

    cfg = _experiment(config, set_)
    if not cfg.publish.repo_id:
        raise ConfigError("publish.repo_id is not set; e.g. --set publish.repo_id=user/name.")
    folder = ssae or _ssae_dirs(cfg, None)[0]
    sae = _load_sae(_existing(folder, "SSAE folder"))
    metrics_file = Path(cfg.out_dir) / "evaluate" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    shown = {k: v for k, v in metrics.items() if not k.endswith("_pairs")}
    out = _results_dir(cfg, "publish")
    dry = dry_run or cfg.publish.dry_run
    written = publish_sae(
        sae,
        cfg.publish.repo_id,
        cfg.publish.sae_id or sae.cfg.metadata.hook_name or cfg.hook_name,
        out_dir=out / cfg.publish.repo_id.replace("/", "--"),
        dry_run=dry,
        card_info={"model": cfg.model, "dataset": cfg.dataset, "metrics": shown},
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
    save_config(cfg, Path(cfg.out_dir) / "config.yaml")
    typer.echo(f"Report: {report}\nConfig: {Path(cfg.out_dir) / 'config.yaml'}")


@app.command()
@_clean_errors
def paper(config: ConfigArg, set_: SetOpt = None) -> None:
    """Reproduce the SSAE paper's tables (identifiability, steering accuracy, transfer).

    Example: ssae-lens paper configs/paper.yaml --set seeds=[0,1] --set layers=[12]
    """
    from ssae_lens.paper import PaperConfig, run_paper

    cfg = load_config(config, PaperConfig, set_ or [])
    report = run_paper(cfg)
    typer.echo(f"Report: {report}\nConfig: {Path(cfg.out_dir) / (cfg.name + '_config.yaml')}")


# ------------------------------------------------------------------------------- helpers


def _generate(model: Any, prompt: str, max_new_tokens: int) -> str:
    text = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False, verbose=False)
    return text[len(prompt) :].replace("\n", " ").strip()


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
    app(prog_name="ssae-lens")


if __name__ == "__main__":
    sys.exit(main())
