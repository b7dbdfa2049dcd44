"""The SSAE architecture: maths, SAELens registration, saving and loading."""

import json
import shutil

import huggingface_hub.constants as hf_constants
import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import get_sae_class, get_sae_training_class
from safetensors.torch import save_file

import ssae_lens
from ssae_lens import SSAE, SSAEConfig, TrainingSSAE, TrainingSSAEConfig
from ssae_lens.ssae.model import register

NORMALIZATIONS = ["none", "scale", "standardize", "layer_norm", "whiten"]


def _random_ssae(norm: str = "scale", d_in: int = 12, d_sae: int = 5, **kw) -> SSAE:
    torch.manual_seed(0)
    sae = SSAE(SSAEConfig(d_in=d_in, d_sae=d_sae, shift_normalization=norm, **kw))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
        sae.normalize_decoder()
    sae.fit_normalization(torch.randn(200, d_in) * 3.0)
    return sae


def test_registered_with_sae_lens_and_registration_is_idempotent():
    assert get_sae_class("ssae") == (SSAE, SSAEConfig)
    assert get_sae_training_class("ssae") == (TrainingSSAE, TrainingSSAEConfig)
    register()  # a second import / call must not raise
    assert get_sae_class("ssae")[0] is ssae_lens.SSAE


def test_encode_decode_match_hand_computation_with_scale_normalisation():
    sae = _random_ssae("scale")
    x = torch.randn(7, 12)
    scale = sae.shift_scale
    codes = sae.encode(x)
    torch.testing.assert_close(codes, (x * scale) @ sae.W_enc)
    torch.testing.assert_close(sae.decode(codes), (codes @ sae.W_dec) / scale)


def test_scale_normalisation_gives_unit_mean_square_norm():
    sae = SSAE(SSAEConfig(d_in=6, d_sae=2))
    x = torch.randn(500, 6) * 7.0
    sae.fit_normalization(x)
    assert (x * sae.shift_scale).pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-5)


def test_whitening_makes_second_moment_identity_and_is_inverted():
    sae = SSAE(SSAEConfig(d_in=6, d_sae=3, shift_normalization="whiten"))
    mix = torch.eye(6) + 0.3 * torch.randn(6, 6)  # well conditioned: ridge negligible
    x = torch.randn(4000, 6) @ mix
    sae.fit_normalization(x)
    xw = x @ sae.whitening
    torch.testing.assert_close(xw.T @ xw / len(x), torch.eye(6), atol=2e-3, rtol=0)
    torch.testing.assert_close(sae.whitening @ sae.unwhitening, torch.eye(6), atol=1e-4, rtol=0)


def test_zero_shift_gives_zero_code_without_bias():
    for norm in ("none", "scale", "whiten"):
        sae = _random_ssae(norm)
        assert sae.encode(torch.zeros(3, 12)).abs().max() == 0
        assert sae.decode(torch.zeros(3, 5)).abs().max() == 0


def test_codes_are_signed():
    sae = _random_ssae("none")
    codes = sae.encode(torch.randn(100, 12))
    assert (codes < 0).any() and (codes > 0).any()


def test_topk_keeps_largest_magnitudes_with_sign():
    sae = _random_ssae("none", topk=2)
    x = torch.randn(20, 12)
    dense = x @ sae.W_enc
    codes = sae.encode(x)
    assert ((codes != 0).sum(-1) == 2).all()
    expected_idx = dense.abs().topk(2, dim=-1).indices.sort(-1).values
    got_idx = (codes != 0).nonzero()[:, 1].view(20, 2).sort(-1).values
    assert torch.equal(expected_idx, got_idx)
    torch.testing.assert_close(codes.gather(-1, got_idx), dense.gather(-1, got_idx))


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_forward_reconstructs_in_raw_space_for_a_perfect_dictionary(norm):
    # A square orthogonal dictionary reconstructs exactly, whatever the normalisation.
    d = 8
    sae = SSAE(SSAEConfig(d_in=d, d_sae=d, shift_normalization=norm))
    q, _ = torch.linalg.qr(torch.randn(d, d))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
    x = torch.randn(50, d) * 4 + 1
    sae.fit_normalization(x)
    torch.testing.assert_close(sae(x), x, atol=1e-4, rtol=1e-4)


