"""Issue 14 item 2, finite numbers everywhere: NaN and inf are refused in every float config
field, a non-finite training loss stops training with nothing saved, and neither
``save_model`` nor ``publish`` writes non-finite weights."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml
from sae_lens import StandardSAE, StandardSAEConfig
from typer.testing import CliRunner

from ssae_lens import cli
from ssae_lens._core.finite import NonFiniteError
from ssae_lens.config import (
    ConfigError,
    ExperimentConfig,
    ReferenceSAESection,
    config_from_dict,
    load_config,
)
from ssae_lens.publish import publish
from ssae_lens.ssae import SSAE, SSAEConfig, TrainingSSAEConfig, train_ssae

FLOAT_FIELDS = [
    "sparsity_target",
    "sparsity_target_start",
    "multiplier_lr_ratio",
    "l1_coefficient",
    "lr",
    "lr_end_ratio",
    "decoder_init_norm",
]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_float_training_field_must_be_finite(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        TrainingSSAEConfig(d_in=4, d_sae=2, **{name: value})


def test_the_issue_case_nan_sparsity_target_is_refused_before_training():
    # Before: NaN passed the `<= 0` check and trained all-NaN weights.
    with pytest.raises(ValueError, match="sparsity_target must be a finite number, got nan"):
        train_ssae(
            torch.randn(64, 16), TrainingSSAEConfig(d_in=16, d_sae=4, sparsity_target=math.nan)
        )


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("train.sparsity_target=nan", "train.sparsity_target"),
        ("train.lr=.inf", "train.lr"),
        ("harvest.test_fraction=NaN", "harvest.test_fraction"),
        ("steer.scale=inf", "steer.scale"),
        ("steer.scale_fraction=-.inf", "steer.scale_fraction"),
        ("diagnose.scales=[1.0, .nan]", "diagnose.scales[1]"),
    ],
)
def test_every_float_config_key_must_be_finite(tmp_path, override, where):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: binary\n")
    with pytest.raises(ConfigError, match=re.escape(f"{where} must be a finite number")):
        load_config(config, ExperimentConfig, [override])


def test_study_sections_and_yaml_values_are_checked_too():
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        config_from_dict(ReferenceSAESection, {"lr": float("nan")})
    with pytest.raises(ConfigError, match="synthetic.noise must be a finite number"):
        config_from_dict(
            ExperimentConfig, {"dataset": "synthetic", "synthetic": {"noise": float("inf")}}
        )


def test_cli_train_with_nan_sparsity_target_exits_2_with_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"dataset": "binary", "out_dir": str(tmp_path / "runs")}))
    result = CliRunner().invoke(
        cli.app, ["train", str(config), "--set", "train.sparsity_target=nan"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "train.sparsity_target must be a finite number" in lines[0]
    assert not (tmp_path / "runs" / "train").exists()


def test_a_non_finite_loss_stops_training_and_saves_no_checkpoint(tmp_path):
    # Finite config and data whose squared error overflows float32 (1e30^2 > 3.4e38): the first
    # loss is inf.
    data = torch.randn(64, 8) * 1e30
    cfg = TrainingSSAEConfig(
        d_in=8,
        d_sae=2,
        shift_normalization="none",
        reconstruction_loss="mse",
        training_steps=4,
        batch_size=16,
    )
    with pytest.raises(
        NonFiniteError,
        match=r"became inf at step 0 \(losses: \{'recon_loss': inf.*were not saved\. Lower lr",
    ):
        train_ssae(data, cfg, checkpoint_path=tmp_path / "ckpt", n_checkpoints=2, progress=False)
    saved = list((tmp_path / "ckpt").rglob("*")) if (tmp_path / "ckpt").exists() else []
    assert saved == []


def _nan_ssae() -> SSAE:
    sae = SSAE(SSAEConfig(d_in=8, d_sae=3))
    with torch.no_grad():
        sae.W_dec[1, 2] = float("nan")
    return sae


def test_save_model_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    with pytest.raises(NonFiniteError, match="W_dec"):
        _nan_ssae().save_model(tmp_path / "nan_ssae")
    assert not (tmp_path / "nan_ssae").exists()


@pytest.mark.parametrize("kind", ["ssae", "saelens"])
def test_publish_refuses_non_finite_weights_and_writes_nothing(tmp_path, kind):
    if kind == "ssae":
        sae = _nan_ssae()
    else:  # any SAELens dictionary: publish checks it, not only the SSAE's save_model
        sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=3))
        with torch.no_grad():
            sae.b_enc[0] = float("inf")
    with pytest.raises(NonFiniteError, match="refusing to publish me/x"):
        publish(sae, "me/x", "blocks.0.hook_resid_post", out_dir=tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()
