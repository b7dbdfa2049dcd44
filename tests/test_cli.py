"""The ``ssae-lens`` command line and its YAML configs, on the tiny model and tiny settings."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from typer.testing import CliRunner

from ssae_lens import cli, models
from ssae_lens.activations import harvest_shifts
from ssae_lens.config import ConfigError, ExperimentConfig, apply_overrides, config_from_dict
from ssae_lens.metrics import seed_agreement_mcc
from ssae_lens.pairs import load_pairs
from ssae_lens.steering import SteeringVector, steer

HOOK = "blocks.1.hook_resid_post"
COMMANDS = ["harvest", "train", "evaluate", "steer", "diagnose", "publish", "demo", "paper"]
runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    """A config on the tiny model, harvested and trained (2 seeds) once for the module."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "tiny",
                "dataset": "binary",
                "hook_name": HOOK,
                "seeds": [0, 1],
                "out_dir": str(root / "runs"),
                "harvest": {"batch_size": 64, "test_fraction": 0.25},
                "train": {"d_sae": 2, "training_steps": 40, "batch_size": 64},
                "steer": {"prompts": ["The king said", "She walked"], "max_new_tokens": 3},
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSAE_LENS_CACHE", str(root / "cache"))
        mp.setattr(models, "load_model", lambda name, **kw: tiny_model)
        harvested = _invoke("harvest", config, "--set", "harvest.split_seed=3")
        trained = _invoke("train", config)
        yield {"config": config, "root": root, "harvest": harvested, "train": trained, "mp": mp}


def test_harvest_saves_the_shifts_of_the_split_and_the_resolved_config(run, tiny_model):
    assert run["harvest"].exit_code == 0, run["harvest"].output
    out = run["root"] / "runs" / "harvest"
    assert str(out / "shifts.safetensors") in run["harvest"].output
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["harvest"]["split_seed"] == 3
    tensors, meta = cli.load_shifts(out / "shifts.safetensors")
    train_pairs, test_pairs = load_pairs("binary").split(0.25, seed=3)
    expected = harvest_shifts(tiny_model, test_pairs, HOOK, "last", progress=False)
    torch.testing.assert_close(tensors["test.shifts"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        tensors["train.target"] - tensors["train.source"], tensors["train.shifts"]
    )
    assert tensors["train.labels"].shape == (len(train_pairs), 2)
    assert json.loads(meta["concepts"]) == ["language", "gender"]


def test_train_saves_one_sae_lens_dictionary_per_seed(run):
    assert run["train"].exit_code == 0, run["train"].output
    for seed in (0, 1):
        folder = run["root"] / "runs" / "train" / f"seed{seed}"
        assert str(folder) in run["train"].output
        sae = SAE.load_from_disk(folder)
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (32, 2)
        assert sae.cfg.metadata.hook_name == HOOK
        assert sae.cfg.metadata.dataset == "binary"
    first = SAE.load_from_disk(run["root"] / "runs" / "train" / "seed0")
    second = SAE.load_from_disk(run["root"] / "runs" / "train" / "seed1")
    assert not torch.equal(first.W_dec, second.W_dec)  # seeds differ


def test_evaluate_writes_the_metrics_of_the_trained_seeds(run):
    result = _invoke("evaluate", run["config"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run["root"] / "runs" / "evaluate" / "metrics.json").read_text())
    saes = [SAE.load_from_disk(run["root"] / "runs" / "train" / f"seed{s}") for s in (0, 1)]
    expected, _ = seed_agreement_mcc([s.steering_directions() for s in saes])
    assert metrics["seed_agreement_mcc"] == pytest.approx(expected)
    assert len(metrics["concept_alignment"]) == len(metrics["steering_accuracy"]) == 2
    assert all(0 <= v <= 1 for v in metrics["concept_alignment"])
    assert all(-1 <= v <= 1 for v in metrics["steering_accuracy"])


def _ssae_with_rows(rows):
    from ssae_lens import SSAE, SSAEConfig

    sae = SSAE(SSAEConfig(d_in=rows.shape[1], d_sae=rows.shape[0], shift_normalization="none"))
    with torch.no_grad():
        sae.W_dec.copy_(rows)
    return sae


def test_evaluate_ssaes_equals_a_hand_computation():
    # Two concepts in 3-d; the SSAEs hold them permuted, rescaled and with flipped signs.
    g = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.2], [0.0, 1.0], [0.3, -0.4]])
    ref = (mixing / mixing.norm(dim=0)).T  # concept directions, unit rows
    noise = 0.2 * torch.randn(2, 2, 3, generator=g)
    saes = [
        _ssae_with_rows(torch.stack([-2.0 * ref[1], ref[0]]) + noise[0]),
        _ssae_with_rows(torch.stack([ref[0], -ref[1]]) + noise[1]),
    ]
    labels = torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    source = torch.randn(4, 3, generator=g)
    target = source + labels @ ref + 0.1 * torch.randn(4, 3, generator=g)
    tensors = {"mixing": mixing, "test.source": source, "test.target": target,
               "test.labels": labels}  # fmt: skip
    metrics = cli.evaluate_ssaes(saes, tensors)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    alignment, accuracy = [], []
    for sae in saes:
        rows = unit(sae.W_dec.detach().double().numpy())
        cos = rows @ unit(ref.double().numpy()).T
        perm = max(((0, 1), (1, 0)), key=lambda p: abs(cos[p[0], 0]) + abs(cos[p[1], 1]))
        alignment.append((abs(cos[perm[0], 0]) + abs(cos[perm[1], 1])) / 2)
        # concept c is steered along its matched row, turned to point like the concept
        oriented = np.stack([np.sign(cos[perm[c], c]) * rows[perm[c]] for c in (0, 1)])
        v = labels.double().numpy() @ oriented
        steered = unit(source.double().numpy()) + unit(v)
        accuracy.append(np.mean(np.sum(unit(steered) * unit(target.double().numpy()), -1)))
    assert metrics["concept_alignment"] == pytest.approx(alignment)
    assert metrics["steering_accuracy"] == pytest.approx(accuracy)
    assert min(accuracy) > 0.8  # the oriented rows do steer toward the targets
    corr = np.abs(np.corrcoef(saes[0].W_dec.detach().numpy(), saes[1].W_dec.detach().numpy()))
    agreement = max(corr[0, 2] + corr[1, 3], corr[0, 3] + corr[1, 2]) / 2
    assert metrics["seed_agreement_mcc"] == pytest.approx(agreement)


