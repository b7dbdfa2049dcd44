"""The paper-reproduction study: its building blocks against hand computations, and a full run
on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import ssae_lens.paper as paper
from ssae_lens.data.pairs import ConceptPairs
from ssae_lens.metrics import regression_directions
from ssae_lens.paper import Cell, Data, Fit, PaperConfig, Study

ROOT = Path(__file__).parents[1]


def _data(src, tgt, labels, concepts, reference, sources=None, targets=None) -> Data:
    n = src.shape[0]
    sources = sources or [f"s{i}" for i in range(n)]
    targets = targets or [f"t{i}" for i in range(n)]
    pairs = ConceptPairs(sources, targets)
    return Data("toy", pairs, pairs, src, tgt, src, tgt, labels, labels, concepts, reference)


def test_regression_directions_recover_centred_value_directions():
    torch.manual_seed(0)
    values = torch.randn(3, 8)
    values -= values.mean(0)  # one factor with 3 values, directions centred within the factor
    changes = [(0, 1), (1, 2), (2, 0), (1, 0), (0, 2)]
    labels = torch.zeros(len(changes), 3)
    for i, (old, new) in enumerate(changes):
        labels[i, new], labels[i, old] = 1.0, -1.0
    shifts = torch.stack([values[new] - values[old] for old, new in changes])
    torch.testing.assert_close(regression_directions(shifts, labels), values, atol=1e-5, rtol=0)


def test_fit_matches_permuted_sign_flipped_directions_to_their_concepts():
    reference = torch.eye(3, 5)
    learned = torch.stack([-2 * reference[2], reference[0] + 0.1 * reference[1], reference[1]])
    fit = paper._fit_from(learned, torch.zeros(4, 3), reference)
    assert torch.allclose(fit.matched[2], reference[2])  # sign flipped back
    assert fit.matched[0] @ reference[0] > 0.99
    expected = (1 + 1 + 1 / (1 + 0.01) ** 0.5) / 3
    assert fit.alignment == pytest.approx(expected, abs=1e-6)


def test_pair_directions_sum_the_concepts_a_pair_changes():
    matched = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    fit = Fit(matched, torch.zeros(3, 2), matched, 1.0)
    labels = torch.tensor([[1.0, 0], [0, 1], [1, -1]])
    expected = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, -1, 0]])
    torch.testing.assert_close(paper.pair_directions(fit, labels), expected)
    shared = Fit(matched[:1], torch.zeros(3, 1), matched[:1].expand(2, -1), 1.0, shared=True)
    torch.testing.assert_close(paper.pair_directions(shared, labels), matched[:1].expand(3, -1))


def test_supervised_directions_steer_better_than_a_wrong_one():
    torch.manual_seed(0)
    src = torch.randn(50, 16) + 5
    concept = torch.linalg.qr(torch.randn(16, 2)).Q.T * 3  # orthogonal: codes = 9 * labels
    labels = torch.randint(0, 2, (50, 2)).float()
    labels[labels.sum(-1) == 0, 0] = 1.0
    tgt = src + labels @ concept
    data = _data(src, tgt, labels, ["a", "b"], concept)
    right = paper.evaluate(paper.fit_supervised(data), data)
    swapped = Fit(concept.flip(0), torch.zeros(50, 2), concept.flip(0), 1.0)
    wrong = paper.evaluate(swapped, data)
    assert right["alignment"] == pytest.approx(1.0)
    assert right["label_mcc"] == pytest.approx(1.0, abs=1e-5)
    assert right["accuracy"] > wrong["accuracy"]


def test_transfer_drops_seen_pairs_and_maps_concepts():
    d = 4
    source = _data(
        torch.zeros(2, d),
        torch.ones(2, d),
        torch.tensor([[1.0, 0], [0, 1]]),
        ["language", "gender"],
        torch.eye(2, d),
        sources=["king", "king"],
        targets=["roi", "queen"],
    )
    target = _data(
        torch.arange(3 * d, dtype=torch.float32).reshape(3, d),
        torch.zeros(3, d),
        torch.tensor([[1.0], [1.0], [1.0]]),
        ["gender"],
        torch.eye(1, d),
        sources=["king", "man", "boy"],
        targets=["queen", "woman", "girl"],
    )
    src, tgt, labels = paper._transfer_data(source, target, {"gender": "gender"})
    # Data stores train and test; here both are the same 3 pairs, so 2 unseen pairs twice.
    assert src.shape[0] == 4 and tgt.shape == src.shape
    assert torch.equal(labels, torch.tensor([[0.0, 1]] * 4))
    with pytest.raises(ValueError, match="map target concept 'gender'"):
        paper._transfer_data(source, target, {})


def test_claims_report_failures_honestly():
    study = Study()
    good = Cell(alignment=[0.9], accuracy=[0.8], seed_agreement=[0.95, 0.97, 0.99])
    weak = Cell(alignment=[0.5], accuracy=[0.85], seed_agreement=[0.5])
    study.main["binary"] = {m: weak for m in paper.METHODS} | {"SSAE": good}
    claims = {c: ok for c, ok, _ in paper._claims(study, PaperConfig())}
    assert claims["seed-agreement MCC >= 0.9 on binary, above aff"]
    assert any(ok for c, ok in claims.items() if c.startswith("concept alignment"))
    assert not claims["steering accuracy SSAE > aff and mean-diff: binary"]


def test_shipped_config_is_the_default_study():
    shipped = yaml.safe_load((ROOT / "configs/paper.yaml").read_text())
    defaults = json.loads(json.dumps(PaperConfig().to_dict()))
    assert {**shipped, "transfers": [list(t) for t in shipped["transfers"]]} == defaults


def test_study_runs_end_to_end_on_the_tiny_model(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(paper, "load_model", lambda name, **kw: tiny_model)
    cfg = PaperConfig(
        model="tiny",
        hook_name="blocks.1.hook_resid_post",
        datasets=["binary", "corr", "categorical"],
        seeds=[0, 1],
        training_steps=20,
        width_multipliers=[1, 2],
        layers=[0, 1],
        sparsity_sweep=[0.1],
        sae_width=16,
        sae_tokens=2048,
        out_dir=str(tmp_path / "out"),
    )
    report = paper.run_paper(cfg).read_text()
    results = json.loads((tmp_path / "out/paper.json").read_text())
    assert set(results["main"]) == {"binary", "corr", "categorical"}
    assert set(results["transfer"]) == {"binary -> gender", "corr -> language"}
    assert set(results["width"]) == {"29", "58"}  # 9 shapes + 10 colours + 10 objects
    assert set(results["layers"]) == {"0", "1"} and set(results["sparsity"]) == {"0.1"}
    for row in results["main"].values():
        for method, cell in row.items():
            n = 1 if method in ("PCA", "mean-diff", "supervised") else 2
            assert len(cell["accuracy"]) == n and all(-1 <= a <= 1 for a in cell["accuracy"])
            assert all(0 <= v <= 1 + 1e-6 for v in cell["alignment"] + cell["label_mcc"])
            assert len(cell["seed_agreement"]) == (1 if n == 2 else 0)
    assert results["main"]["binary"]["supervised"]["alignment"] == [pytest.approx(1.0)]
    assert "| claim | holds |" in report and "binary -> gender" in report
    for name in ("paper_steering.png", "paper_layers.png", "paper_width.png", "paper_config.yaml"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_calibrated_target_is_aff_code_scale_times_active_fraction(tmp_path, monkeypatch):
    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path))
    torch.manual_seed(0)
    concepts = torch.randn(2, 16)
    labels = torch.zeros(120, 2)
    labels[torch.arange(120), torch.arange(120) % 2] = 1.0  # one of the two changes per pair
    labels[:40] = 1.0  # a third change both: 4/3 concepts per pair on average
    src = torch.randn(120, 16)
    data = _data(src, src + labels @ concepts, labels, ["a", "b"], concepts)
    cfg = PaperConfig(training_steps=30)
    aff = paper._train(data, 2, 0, cfg, None)
    scale = float(aff.encode(data.shifts_tr).detach().abs().mean())
    target = paper.calibrated_target(data, 2, 0, cfg)
    assert target == pytest.approx(scale * (4 / 3) / 2, rel=1e-5)
    assert paper.calibrated_target(data, 8, 0, cfg) < target  # wider codes: tighter target


@pytest.mark.slow
def test_gemma_binary_ssae_is_identifiable_and_concept_aligned(gemma, tmp_path, monkeypatch):
    """The study's headline on the real model, at reduced size: binary pairs at layer 12."""
    monkeypatch.setattr(paper, "load_model", lambda name, **kw: gemma)
    cfg = PaperConfig(
        datasets=["binary"],
        seeds=[0, 1],
        training_steps=1000,
        transfers=[],
        width_dataset="binary",
        width_multipliers=[1],
        layers=[12],
        sparsity_sweep=[],
        sae_tokens=20_000,
        out_dir=str(tmp_path),
    )
    paper.run_paper(cfg)
    row = json.loads((tmp_path / "paper.json").read_text())["main"]["binary"]
    ssae = row["SSAE"]
    assert min(ssae["seed_agreement"]) > 0.9
    assert min(ssae["alignment"]) > 0.85
    assert min(ssae["alignment"]) > max(row["PCA"]["alignment"] + row["ICA"]["alignment"])
