"""The SSAE architecture: maths, SAELens registration, saving and loading."""

import json
import shutil

import huggingface_hub.constants as hf_constants
import numpy as np
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


def test_register_adds_both_classes_to_empty_registries(monkeypatch):
    # what the first import does (the registries are already filled by this session's import)
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    monkeypatch.delitem(SAE_CLASS_REGISTRY, "ssae")
    monkeypatch.delitem(SAE_TRAINING_CLASS_REGISTRY, "ssae")
    register()
    assert get_sae_class("ssae") == (SSAE, SSAEConfig)
    assert get_sae_training_class("ssae") == (TrainingSSAE, TrainingSSAEConfig)


def test_encode_decode_match_hand_computation_with_scale_normalisation():
    sae = _random_ssae("scale")
    x = torch.randn(7, 12)
    scale = sae.shift_scale
    codes = sae.encode(x)
    torch.testing.assert_close(codes, (x * scale) @ sae.W_enc)
    torch.testing.assert_close(sae.decode(codes), (codes @ sae.W_dec) / scale)


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_leading_dimensions_are_batch_dimensions(norm):
    # encode/decode take "... d_in": a (2, 3, d_in) batch gives the rows of the (6, d_in) one
    sae = _random_ssae(norm, topk=2, code_normalization="layer_norm")
    x = torch.randn(6, 12)
    flat_codes = sae.encode(x)
    flat_out = sae.decode(flat_codes)
    codes = sae.encode(x.reshape(2, 3, 12))
    torch.testing.assert_close(codes, flat_codes.reshape(2, 3, 5))
    torch.testing.assert_close(sae.decode(codes), flat_out.reshape(2, 3, 12))


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


# ---------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("norm", ["standardize", "layer_norm"])
def test_per_sample_normalisations_match_their_formulas(norm):
    sae = _random_ssae(norm)
    x = torch.randn(7, 12) * 4 + 2
    xs = x.double().numpy()
    mean = xs.mean(-1, keepdims=True)
    if norm == "standardize":  # the SSAE reference code: unbiased std, eps outside the root
        spread = xs.std(-1, ddof=1, keepdims=True) + 1e-5
    else:  # torch layer_norm: biased variance, eps inside the root
        spread = np.sqrt(xs.var(-1, keepdims=True) + 1e-5)
    normalised = torch.from_numpy((xs - mean) / spread).float()
    codes = sae.encode(x)
    torch.testing.assert_close(codes, normalised @ sae.W_enc, atol=1e-5, rtol=1e-5)
    # decode right after encode maps back with the same per-sample statistics
    expected = (codes.double() @ sae.W_dec.double()).detach().numpy() * spread + mean
    torch.testing.assert_close(sae.decode(codes), torch.from_numpy(expected).float())


def test_code_layer_norm_matches_its_formula_and_precedes_topk():
    sae = _random_ssae("none", code_normalization="layer_norm")
    x = torch.randn(9, 12)
    pre = (x @ sae.W_enc).double()
    mean = pre.mean(-1, keepdim=True)
    var = ((pre - mean) ** 2).mean(-1, keepdim=True)
    expected = ((pre - mean) / (var + 1e-5).sqrt()).float()
    codes, hidden_pre = sae.encode_with_hidden_pre(x)
    torch.testing.assert_close(codes, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden_pre, pre.float())
    topk = _random_ssae("none", code_normalization="layer_norm", topk=2)
    kept = topk.encode(x)
    keep = expected.abs().topk(2, dim=-1).indices
    torch.testing.assert_close(
        kept, torch.zeros_like(expected).scatter(-1, keep, expected.gather(-1, keep))
    )


