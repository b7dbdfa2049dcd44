"""The reference SAELens dictionary: training with SAETrainer, caching and reloading."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE

import ssae_lens.saes.reference as dictionary
from ssae_lens.activations import harvest_activations
from ssae_lens.data.builtin import SENTENCE_ATTRIBUTES, language_pairs, sentence_pairs
from ssae_lens.saes.reference import CORPUS_PROMPTS, reference_corpus, train_reference_sae

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    "The cat sat on the mat while the dog slept by the door.",
    "She walked to the market and bought fresh bread and cheese.",
    "He was writing a letter when the phone rang.",
    "I love this wonderful movie, it is brilliant and moving.",
    "Could you kindly let me know whether the meeting is confirmed?",
    "le roi, la reine, le chat, la maison, le chien, la mer",
]


def _fvu(sae: SAE, acts: torch.Tensor) -> float:
    with torch.no_grad():
        recon = sae.decode(sae.encode(acts))
    residual = (acts - recon).pow(2).sum()
    return float(residual / (acts - acts.mean(0)).pow(2).sum())


def test_train_cache_reload(tiny_model, tmp_path, monkeypatch):
    options = dict(d_sae=64, k=4, n_tokens=4096, batch_size=64, lr=3e-3, texts=TEXTS, seed=1)
    sae = train_reference_sae(tiny_model, HOOK, cache_dir=tmp_path, **options)
    assert isinstance(sae, SAE)
    assert sae.cfg.metadata.hook_name == HOOK
    assert sae.W_dec.shape == (64, tiny_model.cfg.d_model)

    acts = harvest_activations(tiny_model, TEXTS, HOOK, position="all", include_bos=False)
    features = sae.encode(acts)
    assert int((features > 0).sum(-1).max()) <= 4  # TopK keeps at most k features
    # It reads raw activations (the norm scaling is folded in) and beats the mean predictor.
    assert _fvu(sae, acts) < 0.5

    folders = list((tmp_path / "saes").iterdir())
    assert len(folders) == 1 and (folders[0] / "cfg.json").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached SAE must not be retrained")

    monkeypatch.setattr(dictionary, "train_sae", no_training)
    again = train_reference_sae(tiny_model, HOOK, cache_dir=tmp_path, **options)
    for name, tensor in sae.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor)

    # Other settings are another SAE: a new cache entry, so training runs (and here fails).
    with pytest.raises(AssertionError, match="must not be retrained"):
        train_reference_sae(tiny_model, HOOK, cache_dir=tmp_path, **{**options, "seed": 2})


def test_damaged_cache_is_retrained_and_hooks_are_refused(tiny_model, tmp_path, monkeypatch):
    from ssae_lens._core.cache import CacheWarning
    from ssae_lens.steering import SteeringVector, steer

    options = dict(d_sae=16, k=2, n_tokens=256, batch_size=64, texts=TEXTS, cache_dir=tmp_path)
    trained = []
    original = dictionary.train_sae
    monkeypatch.setattr(
        dictionary, "train_sae", lambda *a, **k: trained.append(1) or original(*a, **k)
    )
    first = {
        k: v.clone()
        for k, v in train_reference_sae(tiny_model, HOOK, **options).state_dict().items()
    }
    (folder,) = (tmp_path / "saes").iterdir()
    weights = folder / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # zero two floats of the payload: loadable, but wrong
    weights.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="sae_weights.safetensors.*sha256"):
        again = train_reference_sae(tiny_model, HOOK, **options)
    assert len(trained) == 2
    for name, tensor in first.items():
        torch.testing.assert_close(again.state_dict()[name], tensor)

    vector = SteeringVector(torch.ones(tiny_model.cfg.d_model), "blocks.0.hook_resid_post")
    with (
        steer(tiny_model, vector, scale=5.0),
        pytest.raises(RuntimeError, match="hooks are active"),
    ):
        train_reference_sae(tiny_model, HOOK, **options)


def test_standard_architecture_trains(tiny_model, tmp_path):
    sae = train_reference_sae(
        tiny_model,
        HOOK,
        architecture="standard",
        l1_coefficient=1e-3,
        d_sae=64,
        n_tokens=4096,
        batch_size=64,
        lr=3e-3,
        texts=TEXTS,
        cache_dir=tmp_path,
    )
    assert sae.cfg.architecture() == "standard"
    acts = harvest_activations(tiny_model, TEXTS, HOOK, position="all", include_bos=False)
    assert _fvu(sae, acts) < 0.5


def test_reference_corpus_parts(tiny_model):
    texts = reference_corpus(
        tiny_model, n_generated=3, generated_tokens=5, n_sentences=4, seed=0, batch_size=2
    )
    pairs = sentence_pairs(n=4, seed=0, attributes=list(SENTENCE_ATTRIBUTES))
    words = language_pairs()
    n_words = len(words)
    assert len(texts) == 3 + 2 * len(pairs) + 2 * n_words
    for i, text in enumerate(texts[:3]):
        assert text.startswith(CORPUS_PROMPTS[i]) and len(text) > len(CORPUS_PROMPTS[i])
    assert texts[3 : 3 + len(pairs)] == list(pairs.sources)
    assert texts[-n_words:] == list(words.targets)
    again = reference_corpus(
        tiny_model, n_generated=3, generated_tokens=5, n_sentences=4, seed=0, batch_size=2
    )
    assert again == texts  # seeded


def test_bad_settings_name_the_fix(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="'topk' or 'standard'"):
        train_reference_sae(tiny_model, HOOK, architecture="jumprelu", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="Closest valid names"):
        train_reference_sae(tiny_model, "blocks.1.hook_resid_pst", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        train_reference_sae(tiny_model, HOOK, n_tokens=8, batch_size=16, cache_dir=tmp_path)
