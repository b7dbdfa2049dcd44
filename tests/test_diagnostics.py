"""Decomposition diagnostics on hand-built SAEs whose answers can be worked out by hand."""

import json
import warnings

import pytest
import torch
from sae_lens.saes import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from ssae_lens.steering.diagnostics import (
    DecompositionWarning,
    DiagnosticThresholds,
    diagnose_decomposition,
    signed_pre_activations,
)

E = torch.eye(4)


def hand_sae(b_enc=(0.0, 0.0, 0.0, 0.0, 0.0), hook_name=None):
    """Features 0-3 read and write the axes e0..e3; feature 4 is the mirror image of feature 0
    (encoder and decoder -e0). No decoder bias, so encode(x) = relu(x @ W_enc + b_enc)."""
    cfg = StandardSAEConfig(d_in=4, d_sae=5)
    if hook_name is not None:
        cfg.metadata.hook_name = hook_name
    sae = StandardSAE(cfg)
    w_dec = torch.cat([E, -E[:1]])
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_enc.copy_(torch.tensor(b_enc))
        sae.b_dec.zero_()
    return sae


def diagnose_quietly(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = diagnose_decomposition(*args, **kwargs)
    emitted = [str(w.message) for w in caught if issubclass(w.category, DecompositionWarning)]
    return report, emitted


def features(values):
    return [f.feature for f in values]


def test_negative_projection_and_antipodal_pair_are_reported():
    # v = -2 e0 + e1: pre-activations [-2, 1, 0, 0, 2]; ReLU drops feature 0, and its mirror
    # image feature 4 fires instead.
    v = -2 * E[0] + E[1]
    report, emitted = diagnose_quietly(hand_sae(), v)

    assert torch.allclose(report.pre_activations, torch.tensor([-2.0, 1, 0, 0, 2]))
    assert torch.allclose(report.projections, torch.tensor([-2.0, 1, 0, 0, 2]))
    assert features(report.top_features) == [4, 1]
    assert [f.value for f in report.top_features] == pytest.approx([2.0, 1.0])
    assert features(report.negative_projections) == [0]
    assert report.negative_projections[0].value == pytest.approx(-2.0)
    assert report.encoder_cosines[0].item() == pytest.approx(-2 / 5**0.5)
    assert report.decoder_cosines.tolist() == pytest.approx(
        [-2 / 5**0.5, 1 / 5**0.5, 0, 0, 2 / 5**0.5]
    )
    assert features(report.top_decoder_cosines) == [4, 1]
    assert features(report.bottom_decoder_cosines) == [0]
    assert [(p.active_feature, p.opposed_feature) for p in report.antipodal_pairs] == [(4, 0)]
    assert report.antipodal_pairs[0].decoder_cosine == pytest.approx(-1.0)
    assert any("points against features 0" in m for m in emitted)
    assert any("4 vs 0" in m for m in emitted)
    assert emitted == report.warnings


def test_bias_dominance_overlap():
    # encode(0) = [0, 0, .3, .2, 0]; encode(0.05 e1) = [0, .05, .3, .2, 0].
    sae = hand_sae(b_enc=(0.0, 0.0, 0.3, 0.2, 0.0))
    report, emitted = diagnose_quietly(sae, 0.05 * E[1], top_k=10)
    assert features(report.bias_features) == [2, 3]
    assert features(report.top_features) == [2, 3, 1]
    assert report.bias_overlap == pytest.approx(2 / 3)
    assert any("encoder bias dominates" in m for m in emitted)

    # With top_k=2 the naive top features are exactly the bias features.
    report, _ = diagnose_quietly(sae, 0.05 * E[1], top_k=2)
    assert report.bias_overlap == pytest.approx(1.0)

    # Raising the threshold above the overlap silences the warning.
    _, emitted = diagnose_quietly(
        sae, 0.05 * E[1], top_k=10, thresholds=DiagnosticThresholds(bias_overlap=0.7)
    )
    assert not any("encoder bias" in m for m in emitted)


def test_norm_percentile_and_ratio():
    sae = hand_sae()
    acts = torch.arange(1.0, 6.0)[:, None] * E[1]  # norms 1..5, median 3
    report, emitted = diagnose_quietly(sae, 3 * E[1], acts, scales=(1.0,))
    assert report.activation_norm_median == pytest.approx(3.0)
    assert report.norm_ratio == pytest.approx(1.0)
    assert report.norm_percentile == pytest.approx(50.0)  # 2 below, one tie counted half
    assert not any("out of the SAE's input" in m for m in emitted)

    report, emitted = diagnose_quietly(sae, 15 * E[1], acts, scales=(1.0,))
    assert report.norm_ratio == pytest.approx(5.0)
    assert report.norm_percentile == pytest.approx(100.0)
    assert any("5x the median activation norm" in m for m in emitted)


def test_in_context_equals_direct_computation():
    torch.manual_seed(0)
    cfg = StandardSAEConfig(d_in=6, d_sae=12)
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.normal_()
    acts = torch.randn(37, 6) * 3
    v = torch.randn(6)
    scales = (0.5, 2.0, -1.0)
    report, _ = diagnose_quietly(sae, v, acts, scales=scales, batch_size=8)

    def relu_encode(x):
        return torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)

    with torch.no_grad():
        expected = torch.stack(
            [(relu_encode(acts + a * v) - relu_encode(acts)).mean(dim=0) for a in scales]
        )
    assert report.scales == list(scales)
    assert torch.allclose(report.in_context, expected, atol=1e-5)
    for row, top in zip(expected, report.in_context_top, strict=True):
        assert top[0].feature == row.abs().argmax().item()


