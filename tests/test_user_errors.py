"""Issue 14 item 5, errors a user can act on: loading a saved SSAE, the widths ``encode`` and
``decode`` take, numpy training data, the command line's one-line errors, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from ssae_lens import cli, models
from ssae_lens.ssae import SSAE, SAELoadError, SSAEConfig, TrainingSSAEConfig, load, train_ssae

runner = CliRunner()


@pytest.fixture
def saved(tmp_path) -> tuple[SSAE, Path]:
    gen = torch.Generator().manual_seed(0)
    sae = SSAE(SSAEConfig(d_in=8, d_sae=3))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(8, 3, generator=gen))
        sae.W_dec.copy_(torch.randn(3, 8, generator=gen))
    sae.save_model(tmp_path / "ssae")
    return sae, tmp_path / "ssae"


def test_load_gives_the_saved_ssae(saved):
    sae, folder = saved
    loaded = load(folder)
    assert type(loaded) is SSAE
    x = torch.randn(4, 8)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)


def test_without_the_registration_sae_lens_gives_a_bare_key_error(saved, monkeypatch):
    # What the README and the model card warn about: SAELens has no plugin entry points, so in
    # a process that did not import ssae_lens (simulated here by unregistering "ssae") loading
    # fails with KeyError: 'ssae'. ssae_lens.load says what to do instead.
    from sae_lens import SAE
    from sae_lens.registry import SAE_CLASS_REGISTRY

    _, folder = saved
    monkeypatch.delitem(SAE_CLASS_REGISTRY, "ssae")
    with pytest.raises(KeyError, match="ssae"):
        SAE.load_from_disk(folder)
    with pytest.raises(SAELoadError, match="'ssae', which no imported package has registered"):
        load(folder)
    monkeypatch.undo()
    assert type(SAE.load_from_disk(folder)) is SSAE


def test_a_truncated_weights_file_names_the_file(saved):
    _, folder = saved
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(SAELoadError, match=r"sae_weights\.safetensors is damaged or truncated"):
        load(folder)


def test_a_cfg_json_of_another_width_names_both_shapes(saved):
    _, folder = saved
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_in"] = 9
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAELoadError, match=r"says d_sae=3, d_in=9 .* W_dec of shape \(3, 8\)"):
        load(folder)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "cfg.json").unlink(), "no cfg.json"),
        (lambda f: (f / "cfg.json").write_text("{not json"), "cfg.json is not valid JSON"),
        (
            lambda f: (f / "cfg.json").write_text(json.dumps({"architecture": "mine"})),
            "architecture 'mine', which no imported package has registered",
        ),
    ],
)
def test_other_broken_folders_name_the_problem(saved, damage, message):
    _, folder = saved
    damage(folder)
    with pytest.raises(SAELoadError, match=message):
        load(folder)


def test_non_finite_weights_are_refused_on_load(saved):
    sae, folder = saved
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "sae_weights.safetensors"))
    state["W_enc"][0, 0] = float("nan")
    save_file(state, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAELoadError, match="W_enc hold NaN or inf"):
        load(folder)


def test_encode_and_decode_with_the_wrong_width_say_which_width(saved):
    sae, _ = saved
    with pytest.raises(ValueError, match=r"shifts must have last dimension d_in=8 .* \(4, 7\)"):
        sae.encode(torch.randn(4, 7))
    with pytest.raises(ValueError, match=r"codes must have last dimension d_sae=3"):
        sae.decode(torch.randn(4, 2))


def test_numpy_training_data_is_converted():
    # Before: "batch 0 must be a torch.Tensor".
    array = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    cfg = TrainingSSAEConfig(d_in=8, d_sae=2, training_steps=10, batch_size=50)
    from_numpy = train_ssae(array, cfg, seed=1, progress=False)
    from_tensor = train_ssae(torch.tensor(array), cfg, seed=1, progress=False)
    torch.testing.assert_close(from_numpy.W_dec, from_tensor.W_dec, rtol=0, atol=0)
    batches = train_ssae(iter(np.split(array, 4) * 3), cfg, seed=1, progress=False)
    assert batches.W_dec.shape == (2, 8)
    with pytest.raises(TypeError, match="float array"):
        train_ssae(np.ones((10, 8), dtype=np.int64), cfg)


def _checkpoint(tmp_path: Path, data: torch.Tensor, seed: int) -> Path:
    cfg = TrainingSSAEConfig(d_in=8, d_sae=2, training_steps=20, batch_size=32)
    train_ssae(
        data, cfg, seed=seed, checkpoint_path=tmp_path / "ckpt", n_checkpoints=1, progress=False
    )
    return min((tmp_path / "ckpt").iterdir(), key=lambda p: p.stat().st_mtime)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"seed": 4}, ValueError, r"with seed=3, but this run has seed=4; resume with seed=3 "),
        (
            {"data": 1.0},
            ValueError,
            r"other data \(data digest [0-9a-f]{12}, this run's [0-9a-f]{12}\)",
        ),
        ({"lose": "run_identity.json"}, FileNotFoundError, r"cannot be checked against this run's"),
    ],
)
def test_resuming_with_another_seed_or_other_data_is_refused(tmp_path, change, error, message):
    # Before: silently accepted (the data order even switched to the checkpoint's seed).
    data = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    middle = _checkpoint(tmp_path, data, seed=3)
    if "lose" in change:
        (middle / change["lose"]).unlink()
    cfg = TrainingSSAEConfig(d_in=8, d_sae=2, training_steps=20, batch_size=32)
    other = data + change.get("data", 0.0)
    with pytest.raises(error, match=message):
        train_ssae(other, cfg, seed=change.get("seed", 3), resume_from=middle, progress=False)


@pytest.fixture
def config(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"model": "tiny", "hook_name": "blocks.1.hook_resid_post", "out_dir": str(tmp_path)}
        )
    )
    return path


def _one_line_exit_2(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_shifts_file_that_is_not_safetensors_is_one_line(config, tmp_path):
    bad = tmp_path / "shifts.safetensors"
    bad.write_text("not a safetensors file")
    result = runner.invoke(cli.app, ["train", str(config), "--shifts", str(bad)])
    _one_line_exit_2(result, str(bad), "is not a shifts file", "ssae-lens harvest")


def test_a_misspelt_model_name_is_one_line_with_the_closest_names(config):
    result = runner.invoke(cli.app, ["harvest", str(config), "--set", "model=gtp2"])
    _one_line_exit_2(result, "unknown model 'gtp2'", "Did you mean 'gpt2'")


def test_a_model_that_is_not_cached_offline_is_one_line(config, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(config.parent / "empty_hf_cache"))
    result = runner.invoke(cli.app, ["harvest", str(config), "--set", "model=gpt2"])
    _one_line_exit_2(result, "cannot load model 'gpt2'", "gemma-3-270m")


def test_a_damaged_ssae_folder_on_the_command_line_is_one_line(config, saved, monkeypatch):
    _, folder = saved
    (folder / "sae_weights.safetensors").write_bytes(b"\x00" * 12)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("no model needed"))
    result = runner.invoke(cli.app, ["evaluate", str(config), "--ssae", str(folder)])
    _one_line_exit_2(result, "sae_weights.safetensors is damaged or truncated")
