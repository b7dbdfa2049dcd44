"""SAE-TS effect data: the directions, provenance, files, and the Hub (the local stand-in
``fake_hub`` of conftest.py) with the SAE content-hash check on loading."""

from __future__ import annotations

import re

import huggingface_hub.constants as hf_constants
import pytest
import torch
from _distributed_worker import HOOK, tiny_sae

from ssae_lens._core.cache import dictionary_fingerprint
from ssae_lens.sae_ts import (
    EffectData,
    EffectModel,
    effect_directions,
    measure_effects,
    sae_ts_vector,
)

REPO = "someone/sae-ts-tiny"
PROMPTS = ["The cat sat", "The king"]
OPTIONS = dict(prompts=PROMPTS, n_samples=2, max_new_tokens=3, seed=4, batch_size=8)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def sae():
    return tiny_sae()


@pytest.fixture(scope="module")
def data(tiny_model, sae) -> EffectData:
    directions, features = effect_directions(
        sae, n_decoder=6, n_mix=3, n_random=3, first=[5], generator=torch.Generator().manual_seed(1)
    )
    kinds = {"decoder rows": len(features), "mixes": 3, "random": 3}
    return EffectData.measure(
        tiny_model, sae, directions, 2.5, source={"path": "tiny"}, kinds=kinds,
        scale_protocol="one given scale", **OPTIONS,
    )  # fmt: skip


def _other_sae(sae):
    other = tiny_sae()
    with torch.no_grad():
        other.W_enc[3, 4] += 1e-3  # one weight differs
    return other


def _assert_equal(a: EffectData, b: EffectData) -> None:
    for name in ("directions", "scales", "effects"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.dictionary == b.dictionary and a.settings == b.settings


# ------------------------------------------------------------------------------ directions
def test_effect_directions_on_a_basis_dictionary():
    """With the standard basis as decoder, decoder rows are basis vectors, a mix is a
    non-negative vector with 2-4 non-zero entries and a Gaussian direction is dense."""
    sae = tiny_sae()
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(32) * 3.0)
    state = torch.get_rng_state()
    sizes = dict(n_decoder=5, n_mix=20, n_random=4, first=[7, 2])
    gen = torch.Generator().manual_seed(0)
    dirs, features = effect_directions(sae, generator=gen, **sizes)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert dirs.shape == (29, 32)
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(29))
    assert features[:2] == [7, 2] and len(set(features)) == 5
    assert torch.equal(dirs[:5], torch.eye(32)[features])
    for mix in dirs[5:25]:
        assert bool((mix >= 0).all()) and 2 <= int((mix > 0).sum()) <= 4
    assert bool(((dirs[25:] != 0).sum(dim=1) == 32).all())
    again, _ = effect_directions(sae, generator=torch.Generator().manual_seed(0), **sizes)
    assert torch.equal(again, dirs)
    with pytest.raises(ValueError, match=r"Features \[40\] are out of range"):
        effect_directions(sae, n_decoder=2, first=[40], generator=gen)


# ------------------------------------------------------------------------------ the data
def test_measure_records_the_effects_and_their_provenance(tiny_model, sae, data):
    expected = measure_effects(tiny_model, sae, data.directions, 2.5, **OPTIONS)
    assert torch.equal(data.effects, expected)
    assert torch.equal(data.scales, torch.full((12,), 2.5))
    assert data.dictionary["sha256"] == dictionary_fingerprint(sae)
    assert data.dictionary["d_sae"] == 32 and data.dictionary["hook_name"] == HOOK
    s = data.settings
    assert s["prompts"] == PROMPTS and s["seed"] == 4 and s["do_sample"] is True
    assert s["hook_name"] == HOOK and s["readout"] == "text"
    # features averaged over every position of 2 samples per prompt: prompt tokens + 3 new
    prompt_tokens = [tiny_model.to_tokens(p).shape[1] for p in PROMPTS]
    assert data.tokens_per_direction == 2 * sum(n + 3 for n in prompt_tokens)
    generated = EffectData.measure(
        tiny_model, sae, data.directions[:2], 2.5, **OPTIONS, positions="generated"
    )
    assert generated.tokens_per_direction == 2 * 2 * 3  # samples x prompts x new tokens


