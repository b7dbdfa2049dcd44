"""Feature cards on a tiny model whose embedding, unembedding and SAE feature are set by hand,
so the top contexts, the histogram and the logit tokens are known in advance."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model
from sae_lens import StandardSAE, StandardSAEConfig

from ssae_lens.saes.cards import feature_cards

CORPUS = [
    "The cat sat on the mat.",  # " on" once
    "the dog slept by the door",  # " do" twice
    "red blue green",  # neither
    "I love this cat and the dog",  # " do" once
    "",  # skipped
]
FEATURE = 1


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    """Feature 1 reads coordinate 0 of ``hook_embed``: 3 on " on", 1.5 on " do", 0 elsewhere
    (BOS gets 10, which the cards must not count). Its decoder row is e1, and the
    unembedding's coordinate 1 is +5 for " qu", -4 for " k" and 0 for every other token."""
    model = build_tiny_model(tiny_tokenizer, seed=1)
    on, do = (model.to_single_token(t) for t in (" on", " do"))
    up, down = (model.to_single_token(t) for t in (" qu", " k"))
    with torch.no_grad():
        model.embed.W_E[:, 0] = 0.0
        model.embed.W_E[on, 0] = 3.0
        model.embed.W_E[do, 0] = 1.5
        model.embed.W_E[model.tokenizer.bos_token_id, 0] = 10.0
        model.unembed.W_U[1, :] = 0.0
        model.unembed.W_U[1, up] = 5.0
        model.unembed.W_U[1, down] = -4.0
    cfg = StandardSAEConfig(d_in=32, d_sae=3)
    cfg.metadata.hook_name = "hook_embed"
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.zero_()
        sae.W_enc[0, FEATURE] = 1.0
        sae.W_dec[FEATURE, 1] = 1.0
        sae.W_dec[2, 2] = 1.0  # feature 2 reads nothing (W_enc column 0): never fires
    return model, sae, dict(on=on, do=do, up=up, down=down)


def tokens_without_bos(model, text):
    return model.to_tokens(text)[0, 1:].tolist()


def test_top_contexts_are_the_texts_with_the_feature_token(setup):
    model, sae, ids = setup
    (card,) = feature_cards(model, sae, [FEATURE], CORPUS, n_contexts=5, before=2, after=1)
    # Text 0 (3.0 on " on"), then texts 1 and 3 (1.5 on " do"; earlier text first, first
    # occurrence in text 1); text 2 never fires and is not a context.
    assert [(c.text_index, c.activation) for c in card.contexts] == [(0, 3.0), (1, 1.5), (3, 1.5)]
    for c in card.contexts:
        tokens = tokens_without_bos(model, CORPUS[c.text_index])
        expected = ids["on"] if c.text_index == 0 else ids["do"]
        assert tokens[c.position] == expected
        assert tokens.index(expected) == c.position
        assert c.tokens[c.marked] == model.tokenizer.decode([expected])
        window = tokens[max(0, c.position - 2) : c.position + 2]
        assert c.tokens == [model.tokenizer.decode([t]) for t in window]
    assert "[[" + model.tokenizer.decode([ids["on"]]) + "]]" in card.contexts[0].render()
    assert card.max_activation == 3.0  # BOS (10) is excluded


def test_density_and_histogram_count_every_token(setup):
    model, sae, ids = setup
    (card,) = feature_cards(model, sae, [FEATURE], CORPUS, bins=4)
    tokens = [t for text in CORPUS if text for t in tokens_without_bos(model, text)]
    n_on, n_do = tokens.count(ids["on"]), tokens.count(ids["do"])
    assert (n_on, n_do) == (1, 3)
    assert card.n_tokens == len(tokens)
    assert card.density == pytest.approx((n_on + n_do) / len(tokens))
    # Bins of width 0.75 over (0, 3]: 1.5 falls in bin 2, 3.0 in the last bin.
    assert card.bin_edges == pytest.approx([0.0, 0.75, 1.5, 2.25, 3.0])
    assert card.histogram == [0, 0, n_do, n_on]


def test_logit_tokens_of_the_decoder_row(setup):
    model, sae, ids = setup
    (card,) = feature_cards(model, sae, [FEATURE], CORPUS, n_logits=3)
    decode = model.tokenizer.decode
    assert card.top_logits[0] == (decode([ids["up"]]), 5.0)
    assert card.bottom_logits[0] == (decode([ids["down"]]), -4.0)
    assert [v for _, v in card.top_logits[1:] + card.bottom_logits[1:]] == [0.0] * 4


def test_card_text_figure_and_json(setup, tmp_path):
    model, sae, _ = setup
    card, silent = feature_cards(model, sae, [FEATURE, 2], CORPUS)
    text = str(card)
    assert text == card.summary()
    assert text.startswith(f"Feature {FEATURE} at hook_embed")
    assert "[[" in text and "Top logit tokens" in text and "Bottom logit tokens" in text
    assert silent.contexts == [] and silent.histogram == [] and silent.density == 0.0
    assert "never fires" in silent.summary()
    assert json.loads(json.dumps(card.to_dict()))["feature"] == FEATURE
    for c, name in ((card, "card.png"), (silent, "silent.png")):
        assert c.plot(tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cards_reject_bad_input(setup):
    model, sae, _ = setup
    with pytest.raises(IndexError, match="out of range for d_sae=3"):
        feature_cards(model, sae, [3], CORPUS)
    with pytest.raises(TypeError, match="single string"):
        feature_cards(model, sae, [1], "The cat")
    with pytest.raises(ValueError, match="no non-empty text"):
        feature_cards(model, sae, [1], ["", ""])
