"""Issue 14 item 7, docs that agree with behaviour: what ``repr``, ``cfg.json`` and ``--help``
show, one name for decoder rows, and where a relative dataset path is read from. (The README's
commands themselves run in test_readme.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from ssae_lens import cli, models
from ssae_lens.ssae import SSAE, SSAEConfig, TrainingSSAEConfig, train_ssae

ROOT = Path(__file__).parents[1]
COMMANDS = ["harvest", "train", "evaluate", "steer", "diagnose", "publish", "demo", "paper"]
runner = CliRunner()


def test_the_ssae_has_no_relu_and_saves_no_l0(tmp_path):
    # Before: repr showed "(activation_fn): ReLU()" for a signed code, and cfg.json an l0 that
    # counted every unit of a dense code as active.
    sae = SSAE(SSAEConfig(d_in=4, d_sae=2))
    assert "ReLU" not in repr(sae) and isinstance(sae.activation_fn, nn.Identity)
    trained = train_ssae(
        torch.randn(64, 4), TrainingSSAEConfig(d_in=4, d_sae=2, training_steps=5), progress=False
    )
    assert "ReLU" not in repr(trained)
    trained.save_model(tmp_path / "s")
    metadata = json.loads((tmp_path / "s" / "cfg.json").read_text())["metadata"]
    assert "l0" not in metadata and "num_dead_features" not in metadata
    assert metadata["training_metrics"]["step"] == 5


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_value_for_flags(command):
    # Before: "--dry-run <bool>" (and "--help <bool>") for flags that take no value.
    result = runner.invoke(cli.app, [command, "--help"])
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    if command == "publish":
        line = next(x for x in result.output.splitlines() if x.strip().startswith("--dry-run"))
        assert re.match(r"\s*--dry-run\s+Write the folder only", line), line


def test_decoder_rows_are_called_rows_everywhere():
    # SAELens's W_dec is (d_sae, d_in): a latent's direction is a row. The docs said both.
    files = [
        ROOT / "README.md",
        *(ROOT / "tutorials").glob("*"),
        *(ROOT / "ssae_lens").rglob("*.py"),
    ]
    pattern = re.compile(r"(decoder|SSAE(?:'s)?(?: French)?)\s+columns?\b", re.IGNORECASE)
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in files
        if path.is_file()
        for match in pattern.finditer(path.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_a_relative_dataset_path_is_read_from_the_working_directory(
    tmp_path, tiny_model, monkeypatch
):
    # As the README and ExperimentConfig's docstring say: not from the config file's folder.
    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "load_model", lambda name, **kw: tiny_model)
    configs, work = tmp_path / "configs", tmp_path / "work"
    configs.mkdir()
    work.mkdir()
    config = configs / "mine.yaml"
    config.write_text(
        yaml.safe_dump(
            {"model": "tiny", "dataset": "pairs.jsonl", "hook_name": "blocks.1.hook_resid_post"}
        )
    )
    words = [("king", "roi"), ("queen", "reine"), ("the cat", "le chat"), ("red", "rouge")]
    lines = "".join(f'{{"source": "{s}", "target": "{t}"}}\n' for s, t in words)
    (configs / "pairs.jsonl").write_text(lines)  # beside the config: not read
    monkeypatch.chdir(work)
    result = runner.invoke(cli.app, ["harvest", str(config), "--set", "out_dir=out"])
    assert result.exit_code == 2
    assert "relative paths are from the working directory" in result.output
    (work / "pairs.jsonl").write_text(lines)
    result = runner.invoke(cli.app, ["harvest", str(config), "--set", "out_dir=out"])
    assert result.exit_code == 0, result.output
    assert (work / "out" / "harvest" / "shifts.safetensors").exists()
