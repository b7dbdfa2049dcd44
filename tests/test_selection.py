"""select_sparsity_target and sparsity_target="auto": the label-free choice of the SSAE's
sparsity level, how train_ssae and the cache use it, and the constraint's width factor."""

import dataclasses
import math

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainStepInput

from ssae_lens import SSAE, SSAEConfig, TrainingSSAEConfig, select_sparsity_target, train_ssae
from ssae_lens.data.synthetic import make_synthetic_shifts
from ssae_lens.ssae.model import TrainingSSAE
from ssae_lens.ssae.selection import (
    SparsityPoint,
    SparsitySelection,
    choose,
    default_grid,
    unexplained_fraction,
)
from ssae_lens.ssae.training import load_or_train_ssae

N_CONCEPTS = 5
GRID = [b / N_CONCEPTS for b in (0.5, 1.0, 2.0, 4.0)]


@pytest.fixture(scope="module")
def synthetic():
    # 5 concepts, 1-2 change per pair, d=16: the SSAE recovers them when the constraint binds.
    return make_synthetic_shifts(4_000, N_CONCEPTS, 2, 16, seed=0)


def _cfg(**overrides) -> TrainingSSAEConfig:
    return TrainingSSAEConfig(
        d_in=16, d_sae=N_CONCEPTS, training_steps=1800, batch_size=128, **overrides
    )


@pytest.fixture(scope="module")
def selection(synthetic):
    return select_sparsity_target(synthetic.shifts, _cfg(), grid=GRID)


def _point(
    target: float, agreement: float, recon: float = 0.5, binding: bool = True
) -> SparsityPoint:
    return SparsityPoint(
        target, target, agreement, [agreement], recon, 10, 0.0, float(binding), binding
    )


def test_picks_a_budget_below_the_true_code_norm_but_not_far_below(synthetic, selection):
    # The true code, with unit-norm mixing columns, has mean L1 norm E|dc|_1 / rms(shift) on
    # shifts scaled to unit mean squared norm. Looser budgets leave the code's rotation free
    # (seeds disagree); much tighter ones only shrink the code.
    x, dc = synthetic.shifts, synthetic.concept_changes
    true_budget = float(dc.abs().sum(-1).mean() / x.pow(2).sum(-1).mean().sqrt())
    assert 0.5 * true_budget <= selection.budget <= 1.25 * true_budget, (
        selection.budget,
        true_budget,
    )
    assert selection.target == pytest.approx(selection.budget / N_CONCEPTS)


def test_the_curve_is_sorted_refined_once_and_ends_where_the_constraint_stops_binding(selection):
    targets = [p.target for p in selection.points]
    assert targets == sorted(targets)
    assert selection.target in targets
    assert all(len(p.agreement_pairs) == 1 for p in selection.points)  # one seed pair
    # The refinement: a geometric midpoint between the choice's grid value and the next one.
    extra = [t for t in targets if not any(math.isclose(t, g) for g in GRID)]
    assert len(extra) == 1
    assert any(
        math.isclose(extra[0], math.sqrt(a * b)) for a, b in zip(GRID, GRID[1:], strict=False)
    )
    chosen = next(p for p in selection.points if p.target == selection.target)
    assert chosen.binding and chosen.multiplier > 0
    # Every looser point lost stability or the constraint; the scan stops at the first
    # point where it no longer binds.
    looser = [p for p in selection.points if p.target > chosen.target]
    assert looser
    assert all(not p.binding or p.seed_agreement < chosen.seed_agreement for p in looser)
    assert all(p.binding for p in selection.points[:-1])
    # A looser constraint never reconstructs worse by much (the tie-break's premise).
    assert looser[-1].reconstruction <= chosen.reconstruction + 1e-3
    # 300-step runs (1800 // 6), two seeds per point.
    assert all(p.steps == 300 for p in selection.points)
    assert selection.search_fits == pytest.approx(len(targets) * 2 * 300 / 1800)