def test_steering_vector_undoes_whitening():
    sae = _random_ssae("whiten")
    v = sae.steering_vector(2)
    expected = sae.W_dec[2] @ sae.unwhitening
    torch.testing.assert_close(v, expected / expected.norm())
    assert v.norm().item() == pytest.approx(1.0)
    with pytest.raises(IndexError):
        sae.steering_vector(5)


def test_steering_vector_is_unit_decoder_row_for_scalar_normalisation():
    sae = _random_ssae("scale")
    torch.testing.assert_close(sae.steering_vector(1), sae.W_dec[1] / sae.W_dec[1].norm())


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_save_then_sae_lens_load_from_disk_gives_identical_outputs(tmp_path, norm):
    sae = _random_ssae(norm)
    x = torch.randn(9, 12)
    sae.save_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is SSAE
    assert loaded.cfg == sae.cfg
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)


def test_training_ssae_round_trip_keeps_multiplier(tmp_path):
    sae = TrainingSSAE(TrainingSSAEConfig(d_in=4, d_sae=2, sparsity_target=0.2))
    with torch.no_grad():
        sae.lagrange_multiplier.fill_(1.5)
    sae.save_model(tmp_path)
    loaded = TrainingSSAE.load_from_disk(tmp_path)
    assert type(loaded) is TrainingSSAE
    assert loaded.lagrange_multiplier.item() == 1.5
    assert loaded.cfg.sparsity_target == 0.2
    inference = loaded.to_inference()
    assert "lagrange_multiplier" not in inference.state_dict()


def test_config_dict_round_trips():
    cfg = SSAEConfig(d_in=5, d_sae=3, shift_normalization="whiten", topk=2)
    assert SSAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    tcfg = TrainingSSAEConfig(d_in=5, d_sae=3, sparsity="l1", l1_coefficient=0.3)
    back = TrainingSSAEConfig.from_dict(json.loads(json.dumps(tcfg.to_dict())))
    assert back.to_dict() == tcfg.to_dict()
    assert back.l1_coefficient == 0.3
    # Training-only fields are recorded in the metadata of the inference config.
    details = tcfg.get_inference_sae_cfg_dict()["metadata"]["training_architecture_details"]
    assert details["sparsity"] == "l1" and details["lr"] == tcfg.lr


def test_from_pretrained_reads_a_local_hugging_face_cache(tmp_path, monkeypatch):
    sae = _random_ssae("whiten")
    repo_id, sae_id, commit = "someone/ssae-test", "blocks.6.hook_resid_post", "a" * 40
    repo = tmp_path / f"models--{repo_id.replace('/', '--')}"
    folder = repo / "snapshots" / commit / sae_id
    sae.save_model(folder)
    save_file({"sparsity": torch.zeros(5)}, folder / "sparsity.safetensors")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    loaded = SAE.from_pretrained(repo_id, sae_id)
    assert type(loaded) is SSAE
    x = torch.randn(4, 12)
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_in": 4, "d_sae": 0}, "d_sae must be a positive int"),
        ({"d_in": 0, "d_sae": 2}, "d_in must be a positive int"),
        ({"d_in": 4, "d_sae": 2, "shift_normalization": "whitten"}, "Did you mean 'whiten'"),
        ({"d_in": 4, "d_sae": 2, "code_normalization": "batch"}, "code_normalization"),
        ({"d_in": 4, "d_sae": 1, "code_normalization": "layer_norm"}, "one-unit code"),
        ({"d_in": 4, "d_sae": 2, "topk": 3}, "topk must be in"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SSAEConfig(**kwargs)


def test_training_config_checks_sparsity_mode():
    with pytest.raises(ValueError, match="Did you mean 'constraint'"):
        TrainingSSAEConfig(d_in=4, d_sae=2, sparsity="constrain")
    with pytest.raises(ValueError, match="needs topk"):
        TrainingSSAEConfig(d_in=4, d_sae=2, sparsity="topk")


def test_per_sample_normalisation_decode_needs_encode_first():
    sae = _random_ssae("standardize")
    with pytest.raises(RuntimeError, match="per-sample"):
        SSAE(sae.cfg).decode(torch.zeros(1, 5))
