"""Issue 14 item 4, model cards and metadata that are true: each SSAE carries its model, hook
point, dataset and metrics in its own cfg.json; the card reads them from the dictionary being
published and lists every dictionary in the repository; synthetic runs say so."""

from __future__ import annotations

import json
import re

import huggingface_hub.constants as hf_constants
import pytest
import torch
import yaml
from conftest import build_tiny_model
from typer.testing import CliRunner

from ssae_lens import cli, models
from ssae_lens.activations import harvest_shifts
from ssae_lens.data import load_pairs
from ssae_lens.publish import publish
from ssae_lens.ssae import SSAE, SSAEConfig, TrainingSSAEConfig, load, train_ssae
from ssae_lens.steering import SteeringCompatibilityWarning, SteeringVector

HOOK = "blocks.1.hook_resid_post"
runner = CliRunner()


def _sections(card: str) -> dict[str, str]:
    """``{sae_id: text}`` of the card's per-dictionary sections."""
    parts = re.split(r"^## `([^`]*)`$", card, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _row(card: str, sae_id: str) -> list[str]:
    """The cells of the summary table's row for ``sae_id``."""
    line = next(x for x in card.splitlines() if x.startswith(f"| `{sae_id}` |"))
    return [cell.strip().strip("`") for cell in line.strip("|").split("|")]


@pytest.fixture(scope="module")
def readme_ssae(tiny_model):
    """The README's Python example on the tiny model: shifts, then train_ssae told where the
    shifts came from."""
    pairs = load_pairs("binary")[:64]
    shifts = harvest_shifts(tiny_model, pairs, HOOK, position="last", progress=False)
    cfg = TrainingSSAEConfig(d_in=32, d_sae=2, training_steps=30, batch_size=32)
    ssae, trainer = train_ssae(
        shifts,
        cfg,
        seed=0,
        model_name=tiny_model.cfg.model_name,
        hook_name=HOOK,
        dataset="binary",
        return_trainer=True,
        progress=False,
    )
    return ssae, trainer, cfg


def test_train_ssae_records_where_the_shifts_came_from(readme_ssae, tiny_model, tmp_path):
    ssae, _, cfg = readme_ssae
    meta = ssae.cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.dataset) == (
        tiny_model.cfg.model_name,
        HOOK,
        "binary",
    )
    ssae.save_model(tmp_path / "ssae")
    saved = json.loads((tmp_path / "ssae" / "cfg.json").read_text())["metadata"]
    assert (saved["model_name"], saved["hook_name"]) == (tiny_model.cfg.model_name, HOOK)
    assert "model_name" not in cfg.metadata  # the caller's config is left as it was


def test_training_metrics_are_stored_with_the_ssae_and_l0_is_not(readme_ssae):
    ssae, trainer, cfg = readme_ssae
    assert ssae.cfg.metadata.training_metrics == trainer.history[-1].__dict__
    assert ssae.cfg.metadata.training_metrics["step"] == cfg.training_steps
    # SAELens's l0 counts nonzero codes: every unit of a signed, dense code, so it says nothing.
    assert "l0" not in ssae.cfg.metadata and "num_dead_features" not in ssae.cfg.metadata
    assert "training_metrics" not in cfg.metadata


def test_vectors_carry_the_model_name_so_the_cross_model_warning_fires(
    readme_ssae, tiny_model, tiny_tokenizer
):
    ssae, _, _ = readme_ssae
    vector = SteeringVector.from_ssae(ssae, 0)
    assert vector.model_name == tiny_model.cfg.model_name
    vector.check_compatible(tiny_model)  # the same model: no warning
    other = build_tiny_model(tiny_tokenizer, model_name="another-model")
    with pytest.warns(SteeringCompatibilityWarning, match="another-model"):
        vector.check_compatible(other)


def test_the_readme_example_produces_a_card_with_model_and_hook(readme_ssae, tiny_model, tmp_path):
    ssae, _, _ = readme_ssae
    folder = publish(ssae, "me/tiny-ssae", HOOK, out_dir=tmp_path, dry_run=True)
    card = (folder / "README.md").read_text()
    cells = _row(card, HOOK)
    assert cells[1:4] == [tiny_model.cfg.model_name, HOOK, "binary"]
    assert "unknown" not in card
    section = _sections(card)[HOOK]
    assert f"| recon_loss | {ssae.cfg.metadata.training_metrics['recon_loss']:.4g} |" in section
    assert "import ssae_lens" in card and "KeyError: 'ssae'" in card


def _ssae(model_name: str, metrics: dict | None = None, seed: int = 0) -> SSAE:
    gen = torch.Generator().manual_seed(seed)
    sae = SSAE(SSAEConfig(d_in=8, d_sae=3))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(3, 8, generator=gen))
    sae.cfg.metadata.model_name = model_name
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    if metrics is not None:
        sae.cfg.metadata.metrics = metrics
    return sae