def test_record_round_trips_and_plots(selection):
    record = selection.to_dict()
    assert SparsitySelection.from_dict(record) == selection
    fig = selection.figure()
    assert len(fig.axes) == 2  # agreement and, on a twin axis, reconstruction
    left = fig.axes[0]
    # One line for the agreement curve, one marker per point; the chosen budget is marked.
    xs = [float(x) for x in left.lines[0].get_xdata()]
    assert xs == pytest.approx([p.budget for p in selection.points])


def test_deterministic_given_the_seeds(synthetic):
    cfg = TrainingSSAEConfig(d_in=16, d_sae=N_CONCEPTS, training_steps=120, batch_size=64)
    kwargs = {"grid": [0.1, 0.4], "seeds": (3, 4), "refine": 0}
    runs = [select_sparsity_target(synthetic.shifts, cfg, **kwargs) for _ in range(2)]
    strip = [[dataclasses.replace(p, seconds=0.0) for p in r.points] for r in runs]
    assert strip[0] == strip[1]
    assert runs[0].target == runs[1].target
    other = select_sparsity_target(synthetic.shifts, cfg, **{**kwargs, "seeds": (5, 6)})
    assert other.points[0].agreement_pairs != runs[0].points[0].agreement_pairs


def test_choose_walks_the_plateau_from_the_most_stable_point():
    pts = [_point(0.1, 0.95), _point(0.2, 0.97), _point(0.4, 0.96), _point(0.8, 0.70)]
    assert choose(pts, tolerance=0.02).target == 0.4
    assert choose(pts, tolerance=0.005).target == 0.2
    # The walk stops at the first unstable value even if a looser one agrees again.
    pts = [_point(0.1, 0.99), _point(0.2, 0.90), _point(0.4, 0.985)]
    assert choose(pts, tolerance=0.02).target == 0.1
    # Equal agreement: the better reconstruction wins.
    pts = [_point(0.1, 0.9, recon=0.3), _point(0.2, 0.9, recon=0.2), _point(0.4, 0.5)]
    assert choose(pts, tolerance=0.0).target == 0.2
    # A point where the multiplier returned to zero neither starts nor extends the plateau.
    pts = [_point(0.1, 0.95), _point(0.2, 0.99, binding=False), _point(0.4, 0.94)]
    assert choose(pts, tolerance=0.02).target == 0.1
    pts = [_point(0.1, 0.95), _point(0.2, 0.96), _point(0.4, 0.97, binding=False)]
    assert choose(pts, tolerance=0.05).target == 0.2
    # Nothing binds: the tightest target.
    pts = [_point(0.2, 0.9, binding=False), _point(0.1, 0.8, binding=False)]
    assert choose(pts, tolerance=0.05).target == 0.1


def test_default_grid_spans_quarter_budget_to_sqrt_width():
    for d_sae in (2, 9, 29, 116):
        budgets = [t * d_sae for t in default_grid(d_sae)]
        assert budgets[0] == pytest.approx(0.25)
        assert budgets[-1] >= math.sqrt(d_sae) > budgets[-2]
        ratios = [b / a for a, b in zip(budgets, budgets[1:], strict=False)]
        assert ratios == pytest.approx([2.0] * len(ratios))


def test_resolve_sets_the_target_for_its_width_only(selection):
    resolved = selection.resolve(_cfg())
    assert resolved.sparsity_target == selection.target
    assert (resolved.d_sae, resolved.training_steps, resolved.multiplier_lr_ratio) == (
        N_CONCEPTS,
        1800,
        0.5,
    )
    with pytest.raises(ValueError, match="d_sae=5.*d_sae=6"):
        selection.resolve(dataclasses.replace(_cfg(), d_sae=6))


def test_unexplained_fraction_by_hand():
    # Decoder spans e0 only: the e1 energy of the shifts is left unexplained.
    sae = SSAE(SSAEConfig(d_in=2, d_sae=1))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0]]))
        sae.W_enc.copy_(torch.tensor([[1.0], [0.0]]))
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    sae.fit_normalization(x)
    assert unexplained_fraction(sae, x) == pytest.approx((16 + 4) / (25 + 1 + 4), rel=1e-6)