def test_use_bias_makes_learned_biases_that_enter_encode_and_decode(tmp_path):
    sae = _random_ssae("scale", use_bias=True)
    names = dict(sae.named_parameters())
    assert "b_enc" in names and "b_dec" in names
    assert "b_enc" not in dict(_random_ssae("scale").named_parameters())
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-1, 1, 5))
        sae.b_dec.copy_(torch.linspace(0.5, -0.5, 12))
    x = torch.randn(6, 12)
    s = float(sae.shift_scale)
    codes = sae.encode(x)
    torch.testing.assert_close(codes, (x * s - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(sae.decode(codes), (codes @ sae.W_dec + sae.b_dec) / s)
    assert sae.encode(torch.zeros(1, 12)).abs().max() > 0  # a zero shift no longer maps to 0
    sae.save_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)


@pytest.mark.parametrize("use_bias", [False, True])
def test_normalize_decoder_preserves_reconstructions_and_rescales_codes(use_bias):
    sae = _random_ssae("scale", use_bias=use_bias)
    norms = torch.tensor([0.1, 0.5, 2.0, 3.0, 10.0])
    with torch.no_grad():
        sae.W_dec.mul_(norms[:, None])  # rows of norm 0.1 .. 10
        if use_bias:
            sae.b_enc.copy_(torch.linspace(-1, 1, 5))
            sae.b_dec.copy_(torch.linspace(0.5, -0.5, 12))
    x = torch.randn(8, 12)
    before_out, before_codes = sae(x).detach(), sae.encode(x).detach()
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(sae(x), before_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.encode(x), before_codes * norms, atol=1e-5, rtol=1e-5)


def test_training_losses_match_hand_computation():
    from sae_lens.saes.sae import TrainStepInput

    x = torch.randn(10, 6) * 3
    for loss_kind in ("relative", "mse"):
        cfg = TrainingSSAEConfig(
            d_in=6, d_sae=3, reconstruction_loss=loss_kind, sparsity_target=0.4
        )
        sae = TrainingSSAE(cfg)
        sae.fit_normalization(x)
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(6, 3))
            sae.W_dec.copy_(torch.randn(3, 6) * 2)  # the step projects rows to unit norm
            sae.lagrange_multiplier.fill_(0.7)
        w_dec = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)
        xn = x * float(sae.shift_scale)
        codes = xn @ sae.W_enc.detach()
        err = ((codes @ w_dec - xn) ** 2).sum(-1)
        expected = err / (xn**2).sum(-1) if loss_kind == "relative" else err
        step = TrainStepInput(x, {}, None, n_training_steps=0, is_logging_step=False)
        out = sae.training_forward_pass(step)
        assert out.losses["recon_loss"].item() == pytest.approx(float(expected.mean()), rel=1e-5)
        violation = float(codes.abs().mean()) - 0.4
        assert out.losses["constraint_loss"].item() == pytest.approx(0.7 * violation, rel=1e-5)
        assert out.loss.item() == pytest.approx(float(expected.mean()) + 0.7 * violation, rel=1e-5)


def test_l1_loss_is_the_coefficient_times_the_mean_absolute_code():
    from sae_lens.saes.sae import TrainStepInput

    sae = TrainingSSAE(TrainingSSAEConfig(d_in=6, d_sae=3, sparsity="l1", l1_coefficient=0.3))
    assert sae.get_coefficients() == {"l1": 0.3}
    x = torch.randn(10, 6)
    sae.fit_normalization(x)
    step = TrainStepInput(x, sae.get_coefficients(), None, 0, False)
    out = sae.training_forward_pass(step)
    codes = (x * float(sae.shift_scale)) @ sae.W_enc.detach()
    assert out.losses["l1_loss"].item() == pytest.approx(0.3 * float(codes.abs().mean()), rel=1e-5)
    assert "constraint_loss" not in out.losses
    assert not sae.lagrange_multiplier.requires_grad


def test_sparsity_target_ramp_is_linear_then_constant():
    cfg = TrainingSSAEConfig(
        d_in=4, d_sae=2, sparsity_target=0.1, sparsity_target_start=1.0,
        sparsity_target_ramp_steps=10,
    )  # fmt: skip
    ramp = [cfg.sparsity_target_at(s) for s in (0, 5, 9, 10, 500)]
    assert ramp == pytest.approx([1.0, 0.55, 0.19, 0.1, 0.1])
    no_start = TrainingSSAEConfig(
        d_in=4, d_sae=2, sparsity_target=0.1, sparsity_target_ramp_steps=10
    )
    assert no_start.sparsity_target_at(0) == 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decoder_init_norm": 0.1}, "decoder_init_norm=0.1 is a SAELens option"),
        ({"normalize_activations": "layer_norm"}, "set shift_normalization instead"),
        ({"apply_b_dec_to_input": False}, "always subtracts b_dec"),
    ],
)
def test_sae_lens_options_the_ssae_does_not_implement_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingSSAEConfig(d_in=4, d_sae=2, **kwargs)
    if "decoder_init_norm" not in kwargs:
        with pytest.raises(ValueError, match=message):
            SSAEConfig(d_in=4, d_sae=2, **kwargs)