def test_save_load_round_trip_and_the_sae_check(tmp_path, sae, data):
    path = data.save(tmp_path / "run")
    assert path.name == "effects.safetensors"
    _assert_equal(EffectData.load(tmp_path / "run", sae=sae), data)
    _assert_equal(EffectData.load(path, sae=None), data)  # explicitly unchecked
    with pytest.raises(ValueError, match="measured with another SAE") as info:
        EffectData.load(path, sae=_other_sae(sae))
    message = str(info.value)
    assert data.dictionary["sha256"][:16] in message
    assert dictionary_fingerprint(_other_sae(sae))[:16] in message
    assert "SAE.load_from_disk('tiny')" in message  # how to get the right one
    with pytest.raises(FileNotFoundError, match="ssae-lens effects"):
        EffectData.load(tmp_path / "nothing", sae=sae)


def test_fit_records_the_sae_and_the_data_in_the_model(data):
    effect_model, report = data.fit(weight_decay=1e-2)
    plain, _ = EffectModel.fit(data.directions, data.effects, weight_decay=1e-2)
    assert torch.equal(effect_model.W, plain.W) and torch.equal(effect_model.b, plain.b)
    prov = effect_model.provenance
    assert prov["sae"] == data.dictionary and prov["held_out_r2"] == report.r2
    assert prov["effects"]["tokens_per_direction"] == data.tokens_per_direction
    assert effect_model.hook_name == HOOK
    vector = sae_ts_vector(effect_model, {5: 1.0})
    assert vector.provenance["effect_model"]["sae"]["sha256"] == data.dictionary["sha256"]


# ------------------------------------------------------------------------------ the Hub
def test_effect_data_and_model_on_the_hub_with_a_card(fake_hub, hf_cache, sae, data):
    endpoint, hub = fake_hub
    effect_model, report = data.fit(weight_decay=1e-2)
    data.push_to_hub(REPO, path_in_repo="effects", endpoint=endpoint, token="hf_test")
    effect_model.push_to_hub(REPO, path_in_repo="model", endpoint=endpoint, token="hf_test")
    assert set(hub.repos[REPO]) == {
        "README.md",
        "effects/effects.safetensors",
        "effects/effects.json",
        "model/effect_model.safetensors",
        "model/effect_model.json",
    }
    card = hub.repos[REPO]["README.md"].decode()
    sections = dict(re.findall(r"^## `([^`]*)` \(([^)]*)\)$", card, flags=re.MULTILINE))
    assert sections == {"effects": "effect data", "model": "effect model"}
    sha = dictionary_fingerprint(sae)
    assert card.count(sha) == 2  # the SAE's content hash, for both entries
    for fact in (
        f"`{HOOK}`",
        "one given scale",
        f"**tokens per direction**: {data.tokens_per_direction}",
        "2 rollouts of 3 generated tokens per prompt",
        "averaged over every position",
        "`The cat sat`, `The king`",
        "temperature 1.0, top-k 50, seed 4",
        "6 decoder rows, 3 mixes, 3 random",
        f"held-out R^2 {report.r2:.4g}",
    ):
        assert fact in card, fact

    loaded = EffectData.from_pretrained(REPO, sae=sae, subfolder="effects", endpoint=endpoint)
    _assert_equal(loaded, data)
    model = EffectModel.from_pretrained(REPO, sae=sae, subfolder="model", endpoint=endpoint)
    assert torch.equal(model.W, effect_model.W) and model.provenance == effect_model.provenance
    for cls, folder in ((EffectData, "effects"), (EffectModel, "model")):
        with pytest.raises(ValueError, match="measured with another SAE"):
            cls.from_pretrained(REPO, sae=_other_sae(sae), subfolder=folder, endpoint=endpoint)

    # Offline, from the Hugging Face cache, without a request.
    n_requests = len(hub.requests)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        _assert_equal(EffectData.from_pretrained(REPO, sae=sae, subfolder="effects"), data)
    assert len(hub.requests) == n_requests


def test_an_effect_model_without_its_sae_is_not_pushed(fake_hub, data):
    endpoint, hub = fake_hub
    bare, _ = EffectModel.fit(data.directions, data.effects)
    with pytest.raises(ValueError, match="does not record the SAE"):
        bare.push_to_hub(REPO, endpoint=endpoint)
    assert hub.requests == []


def test_a_local_folder_is_read_directly(tmp_path, sae, data):
    data.save(tmp_path / "repo" / "effects" / "effects.safetensors")
    loaded = EffectData.from_pretrained(tmp_path / "repo", sae=sae, subfolder="effects")
    _assert_equal(loaded, data)