def test_the_card_lists_every_dictionary_in_the_local_folder(tmp_path):
    publish(
        _ssae("model-a", {"concept_alignment": 0.25}), "me/r", "a", out_dir=tmp_path, dry_run=True
    )
    publish(
        _ssae("model-b", {"concept_alignment": 0.75}), "me/r", "b", out_dir=tmp_path, dry_run=True
    )
    card = (tmp_path / "README.md").read_text()
    assert _row(card, "a")[1] == "model-a" and _row(card, "b")[1] == "model-b"
    sections = _sections(card)
    assert "| concept_alignment | 0.25 |" in sections["a"]
    assert "| concept_alignment | 0.75 |" in sections["b"]


def test_the_card_lists_every_dictionary_already_on_the_hub(tmp_path, fake_hub, monkeypatch):
    # Before: a second sae_id overwrote the card and dropped the first from it.
    endpoint, hub = fake_hub
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    first, second = _ssae("model-a", {"label_mcc": 0.5}), _ssae("model-b", seed=1)
    publish(first, "me/r", "layer0/a", out_dir=tmp_path / "one", endpoint=endpoint, token="t")
    publish(second, "me/r", "b", out_dir=tmp_path / "two", endpoint=endpoint, token="t")
    files = hub.repos["me/r"]
    assert {"layer0/a/cfg.json", "b/cfg.json", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert _row(card, "layer0/a")[1] == "model-a" and _row(card, "b")[1] == "model-b"
    assert "| label_mcc | 0.5 |" in _sections(card)["layer0/a"]
    assert "No metrics were recorded" in _sections(card)["b"]


@pytest.fixture(scope="module")
def cli_run(tiny_model, tmp_path_factory):
    """harvest, train (2 seeds) and evaluate on the tiny model through the command line."""
    root = tmp_path_factory.mktemp("cards")
    config = root / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "tiny",
                "dataset": "binary",
                "hook_name": HOOK,
                "seeds": [0, 1],
                "out_dir": str(root / "runs"),
                "train": {"d_sae": 2, "training_steps": 40, "batch_size": 64},
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSAE_LENS_CACHE", str(root / "cache"))
        mp.setattr(models, "load_model", lambda name, **kw: tiny_model)
        for command in ("harvest", "train", "evaluate"):
            result = runner.invoke(cli.app, [command, str(config)])
            assert result.exit_code == 0, result.output
        yield {"config": config, "root": root}


def test_evaluate_stores_each_ssaes_own_metrics_with_it(cli_run):
    runs = cli_run["root"] / "runs"
    metrics = json.loads((runs / "evaluate" / "metrics.json").read_text())
    for seed in (0, 1):
        own = load(runs / "train" / f"seed{seed}").cfg.metadata.metrics
        assert own["concept_alignment"] == metrics["concept_alignment"][seed]
        assert own["steering_accuracy"] == metrics["steering_accuracy"][seed]
        assert own["seed_agreement_mcc"] == metrics["seed_agreement_mcc"]
        assert own["evaluated_on"].startswith("binary:")


def test_the_card_reads_the_metrics_of_the_ssae_being_published(cli_run, tiny_model):
    # Before: always <out_dir>/evaluate/metrics.json, whichever SSAE was published.
    runs = cli_run["root"] / "runs"
    own = load(runs / "train" / "seed1").cfg.metadata.metrics
    (runs / "evaluate" / "metrics.json").unlink()  # not where the card's numbers come from
    result = runner.invoke(
        cli.app,
        [
            "publish",
            str(cli_run["config"]),
            "--ssae",
            str(runs / "train" / "seed1"),
            "--set",
            "publish.repo_id=me/tiny",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    card = (runs / "publish" / "me--tiny" / "README.md").read_text()
    section = _sections(card)[HOOK]
    assert f"| concept_alignment | {own['concept_alignment']:.4g} |" in section
    assert f"| steering_accuracy | {own['steering_accuracy']:.4g} |" in section
    assert _row(card, HOOK)[1:4] == [tiny_model.cfg.model_name, HOOK, "binary"]


def test_synthetic_runs_say_synthetic(tmp_path, monkeypatch):
    # Before: labelled gemma-3-270m / blocks.12.hook_resid_post (the config's defaults).
    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "synthetic.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset": "synthetic",
                "synthetic": {"n_pairs": 400, "n_concepts": 3, "max_changes": 1, "d": 8},
                "seeds": [0],
                "out_dir": str(tmp_path / "runs"),
                "train": {"d_sae": 3, "training_steps": 20, "batch_size": 64},
                "publish": {"repo_id": "me/synthetic", "dry_run": True},
            }
        )
    )
    for command in ("harvest", "train", "publish"):
        result = runner.invoke(cli.app, [command, str(config)])
        assert result.exit_code == 0, result.output
    meta = load(tmp_path / "runs" / "train" / "seed0").cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.dataset) == ("synthetic",) * 3
    card = (tmp_path / "runs" / "publish" / "me--synthetic" / "README.md").read_text()
    assert _row(card, "synthetic")[1:4] == ["synthetic", "synthetic", "synthetic"]
    assert "gemma" not in card and "blocks.12" not in card