def test_naive_and_in_context_disagreement_warns():
    # Activations with a large e0 component: adding a v = a(-2 e0 + e1) lowers feature 0 by
    # 2a and raises feature 1 by a; the mirror feature 4 stays off (-5 + 2a < 0 for a <= 2).
    # The naive top features {4, 1} share one of three features with the in-context {0, 1}.
    acts = 5 * E[0] + torch.linspace(0.5, 2.0, 16)[:, None] * E[1]
    report, emitted = diagnose_quietly(hand_sae(), -2 * E[0] + E[1], acts, scales=(0.5, 1, 2))
    for scale, row, top in zip(
        report.scales, report.in_context, report.in_context_top, strict=True
    ):
        assert row.tolist() == pytest.approx([-2 * scale, scale, 0, 0, 0])
        assert features(top) == [0, 1]
    assert report.in_context_agreement == pytest.approx([1 / 3] * 3)
    assert any("disagree with the in-context decomposition" in m for m in emitted)


def test_no_warning_for_a_well_behaved_vector():
    # v = 3 e1 against activations of similar norm in the positive orthant: encode(v) = 3 e1,
    # encode(0) = 0, nothing to drop, and in context feature 1 rises by 3a.
    acts = torch.tensor([[0.0, 2.0, 1.0, 2.0], [0.0, 1.0, 2.0, 2.0], [0.0, 2.0, 2.0, 1.0]])
    report, emitted = diagnose_quietly(hand_sae(), 3 * E[1], acts, scales=(0.5, 1.0))
    assert emitted == []
    assert report.warnings == []
    assert report.bias_features == []
    assert report.bias_overlap == 0.0
    assert report.in_context_agreement == [1.0, 1.0]
    assert report.in_context[:, 1].tolist() == pytest.approx([1.5, 3.0])
    assert "no warnings" in report.summary()


def test_report_outputs(tmp_path):
    acts = 5 * E[0] + torch.linspace(0.5, 2.0, 16)[:, None] * E[1]
    report, _ = diagnose_quietly(
        hand_sae(hook_name="blocks.0.hook_resid_post"), -2 * E[0] + E[1], acts
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["hook_name"] == "blocks.0.hook_resid_post"
    assert data["top_features"][0] == {"feature": 4, "value": 2.0}
    assert data["warnings"] == report.warnings
    text = report.summary()
    assert "blocks.0.hook_resid_post" in text and "WARNINGS" in text and "4 <- -0" in text
    path = report.plot(tmp_path / "sub" / "decomposition.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["decomposition.png"]


def test_without_activations_skips_in_context():
    report, _ = diagnose_quietly(hand_sae(), E[1])
    assert report.in_context is None and report.norm_ratio is None
    assert "skipped" in report.summary()
    report.figure()


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "gated"])
def test_signed_pre_activations_across_architectures(arch):
    torch.manual_seed(1)
    if arch == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=6, d_sae=10, k=3))
        bias = sae.b_enc
    elif arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=6, d_sae=10))
        bias = sae.b_enc
    else:
        sae = GatedSAE(GatedSAEConfig(d_in=6, d_sae=10))
        bias = sae.b_gate
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    x = torch.randn(6)
    with torch.no_grad():
        expected = (x - sae.b_dec) @ sae.W_enc + bias
        assert torch.allclose(signed_pre_activations(sae, x), expected, atol=1e-5)
        report, _ = diagnose_quietly(sae, x, torch.randn(20, 6), scales=(1.0,))
    assert torch.allclose(report.pre_activations, expected, atol=1e-5)
    assert all(f.value != 0 for f in report.top_features)


def test_bad_input_errors():
    sae = hand_sae(hook_name="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=r"shape \(3,\) but the SAE expects \(4,\)"):
        diagnose_decomposition(sae, torch.ones(3))
    with pytest.raises(ValueError, match=r"activations must have shape \[n, 4\]"):
        diagnose_decomposition(sae, torch.ones(4), torch.ones(5, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        diagnose_decomposition(sae, torch.tensor([1.0, float("nan"), 0, 0]))
    with pytest.raises(ValueError, match="Unknown DiagnosticThresholds fields"):
        DiagnosticThresholds.from_dict({"bias_overlapp": 0.5})
    thresholds = DiagnosticThresholds(bias_overlap=0.9)
    assert DiagnosticThresholds.from_dict(thresholds.to_dict()) == thresholds


def test_steering_vector_input_and_hook_mismatch():
    from ssae_lens.steering import SteeringVector

    sae = hand_sae(hook_name="blocks.0.hook_resid_post")
    report, _ = diagnose_quietly(sae, SteeringVector(3 * E[1], "blocks.0.hook_resid_post"))
    assert report.hook_name == "blocks.0.hook_resid_post"
    assert features(report.top_features) == [1]
    with pytest.raises(ValueError, match="applied at 'blocks.1.hook_resid_post' but the SAE"):
        diagnose_decomposition(sae, SteeringVector(E[1], "blocks.1.hook_resid_post"))
