"""The precision option (ssae_lens._core.precision) and the functions that honour it.

Steering and generation under each precision (KV-cache parity, rounding) are tested in
test_steering.py and test_sae_ts_generation.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer

import ssae_lens.models as models
from ssae_lens._core.precision import (
    PRECISIONS,
    autocast,
    check_precision,
    resolve_precision,
)
from ssae_lens.activations import harvest_activations, harvest_shifts
from ssae_lens.config import ConfigError, ExperimentConfig, load_config
from ssae_lens.generation import generate_tokens
from ssae_lens.sae_ts import calibrate_scales, measure_effects

HOOK = "blocks.1.hook_resid_post"
SOURCES = ["The cat sat on the mat.", "king", "I love this movie.", "red circle"]
TARGETS = ["Le chat", "queen of the northern castle", "I hate this movie.", "blue square hat"]


@pytest.fixture(scope="module")
def bf16_model(tiny_tokenizer):
    """The shared tiny model's weights, cast to bfloat16."""
    return build_tiny_model(tiny_tokenizer, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def sae() -> StandardSAE:
    cfg = StandardSAEConfig(d_in=32, d_sae=16)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        weights = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
        sae.W_enc.copy_(weights)
        sae.W_dec.copy_(weights.T)
        sae.b_enc.fill_(0.1)
    return sae


# ---------------------------------------------------------------------------- the option
def test_unknown_precision_names_the_choices():
    assert [check_precision(p) for p in PRECISIONS] == list(PRECISIONS)
    with pytest.raises(ValueError, match=r"'bf16'.*did you mean 'bfloat16'.*float32"):
        check_precision("bf16")
    with pytest.raises(ValueError, match="Unknown precision 'half'"):
        check_precision("half")


def test_precision_must_fit_the_weights(tiny_model, bf16_model):
    assert resolve_precision(tiny_model) == "float32"
    assert resolve_precision(bf16_model) == "bfloat16"  # read off the weights
    assert resolve_precision(tiny_model, "bf16-autocast") == "bf16-autocast"
    with pytest.raises(ValueError, match=r"needs torch.bfloat16 weights.*precision='bfloat16'"):
        resolve_precision(tiny_model, "bfloat16")
    with pytest.raises(ValueError, match="needs torch.float32 weights"):
        resolve_precision(bf16_model, "float32")
    with pytest.raises(ValueError, match="needs torch.float32 weights"):
        harvest_shifts(bf16_model, (SOURCES, TARGETS), HOOK, precision="bf16-autocast")


def test_other_weight_dtypes_are_refused(tiny_tokenizer):
    half = build_tiny_model(tiny_tokenizer, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"weights are torch.float16.*precision=\.\.\."):
        harvest_activations(half, ["The cat"], HOOK, progress=False)


def test_autocast_runs_matmuls_in_bfloat16_only_when_asked():
    a = torch.randn(4, 4)
    with autocast("bf16-autocast", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    for precision in ("float32", "bfloat16"):
        # a caller's autocast region cannot change a float32 run
        with torch.autocast("cpu", dtype=torch.bfloat16), autocast(precision, "cpu"):
            assert (a @ a).dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_config_and_cli_key(tmp_path):
    assert load_config(None, ExperimentConfig).precision == "float32"
    cfg = load_config(None, ExperimentConfig, ["precision=bf16-autocast"])
    assert cfg.precision == "bf16-autocast"
    with pytest.raises(ConfigError, match=r"precision must be one of.*did you mean 'bfloat16'"):
        load_config(None, ExperimentConfig, ["precision=bfloat"])


# ---------------------------------------------------------------------------- load_model
def test_load_model_casts_for_bfloat16_and_records_autocast(monkeypatch, tiny_tokenizer):
    """The load path: the dtype TransformerLens is asked for, and the precision the loaded
    model then runs in by default (TransformerLens's own loading is stubbed with the tiny
    model, built in the dtype it is asked for)."""
    asked = []

    def from_pretrained(name, *, device, dtype, **kwargs):
        asked.append(dtype)
        return build_tiny_model(tiny_tokenizer, dtype=dtype)

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", from_pretrained)
    bf16 = models.load_model("gpt2", precision="bfloat16")
    auto = models.load_model("gpt2", precision="bf16-autocast")
    plain = models.load_model("gpt2")
    assert asked == [torch.bfloat16, torch.float32, torch.float32]
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert [resolve_precision(m) for m in (bf16, auto, plain)] == list(
        ["bfloat16", "bf16-autocast", "float32"]
    )
    # The recorded precision is the default of every call; an explicit one still wins.
    pairs = (SOURCES, TARGETS)
    default = harvest_shifts(auto, pairs, HOOK, progress=False)
    explicit = harvest_shifts(auto, pairs, HOOK, progress=False, precision="bf16-autocast")
    exact = harvest_shifts(auto, pairs, HOOK, progress=False, precision="float32")
    assert torch.equal(default, explicit) and not torch.equal(default, exact)
    with pytest.raises(ValueError, match="needs torch.float32 weights"):
        models.load_model(bf16, precision="bf16-autocast")


# ---------------------------------------------------------------------------- harvesting
@pytest.mark.parametrize("position", ["last", "mean", "all"])
def test_harvests_are_float32_and_close_to_float32(tiny_model, bf16_model, position):
    texts = ["The cat sat on the mat.", "I love it.", "hey"]
    exact = harvest_activations(tiny_model, texts, HOOK, position, progress=False)
    for model, precision in ((tiny_model, "bf16-autocast"), (bf16_model, "bfloat16")):
        acts = harvest_activations(
            model, texts, HOOK, position, precision=precision, progress=False
        )
        assert acts.dtype == torch.float32
        assert not torch.equal(acts, exact)  # the precision was applied ...
        relative = (acts - exact).norm(dim=-1) / exact.norm(dim=-1)
        assert float(relative.max()) < 0.05  # ... and costs little (bf16 eps is 2**-8)


def test_mean_of_bfloat16_activations_is_summed_in_float32(bf16_model):
    # "all" returns each token's bfloat16 activation exactly (as float32); "mean" is their
    # float32 mean, not a bfloat16 sum rounded at every step.
    texts = ["The cat sat on the mat.", "I love it.", "hey"]
    tokens = harvest_activations(bf16_model, texts, HOOK, "all", progress=False)
    means = harvest_activations(bf16_model, texts, HOOK, "mean", progress=False)
    counts = [len(bf16_model.to_str_tokens(text)) - 1 for text in texts]  # BOS excluded
    expected = torch.stack([rows.mean(0) for rows in tokens.split(counts)])
    torch.testing.assert_close(means, expected, atol=1e-6, rtol=1e-6)


def test_shifts_are_differences_of_float32_activations(bf16_model):
    """In a bfloat16 model both sides are read out exactly (bfloat16 values) and subtracted in
    float32: subtracting in bfloat16 would round the shifts to bfloat16 values."""
    pairs = (SOURCES, TARGETS)
    src, tgt = harvest_shifts(bf16_model, pairs, HOOK, progress=False, return_both=True)
    shifts = harvest_shifts(bf16_model, pairs, HOOK, progress=False)
    assert torch.equal(src.bfloat16().float(), src)  # exact bfloat16 values, as float32
    assert torch.equal(shifts, tgt - src)  # the float32 difference
    assert not torch.equal(shifts.bfloat16().float(), shifts)  # not rounded to bfloat16
    low = harvest_shifts(bf16_model, pairs, HOOK, progress=False, dtype=torch.bfloat16)
    assert torch.equal(low, (tgt - src).bfloat16())  # cast after the subtraction


def test_activation_cache_is_keyed_on_the_precision(tiny_model, tmp_path):
    texts = ["The cat sat on the mat.", "hey, is the meeting still on?"]

    def harvest(precision):
        return harvest_activations(
            tiny_model, texts, HOOK, cache_dir=tmp_path, progress=False, precision=precision
        )

    exact, auto = harvest("float32"), harvest("bf16-autocast")
    assert len(list(tmp_path.iterdir())) == 2  # one folder per precision
    assert not torch.equal(exact, auto)
    assert torch.equal(harvest("float32"), exact) and torch.equal(harvest("bf16-autocast"), auto)
    assert len(list(tmp_path.iterdir())) == 2


# ---------------------------------------------------------------------------- generation, SAE-TS
@pytest.mark.filterwarnings("ignore:The loss never rose")
def test_generation_and_sae_ts_results_are_float32(tiny_model, bf16_model, sae):
    dirs = torch.eye(32)[:2]
    for model, precision in ((tiny_model, "bf16-autocast"), (bf16_model, "bfloat16")):
        _, acts = generate_tokens(model, ["The cat"], 3, capture=HOOK, precision=precision)
        assert acts.dtype == torch.float32
        effects = measure_effects(
            model, sae, dirs, 2.0, prompts=["The cat"], n_samples=1, max_new_tokens=3,
            do_sample=False, precision=precision,
        )  # fmt: skip
        assert effects.dtype == torch.float32 and bool(torch.isfinite(effects).all())
        scales = calibrate_scales(
            model, dirs, HOOK, reference_texts=["The cat sat."], scales=[0.5, 100.0],
            target_loss_increase=1e-3, precision=precision,
        )  # fmt: skip
        assert scales.dtype == torch.float32


def test_effect_cache_is_keyed_on_the_precision(tiny_model, sae, tmp_path):
    def effects(precision):
        return measure_effects(
            tiny_model, sae, torch.eye(32)[:2], 2.0, prompts=["The cat sat"], n_samples=1,
            max_new_tokens=4, do_sample=False, cache_dir=tmp_path, precision=precision,
        )  # fmt: skip

    first = effects("float32")
    assert torch.equal(effects("float32"), first)
    with pytest.raises(ValueError, match=r"settings\.precision differ"):
        effects("bf16-autocast")
