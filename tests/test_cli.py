"""The ``ssae-lens`` command line and its YAML configs, on the tiny model and tiny settings."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import require_kv_cache
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from typer.testing import CliRunner

from ssae_lens import cli, models
from ssae_lens.activations import harvest_shifts
from ssae_lens.config import (
    ConfigError,
    ExperimentConfig,
    ReferenceSAESection,
    apply_overrides,
    config_from_dict,
    load_config,
)
from ssae_lens.data import load_pairs
from ssae_lens.metrics import concept_alignment, concept_directions, seed_agreement_mcc
from ssae_lens.shift_data import ShiftData
from ssae_lens.steering import SteeringVector, steer

HOOK = "blocks.1.hook_resid_post"
COMMANDS = [
    "harvest", "train", "evaluate", "steer", "diagnose", "publish", "demo", "paper", "effects",
    "sae-ts",
]  # fmt: skip
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
    data = ShiftData.load(out / "shifts.safetensors")
    train_pairs, test_pairs = load_pairs("binary").split(0.25, seed=3)
    expected = harvest_shifts(tiny_model, test_pairs, HOOK, "last", progress=False)
    torch.testing.assert_close(data.shifts_te, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(data.tgt_tr - data.src_tr, data.shifts_tr)
    assert data.labels_tr.shape == (len(train_pairs), 2)
    assert data.concepts == ["language", "gender"]
    # The model as TransformerLens names it (what SteeringVector.check_compatible compares).
    assert data.metadata["model"] == tiny_model.cfg.model_name
    assert data.metadata["hook_name"] == HOOK
    reference = concept_directions(data.shifts_tr, train_pairs.label_matrix()[0])
    torch.testing.assert_close(data.reference, reference)  # from the training split only


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
    # sparsity_target "auto" (the default): selected once, shared by the seeds, plotted.
    record = first.cfg.metadata.sparsity_selection
    assert record == second.cfg.metadata.sparsity_selection
    assert f"sparsity_target auto: {record['target']:.4g}" in run["train"].output
    assert (run["root"] / "runs" / "train" / "sparsity_selection.png").stat().st_size > 0


def test_evaluate_writes_the_metrics_of_the_trained_seeds(run):
    result = _invoke("evaluate", run["config"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run["root"] / "runs" / "evaluate" / "metrics.json").read_text())
    saes = [SAE.load_from_disk(run["root"] / "runs" / "train" / f"seed{s}") for s in (0, 1)]
    expected, _ = seed_agreement_mcc([s.steering_directions() for s in saes])
    assert metrics["seed_agreement_mcc"] == pytest.approx(expected)
    data = ShiftData.load(run["root"] / "runs" / "harvest" / "shifts.safetensors")
    alignment = [concept_alignment(s.steering_directions(), data.reference) for s in saes]
    assert metrics["concept_alignment"] == pytest.approx(alignment)
    assert len(metrics["steering_accuracy"]) == len(metrics["label_mcc"]) == 2
    assert all(-1 <= v <= 1 for v in metrics["steering_accuracy"])


def test_steer_prints_unsteered_and_steered_generations(run, tiny_model):
    result = _invoke("steer", run["config"], "--set", "steer.latent=1", "--set", "steer.scale=30")
    assert result.exit_code == 0, result.output
    saved = json.loads((run["root"] / "runs" / "steer" / "generations.json").read_text())
    sae = SAE.load_from_disk(run["root"] / "runs" / "train" / "seed0")
    vec = SteeringVector.from_ssae(sae, 1)
    options = dict(max_new_tokens=3, do_sample=False, verbose=False, return_type="tokens")
    decode = tiny_model.tokenizer.decode
    for row in saved["rows"]:
        # One prompt at a time through TransformerLens's own generate (no batch padding).
        plain = tiny_model.generate(row["prompt"], **options)[0, -3:]
        with steer(tiny_model, vec, scale=30.0):
            steered = tiny_model.generate(row["prompt"], **options)[0, -3:]
        assert row["unsteered"] == " ".join(decode(plain, skip_special_tokens=True).split())
        assert row["steered"] == " ".join(decode(steered, skip_special_tokens=True).split())
        assert row["steered"] != row["unsteered"]
        assert row["prompt"] in result.output
    assert saved["scale"] == 30.0


def test_steer_loads_the_backend_the_config_names(run, tiny_bridge, monkeypatch, request):
    require_kv_cache(request, tiny_bridge)
    asked = []

    def load_model(name, **kw):
        asked.append(kw.get("backend"))
        return tiny_bridge

    monkeypatch.setattr(models, "load_model", load_model)
    args = ["--set", "backend=bridge", "--set", "steer.latent=1", "--set", "steer.scale=30"]
    result = _invoke("steer", run["config"], *args)
    assert result.exit_code == 0, result.output
    assert asked == ["bridge"]
    saved = json.loads((run["root"] / "runs" / "steer" / "generations.json").read_text())
    vec = SteeringVector.from_ssae(SAE.load_from_disk(run["root"] / "runs" / "train" / "seed0"), 1)
    options = dict(max_new_tokens=3, do_sample=False, verbose=False, return_type="tokens")
    for row in saved["rows"]:  # the bridge's own generate, one prompt at a time
        with steer(tiny_bridge, vec, scale=30.0):
            steered = tiny_bridge.generate(row["prompt"], **options)[0, -3:]
        text = tiny_bridge.tokenizer.decode(steered, skip_special_tokens=True)
        assert row["steered"] == " ".join(text.split())


def test_steer_scale_defaults_to_a_fraction_of_the_median_shift_norm(run):
    result = _invoke("steer", run["config"], "--set", "steer.scale_fraction=0.5")
    assert result.exit_code == 0, result.output
    saved = json.loads((run["root"] / "runs" / "steer" / "generations.json").read_text())
    shifts = ShiftData.load(run["root"] / "runs" / "harvest" / "shifts.safetensors").shifts_tr
    assert saved["scale"] == pytest.approx(0.5 * float(shifts.norm(dim=-1).median()))


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
    assert report["vector_norm"] == pytest.approx(1.0, abs=1e-5)  # SSAE decoder rows are unit norm
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
    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "load_model", lambda name, **kw: tiny_model)
    config = tmp_path / "demo.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "tiny",
                "hook_name": HOOK,
                "seeds": [0, 1],
                "train": {"d_sae": 2, "training_steps": 20},
                # categorical: 29 concepts, within the tiny model's width 32
                "many": {"max_pairs": 200, "width_multiplier": 1},
            }
        )
    )
    out = tmp_path / "demo"
    result = _invoke(
        "demo",
        config,
        "--set",
        f"out_dir={out}",
        "--set",
        "steer.max_new_tokens=2",
        "--set",
        "steer.prompts=[The king]",
    )
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "seed-agreement MCC" in report and "| mean-diff | - |" in report
    # The many-concept part leads: categorical at 29 directions, SSAE against the baselines.
    many = report.index("## Many concepts: `categorical` at width 29")
    assert many < report.index("## Steering: `binary` at width 2")
    assert "150 training and 50 held-out pairs" in report
    for method in ("SSAE", "aff", "ICA"):  # seeded methods have a seed agreement
        assert re.search(rf"^\| {method} \| -?\d\.\d{{3}} \| ", report[many:], re.MULTILINE)
    assert "| PCA | - |" in report
    # The selection curves behind "auto", one per part, plotted and tabled.
    assert "| binary, width 2 |" in report and "| categorical, width 29 |" in report
    assert (out / "selection.png").stat().st_size > 0
    assert "| The king |" in report  # the generations table
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["seeds"] == [0, 1] and resolved["steer"]["max_new_tokens"] == 2
    assert resolved["steer"]["prompts"] == ["The king"]
    assert (out / "ssae" / "cfg.json").exists() and (out / "demo.png").stat().st_size > 0


def test_paper_runs_the_benchmark_script_of_the_checkout(tmp_path, monkeypatch):
    ran = {}

    def fake_run_path(path, run_name):
        import sys

        ran.update(path=path, run_name=run_name, argv=list(sys.argv))

    monkeypatch.setattr(cli.runpy, "run_path", fake_run_path)
    config = tmp_path / "paper.yaml"
    config.write_text("seeds: [0]\n")
    result = _invoke("paper", config, "--set", "layers=[12]")
    assert result.exit_code == 0, result.output
    script = Path(cli.__file__).resolve().parents[1] / "benchmarks" / "paper.py"
    assert ran == {
        "path": str(script),
        "run_name": "__main__",
        "argv": [str(script), "--config", str(config), "--set=layers=[12]"],
    }


def test_paper_outside_a_checkout_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "ssae_lens" / "cli.py"))
    result = _invoke("paper", tmp_path / "paper.yaml")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "clone" in lines[0] and "benchmarks/paper.py" in lines[0]


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


def test_errors_under_torchrun_are_recorded_for_its_failure_summary(tmp_path, monkeypatch):
    error_file = tmp_path / "error.json"  # torchrun gives each rank such a file
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test-run")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    config = tmp_path / "c.yaml"
    config.write_text("model: tiny\n")
    result = _invoke("effects", config, "--set", "effects.sae_release=x")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: effects: sae_release and sae_id go together (SAE.from_pretrained)."
    ]
    recorded = json.loads(error_file.read_text())["message"]["message"]
    assert (
        recorded
        == "ConfigError: effects: sae_release and sae_id go together (SAE.from_pretrained)."
    )


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
        assert result.exit_code == 2, result.output
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
    # sparsity_target is a number or "auto" (the default).
    assert cfg.training_config(d_in=7).sparsity_target == "auto"
    for value, expected in (("auto", "auto"), ("0.05", 0.05)):
        train = apply_overrides({"train": {"d_sae": 2}}, [f"train.sparsity_target={value}"])
        assert config_from_dict(ExperimentConfig, train).training_config(7).sparsity_target == (
            expected
        )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steer": {"latnet": 1}}, "'steer.latnet' (did you mean 'steer.latent'?)"),
        ({"train": {"d_sae": 2, "d_in": 5}}, "unknown config key 'train.d_in'"),
        ({"train": {"sparsity": "l1"}}, "train.d_sae is required"),
        ({"train": {"d_sae": 2, "lr": -1.0}}, "lr must be > 0"),
        ({"position": "frist"}, "position must be one of ['last', 'mean']"),
        ({"backend": "transformers"}, "backend must be one of ['hooked', 'bridge']"),
        ({"dataset": "synthetic", "synthetic": {"n_pair": 5}}, "did you mean 'synthetic.n_pairs'?"),
        ({"effects": {"sae_path": "a", "sae_release": "b", "sae_id": "c"}}, "not both"),
        ({"effects": {"sae_release": "b"}}, "sae_release and sae_id go together"),
        ({"effects": {"n_samples": 0}}, "effects.n_samples must be >= 1"),
        ({"sae_ts": {"targets": {"x": "abc"}}}, "sae_ts.targets.x must be a non-empty mapping"),
        ({"sae_ts": {"targets": {"x": {"a": 1}}}}, "features must be integers"),
        ({"sae_ts": {"targets": {"x": [-2]}}}, "features must be >= 0"),
        ({"train": {"d_sae": 2}, "many": {"dataset": "nope"}}, "many.dataset must be a built-in"),
        ({"train": {"d_sae": 2}, "many": {"width_multiplier": 0}}, "width_multiplier must be >= 1"),
        (
            {"train": {"d_sae": 2, "sparsity_target": "autom"}},
            "sparsity_target must be float, got 'autom' (or one of ['auto'])",
        ),
    ],
)
def test_bad_configs_name_the_fix(data, message):
    from ssae_lens.demo import DemoConfig

    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(DemoConfig if "many" in data else ExperimentConfig, data)


def test_sae_ts_targets_from_yaml_and_overrides():
    data = apply_overrides({}, ["sae_ts.targets={f: [3, 4], g: {5: -0.5}}", "effects.n_mix=0"])
    cfg = config_from_dict(ExperimentConfig, data)
    assert cfg.sae_ts.targets == {"f": {3: 1.0, 4: 1.0}, "g": {5: -0.5}}
    assert cfg.effects.n_mix == 0 and cfg.effects.n_decoder == 256  # the rest keeps defaults
    assert config_from_dict(ExperimentConfig, cfg.to_dict()) == cfg


def test_shipped_configs_load(load_benchmark):
    from ssae_lens.demo import DemoConfig

    classes = {"demo": DemoConfig, "paper": load_benchmark("paper").PaperConfig}
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
        "effects",
    } <= names
    for path in configs:
        cfg = load_config(path, classes.get(path.stem, ExperimentConfig))
        if path.stem not in ("demo", "synthetic", "paper", "effects"):
            assert cfg.dataset == path.stem and cfg.model == "gemma-3-270m"


def test_sae_ts_benchmark_reads_its_config_with_the_shared_loader(load_benchmark, capsys):
    bench = load_benchmark("sae_ts")
    root = Path(__file__).parents[1]
    path = root / "configs/benchmarks/sae_ts.yaml"
    cfg = bench.parse_config_args(bench.SaeTsConfig, ["--config", str(path), "--set", "n_mix=7"])
    shipped = yaml.safe_load(path.read_text())
    assert cfg.n_decoder == shipped["n_decoder"] and cfg.n_mix == 7
    assert cfg.sae.corpus_options == shipped["sae"]["corpus_options"]
    assert cfg.tasks == shipped["tasks"] and cfg.sweep == [float(x) for x in shipped["sweep"]]
    # weighted targets: {task: {feature: weight}} (a list weighs each feature 1)
    assert cfg.targets == {
        task: {int(f): float(w) for f, w in weights.items()}
        for task, weights in shipped["targets"].items()
    }
    listed = bench.parse_config_args(bench.SaeTsConfig, ["--set", "targets={french: [3, 5]}"])
    assert listed.targets == {"french": {3: 1.0, 5: 1.0}}
    quick = bench.SaeTsConfig(quick=True).sizes()
    assert quick.n_decoder == 8 and quick.held_samples == quick.samples == 1
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_config_args(bench.SaeTsConfig, ["--config", str(path), "--set", "n_decoer=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'n_decoder'?" in err[0]


def test_reference_sae_section_has_train_reference_saes_defaults():
    import inspect

    from ssae_lens.saes.reference import train_reference_sae

    params = inspect.signature(train_reference_sae).parameters
    for name, value in ReferenceSAESection().kwargs().items():
        assert params[name].default == value, name


def test_help_imports_neither_torch_nor_sae_lens():
    """``python -m ssae_lens --help`` and the console script skip the heavy imports."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for args, shown in (([], "Usage: ssae-lens"), (["train"], "Example: ssae-lens train")):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "ssae_lens", *args, "--help"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0 and shown in " ".join(done.stdout.split())
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
        assert "ssae_lens.cli" in imported
        assert not {"torch", "sae_lens", "transformer_lens"} & imported
    script = (
        "import sys; sys.argv[0] = '/usr/bin/ssae-lens'; import ssae_lens; "
        "assert 'sae_lens' not in sys.modules; "
        "from ssae_lens import SSAE, ConceptPairs, models, load_config; "
        "import ssae_lens.ssae.model as m, ssae_lens.data.pairs as p, sae_lens; "
        "assert SSAE is m.SSAE and ConceptPairs is p.ConceptPairs and models.load_model; "
        "assert sae_lens.registry.get_sae_class('ssae')[0] is SSAE"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