def test_steer_prints_unsteered_and_steered_generations(run, tiny_model):
    result = _invoke("steer", run["config"], "--set", "steer.latent=1", "--set", "steer.scale=30")
    assert result.exit_code == 0, result.output
    saved = json.loads((run["root"] / "runs" / "steer" / "generations.json").read_text())
    sae = SAE.load_from_disk(run["root"] / "runs" / "train" / "seed0")
    vec = SteeringVector.from_ssae(sae, 1)
    for row in saved["rows"]:
        plain = tiny_model.generate(row["prompt"], max_new_tokens=3, do_sample=False, verbose=False)
        with steer(tiny_model, vec, scale=30.0):
            steered = tiny_model.generate(
                row["prompt"], max_new_tokens=3, do_sample=False, verbose=False
            )
        assert row["unsteered"] == plain[len(row["prompt"]) :].strip()
        assert row["steered"] == steered[len(row["prompt"]) :].strip()
        assert row["prompt"] in result.output
    assert saved["scale"] == 30.0


def test_diagnose_saves_the_plot_and_report(run, tmp_path):
    sae = SAE.load_from_disk(run["root"] / "runs" / "train" / "seed0")
    vector = SteeringVector.from_ssae(sae, 0).save(tmp_path / "vector")
    torch.manual_seed(0)
    dictionary = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    dictionary.save_model(tmp_path / "sae")
    result = _invoke(
        "diagnose",
        run["config"],
        "--vector",
        vector,
        "--sae",
        tmp_path / "sae",
        "--set",
        "diagnose.top_k=3",
    )
    assert result.exit_code == 0, result.output
    out = run["root"] / "runs" / "diagnose"
    assert (out / "diagnose.png").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["vector_norm"] == pytest.approx(1.0, abs=1e-5)  # SSAE columns are unit norm
    assert report["d_sae"] == 16


def test_publish_dry_run_writes_the_hub_layout_with_metrics(run):
    result = _invoke("publish", run["config"], "--set", "publish.repo_id=me/tiny-ssae", "--dry-run")
    assert result.exit_code == 0, result.output
    folder = run["root"] / "runs" / "publish" / "me--tiny-ssae"
    loaded = SAE.load_from_disk(folder / HOOK)
    torch.testing.assert_close(
        loaded.W_dec, SAE.load_from_disk(run["root"] / "runs" / "train" / "seed0").W_dec
    )
    card = (folder / "README.md").read_text()
    assert "me/tiny-ssae" in card and "binary" in card
    assert "dry run" in result.output