def test_bad_input_is_named():
    x = torch.randn(50, 4)
    with pytest.raises(ValueError, match="sparsity='constraint'"):
        select_sparsity_target(x, TrainingSSAEConfig(d_in=4, d_sae=2, sparsity="l1"))
    with pytest.raises(ValueError, match="at least 2 distinct seeds"):
        select_sparsity_target(x, TrainingSSAEConfig(d_in=4, d_sae=2), seeds=(0, 0))
    with pytest.raises(ValueError, match="positive"):
        select_sparsity_target(x, TrainingSSAEConfig(d_in=4, d_sae=2), grid=[0.0, 0.1])
    with pytest.raises(ValueError, match="width 4"):
        select_sparsity_target(x, TrainingSSAEConfig(d_in=5, d_sae=2))


# ----------------------------------------------------------------- the config and train_ssae


def test_auto_is_the_default_and_other_strings_are_refused():
    assert TrainingSSAEConfig(d_in=4, d_sae=2).sparsity_target == "auto"
    with pytest.raises(ValueError, match="number > 0 or 'auto'"):
        TrainingSSAEConfig(d_in=4, d_sae=2, sparsity_target="automatic")
    with pytest.raises(ValueError, match="finite"):
        TrainingSSAEConfig(d_in=4, d_sae=2, sparsity_target=float("nan"))
    with pytest.raises(ValueError, match="> 0"):
        TrainingSSAEConfig(d_in=4, d_sae=2, sparsity_target=0.0)
    # An unresolved "auto" is no constraint level.
    with pytest.raises(ValueError, match="not been resolved"):
        TrainingSSAEConfig(d_in=4, d_sae=2).sparsity_target_at(0)
    # The other modes do not read the target: "auto" stays harmless there.
    assert TrainingSSAEConfig(d_in=4, d_sae=2, sparsity="none").sparsity_target == "auto"


def _tiny(**overrides) -> TrainingSSAEConfig:
    return TrainingSSAEConfig(d_in=16, d_sae=4, training_steps=120, batch_size=64, **overrides)


@pytest.fixture(scope="module")
def tiny_data():
    return make_synthetic_shifts(1_000, 4, 2, 16, seed=1).shifts


def test_train_ssae_auto_trains_at_the_selected_target_and_records_it(tiny_data, tmp_path):
    cfg = _tiny()
    expected = select_sparsity_target(tiny_data, cfg)
    sae, trainer = train_ssae(tiny_data, cfg, seed=3, progress=False, return_trainer=True)
    record = sae.cfg.metadata.sparsity_selection
    assert record is not None
    got = SparsitySelection.from_dict(record)
    # The selection runs with its own fixed seeds: independent of the training seed.
    assert got.target == expected.target
    assert [p.seed_agreement for p in got.points] == [p.seed_agreement for p in expected.points]
    # The final fit trained at that target and the saved recipe says so.
    assert {r.sparsity_target for r in trainer.history} == {expected.target}
    details = sae.cfg.metadata.training_architecture_details
    assert details["sparsity_target"] == expected.target
    # The curve survives SAELens's cfg.json round trip.
    sae.save_model(tmp_path / "ssae")
    loaded = SAE.load_from_disk(tmp_path / "ssae")
    assert SparsitySelection.from_dict(loaded.cfg.metadata.sparsity_selection) == got
    # The caller's config is left as it was.
    assert cfg.sparsity_target == "auto"


def test_train_ssae_uses_a_given_selection_and_refuses_one_for_a_fixed_target(tiny_data):
    given = SparsitySelection(0.123, 0.492, [_point(0.123, 0.9)], [0, 1], 0.05, 4, 120)
    sae, trainer = train_ssae(
        tiny_data, _tiny(), seed=0, progress=False, return_trainer=True, selection=given
    )
    assert {r.sparsity_target for r in trainer.history} == {0.123}
    assert sae.cfg.metadata.sparsity_selection["target"] == 0.123
    with pytest.raises(ValueError, match="selection= chooses sparsity_target='auto'"):
        train_ssae(tiny_data, _tiny(sparsity_target=0.1), progress=False, selection=given)
    with pytest.raises(ValueError, match="d_sae=4"):
        train_ssae(
            tiny_data,
            dataclasses.replace(_tiny(), d_sae=3),
            progress=False,
            selection=given,
        )