def test_demo_runs_the_demo_from_a_config(tiny_model, tmp_path, monkeypatch):
    import ssae_lens.demo

    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ssae_lens.demo, "load_model", lambda name, **kw: tiny_model)
    config = tmp_path / "demo.yaml"
    config.write_text(
        yaml.safe_dump({"model": "tiny", "hook_name": HOOK, "seeds": [0, 1], "training_steps": 20})
    )
    out = tmp_path / "demo"
    result = _invoke(
        "demo",
        config,
        "--set",
        f"out_dir={out}",
        "--set",
        "max_new_tokens=2",
        "--set",
        "prompts=[The king]",
    )
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "seed-agreement MCC" in report
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["seeds"] == [0, 1] and resolved["max_new_tokens"] == 2
    assert resolved["prompts"] == ["The king"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = _invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example: ssae-lens " + command in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--set", "train.d_sea=3"], 2, "did you mean 'train.d_sae'?"),
        (["--set", "dataset=binery"], 2, "unknown dataset 'binery' (did you mean 'binary'?)"),
        (["--set", "harvest.batch_size=many"], 2, "harvest.batch_size must be int"),
    ],
)
def test_config_errors_are_one_line(run, args, code, message):
    result = _invoke("train", run["config"], *args)
    assert result.exit_code == code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in result.output


def test_missing_files_are_one_line(run, tmp_path):
    for args in (
        ["harvest", tmp_path / "nope.yaml"],
        ["train", run["config"], "--shifts", tmp_path / "missing.safetensors"],
        [
            "harvest",
            run["config"],
            "--set",
            f"dataset={tmp_path / 'pairs.jsonl'}",
            "--set",
            f"out_dir={tmp_path}",
        ],
    ):
        result = _invoke(*args)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "does not exist" in lines[0], result.output


def test_overrides_are_coerced_to_the_field_types():
    data = apply_overrides(
        {"train": {"d_sae": 2}, "harvest": {"batch_size": 8}},
        [
            "seeds=0,1,2",
            "train.lr=3e-3",
            "train.topk=2",
            "train.sparsity=topk",
            "steer.scale=null",
            "harvest.use_cache=false",
            "steer.prompts=[a b, c]",
            "hook_name=123",
        ],
    )
    assert data["harvest"]["batch_size"] == 8  # sibling keys of a section are kept
    with pytest.raises(ConfigError, match="model must be a string"):
        config_from_dict(ExperimentConfig, {"model": 123})  # YAML int where a name belongs
    cfg = config_from_dict(ExperimentConfig, data)
    assert cfg.hook_name == "123"  # --set values for str fields stay strings
    assert cfg.seeds == [0, 1, 2]
    assert cfg.train == {"d_sae": 2, "lr": 0.003, "topk": 2, "sparsity": "topk"}
    assert cfg.steer.scale is None and cfg.harvest.use_cache is False
    assert cfg.steer.prompts == ["a b", "c"]
    assert cfg.training_config(d_in=7).lr == 0.003
    assert config_from_dict(ExperimentConfig, cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steer": {"latnet": 1}}, "'steer.latnet' (did you mean 'steer.latent'?)"),
        ({"train": {"d_sae": 2, "d_in": 5}}, "unknown config key 'train.d_in'"),
        ({"train": {"sparsity": "l1"}}, "train.d_sae is required"),
        ({"train": {"d_sae": 2, "lr": -1.0}}, "lr must be > 0"),
        ({"position": "frist"}, "position must be one of ['last', 'mean']"),
        ({"dataset": "synthetic", "synthetic": {"n_pair": 5}}, "did you mean 'n_pairs'?"),
    ],
)
def test_bad_configs_name_the_fix(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(ExperimentConfig, data)


def test_shipped_configs_load():
    from pathlib import Path

    from ssae_lens.config import load_config
    from ssae_lens.demo import DemoConfig
    from ssae_lens.paper import PaperConfig

    classes = {"demo": DemoConfig, "paper": PaperConfig}
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    names = {p.stem for p in configs}
    assert {
        "demo",
        "synthetic",
        "language",
        "gender",
        "binary",
        "corr",
        "categorical",
        "sentences",
        "paper",
    } <= names
    for path in configs:
        cfg = load_config(path, classes.get(path.stem, ExperimentConfig))
        if path.stem not in ("demo", "synthetic", "paper"):
            assert cfg.dataset == path.stem and cfg.model == "gemma-3-270m"


def test_sae_ts_benchmark_config_sets_only_its_options():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("sae_ts_bench", root / "benchmarks/sae_ts.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    parser = bench.build_parser()
    values = bench._read_config(root / "configs/benchmarks/sae_ts.yaml", parser)
    parser.set_defaults(**values)
    args = parser.parse_args([])
    assert args.n_decoder == values["n_decoder"] and args.tasks == values["tasks"]
    bad = root / "configs/benchmarks/sae_ts.yaml"
    with pytest.raises(SystemExit):
        bench._read_config(bad.with_name("missing.yaml"), parser)