def test_a_fixed_target_trains_without_a_selection(tiny_data):
    sae = train_ssae(tiny_data, _tiny(sparsity_target=0.2), progress=False)
    assert "sparsity_selection" not in sae.cfg.metadata
    l1 = train_ssae(tiny_data, _tiny(sparsity="l1"), progress=False)  # target "auto", unread
    assert "sparsity_selection" not in l1.cfg.metadata


def test_an_iterable_selects_on_the_normalisation_sample(tiny_data):
    cfg = _tiny()
    head = torch.cat([tiny_data.flip(0)] * 100)  # 100,000 shifts: the normalisation sample

    def batches():
        yield head
        while True:
            yield from tiny_data.split(64)

    sae = train_ssae(batches(), cfg, progress=False)
    expected = select_sparsity_target(head, cfg)
    assert sae.cfg.metadata.sparsity_selection["target"] == expected.target
    got = [p["seed_agreement"] for p in sae.cfg.metadata.sparsity_selection["points"]]
    assert got == [p.seed_agreement for p in expected.points]


def test_the_cache_shares_one_selection_across_seeds_and_keys_auto_apart(
    tiny_data, tmp_path, monkeypatch
):
    import ssae_lens.ssae.selection as selection

    runs = []
    select = selection.select_sparsity_target
    monkeypatch.setattr(
        selection, "select_sparsity_target", lambda *a, **k: runs.append(1) or select(*a, **k)
    )
    cfg = _tiny()
    first = load_or_train_ssae(tiny_data, cfg, seed=0, cache_dir=tmp_path, progress=False)
    second = load_or_train_ssae(tiny_data, cfg, seed=1, cache_dir=tmp_path, progress=False)
    assert len(runs) == 1  # the second seed trains with the cached selection
    selections = sorted(p.name for p in tmp_path.glob("selection-*"))
    assert len(selections) == 1
    assert len(list(tmp_path.glob("ssae-*"))) == 2
    assert (
        first.cfg.metadata.sparsity_selection["target"]
        == second.cfg.metadata.sparsity_selection["target"]
    )
    # A fixed target equal to the chosen one is another config: another entry.
    target = first.cfg.metadata.sparsity_selection["target"]
    load_or_train_ssae(
        tiny_data, _tiny(sparsity_target=target), seed=0, cache_dir=tmp_path, progress=False
    )
    assert len(list(tmp_path.glob("ssae-*"))) == 3
    again = load_or_train_ssae(tiny_data, cfg, seed=0, cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(again.W_dec, first.W_dec)


# ------------------------------------------------------------ the constraint's width factor


@pytest.mark.parametrize(("d_sae", "factor"), [(3, 1.0), (32, 1.0), (64, 2.0), (116, 116 / 32)])
def test_constraint_term_is_width_factor_times_multiplier_times_violation(d_sae, factor):
    x = torch.randn(10, 6) * 3
    sae = TrainingSSAE(TrainingSSAEConfig(d_in=6, d_sae=d_sae, sparsity_target=0.4))
    sae.fit_normalization(x)
    with torch.no_grad():
        sae.lagrange_multiplier.fill_(0.7)
    codes = (x * float(sae.shift_scale)) @ sae.W_enc.detach()
    out = sae.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
    expected = factor * 0.7 * (float(codes.abs().mean()) - 0.4)
    assert out.losses["constraint_loss"].item() == pytest.approx(expected, rel=1e-5)
    # The logged multiplier is lambda itself, before the factor.
    assert float(out.metrics["lagrange_multiplier"]) == pytest.approx(0.7)
