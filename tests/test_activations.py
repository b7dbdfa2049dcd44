"""Tests for paired activation harvesting (ssae_lens.activations)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch
from conftest import build_tiny_model

from ssae_lens._core.cache import CacheWarning
from ssae_lens.activations import (
    PairedActivationStore,
    _shared_shard_size,
    harvest_activations,
    harvest_shifts,
    model_fingerprint,
)
from ssae_lens.data.pairs import ConceptPairs
from ssae_lens.steering import SteeringVector, steer

SOURCES = [
    "The cat sat on the mat.",
    "king",
    "He was writing a letter when the phone rang.",
    "I love this movie.",
    "red circle",
    "king",  # repeated text: harvested once, used twice
    "Could you kindly let me know?",
]
TARGETS = [
    "Le chat",
    "queen of the northern castle",
    "He writes a letter.",
    "I hate this terrible and boring movie.",
    "blue square hat",
    "la reine",
    "hey what",
]
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.attn.hook_q"]


def references(model, text: str, hooks: list[str], position: str) -> dict[str, torch.Tensor]:
    """Hand computation: one unpadded run_with_cache of the full model for a single prompt."""
    _, cache = model.run_with_cache(text)
    out = {}
    for hook in hooks:
        act = cache[hook][0].reshape(cache[hook].shape[1], -1)  # [pos, d] (heads flattened)
        if position == "last":
            out[hook] = act[-1]
        elif position == "mean":
            out[hook] = act[1:].mean(0)  # BOS excluded
        else:
            out[hook] = act[1:]
    return out


def reference(model, text: str, hook: str, position: str) -> torch.Tensor:
    return references(model, text, [hook], position)[hook]


class ForwardCounter:
    """Counts a model's forward passes and can fail on a given call.

    It wraps ``model.forward`` rather than adding a hook: a cached harvest refuses to run
    while hooks are active on the model.
    """

    def __init__(self, fail_on: int | None = None):
        self.calls = 0
        self.fail_on = fail_on
        self.widths: list[int] = []  # padded token width of each forward pass

    @contextmanager
    def counting(self, model):
        original = model.forward

        def forward(*args, **kwargs):
            self.calls += 1
            self.widths.append(args[0].shape[1])
            if self.calls == self.fail_on:
                raise KeyboardInterrupt("simulated kill")
            return original(*args, **kwargs)

        model.forward = forward
        try:
            yield self
        finally:
            del model.forward


def chunk_files(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("chunk_*"))


def run_counted(model, counter, **kwargs):
    with counter.counting(model):
        return harvest_shifts(model, (SOURCES, TARGETS), progress=False, **kwargs)


@pytest.fixture(params=["absolute", "rotary", "bridge"])
def model(request, tiny_model, tiny_bridge, tiny_tokenizer):
    """The shared tiny model, a Gemma-like variant (RMSNorm, rotary, grouped-query), and a tiny
    Gemma 3 through TransformerBridge."""
    if request.param == "absolute":
        return tiny_model
    if request.param == "bridge":
        return tiny_bridge
    return build_tiny_model(
        tiny_tokenizer,
        seed=1,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        n_key_value_heads=2,
        act_fn="gelu_pytorch_tanh",
    )


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("position", ["last", "mean"])
def test_shifts_match_one_run_with_cache_per_prompt(model, monkeypatch, padding_side, position):
    monkeypatch.setattr(model.tokenizer, "padding_side", padding_side)
    lengths = {model.to_tokens(t).shape[1] for t in SOURCES + TARGETS}
    assert len(lengths) > 5  # batches really are padded

    shifts = harvest_shifts(
        model, (SOURCES, TARGETS), HOOKS, position=position, batch_size=3, progress=False
    )

    source_refs = [references(model, text, HOOKS, position) for text in SOURCES]
    target_refs = [references(model, text, HOOKS, position) for text in TARGETS]
    for hook in HOOKS:
        expected = torch.stack(
            [t[hook] - s[hook] for s, t in zip(source_refs, target_refs, strict=True)]
        )
        assert shifts[hook].shape == expected.shape
        torch.testing.assert_close(shifts[hook], expected, atol=1e-5, rtol=0)


def test_all_position_gives_per_token_shifts(any_model):
    sources = ["the king sat", "the king", "man"]
    targets = ["the queen sat", "the queen", "king"]
    lengths = [
        (any_model.to_tokens(s).shape[1], any_model.to_tokens(t).shape[1])
        for s, t in zip(sources, targets, strict=True)
    ]
    assert all(a == b for a, b in lengths)

    store = PairedActivationStore(
        any_model, (sources, targets), "blocks.1.hook_resid_mid", "all", progress=False
    )
    shifts = store.harvest()["blocks.1.hook_resid_mid"]

    hook = "blocks.1.hook_resid_mid"
    expected = torch.cat(
        [
            reference(any_model, t, hook, "all") - reference(any_model, s, hook, "all")
            for s, t in zip(sources, targets, strict=True)
        ]
    )
    torch.testing.assert_close(shifts, expected, atol=1e-5, rtol=0)
    assert store.rows_per_pair == [n - 1 for n, _ in lengths]


def test_include_bos_counts_bos_in_mean_and_in_the_cache_key(tiny_model, tmp_path):
    hook = "blocks.0.hook_resid_post"
    sources, targets = ["the king sat", "queen"], ["a red box", "the queen sat"]
    texts = sources + targets
    # A cache of the same texts written without BOS in the mean cannot serve one with it.
    harvest_activations(tiny_model, texts, hook, "mean", cache_dir=tmp_path, progress=False)
    acts = harvest_activations(
        tiny_model, texts, hook, "mean", include_bos=True, cache_dir=tmp_path, progress=False
    )
    shifts = harvest_shifts(
        tiny_model, (sources, targets), hook, "mean", include_bos=True, progress=False
    )

    def mean(text):
        return tiny_model.run_with_cache(text)[1][hook][0].mean(0)  # BOS included

    for row, text in zip(acts, texts, strict=True):
        torch.testing.assert_close(row, mean(text), atol=1e-5, rtol=0)
    for row, source, target in zip(shifts, sources, targets, strict=True):
        torch.testing.assert_close(row, mean(target) - mean(source), atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", ["last", "mean"])
def test_without_bos(any_model, position):
    texts = ["the king sat", "queen", "a red box"]
    acts = harvest_activations(
        any_model, texts, "blocks.1.hook_resid_post", position, prepend_bos=False, progress=False
    )
    for row, text in zip(acts, texts, strict=True):
        _, cache = any_model.run_with_cache(text, prepend_bos=False)
        act = cache["blocks.1.hook_resid_post"][0]
        expected = act[-1] if position == "last" else act.mean(0)  # no BOS: every token counts
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=0)


def test_single_texts_all_position_with_cache(any_model, tmp_path):
    texts = ["the king sat", "queen", "a red box", "queen"]
    hook = "blocks.0.attn.hook_v"
    counter, reused = ForwardCounter(), ForwardCounter()
    with counter.counting(any_model):
        first = harvest_activations(any_model, texts, hook, "all", cache_dir=tmp_path)
    with reused.counting(any_model):
        second = harvest_activations(any_model, texts, hook, "all", cache_dir=tmp_path)
    expected = torch.cat([reference(any_model, text, hook, "all") for text in texts])
    assert counter.calls == 1 and reused.calls == 0
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)


def test_return_both_and_single_texts_agree(any_model):
    hook = "blocks.2.hook_resid_post"
    source, target = harvest_shifts(
        any_model, (SOURCES, TARGETS), hook, return_both=True, progress=False
    )
    shifts = harvest_shifts(any_model, (SOURCES, TARGETS), hook, progress=False)
    singles = harvest_activations(any_model, SOURCES, hook, batch_size=2, progress=False)
    one_by_one = harvest_activations(any_model, SOURCES, hook, batch_size=1, progress=False)

    torch.testing.assert_close(source, singles, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_by_one, singles, atol=1e-5, rtol=0)
    torch.testing.assert_close(target - source, shifts, atol=1e-6, rtol=0)
    expected_last = torch.stack([reference(any_model, t, hook, "last") for t in TARGETS])
    torch.testing.assert_close(target, expected_last, atol=1e-5, rtol=0)


def test_concept_pairs_input(tiny_model):
    pairs = ConceptPairs(sources=SOURCES[:4], targets=TARGETS[:4])
    from_object = harvest_shifts(tiny_model, pairs, "blocks.0.hook_resid_post", progress=False)
    from_tuple = harvest_shifts(
        tiny_model, (SOURCES[:4], TARGETS[:4]), "blocks.0.hook_resid_post", progress=False
    )
    torch.testing.assert_close(from_object, from_tuple, atol=0, rtol=0)


def test_stop_at_layer_skips_deeper_layers(any_model):
    fired: list[str] = []
    watched = [f"blocks.{i}.hook_resid_post" for i in range(3)] + ["ln_final.hook_normalized"]
    store = PairedActivationStore(
        any_model,
        (SOURCES, TARGETS),
        ["blocks.1.attn.hook_z", "blocks.0.hook_resid_mid"],
        batch_size=64,
        progress=False,
    )
    assert store.stop_at_layer == 2
    record = [(name, lambda act, hook, name=name: fired.append(name)) for name in watched]
    with any_model.hooks(fwd_hooks=record):
        store.harvest()
    assert fired == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]

    full = PairedActivationStore(
        any_model, (SOURCES, TARGETS), "ln_final.hook_normalized", progress=False
    )
    assert full.stop_at_layer is None
    embed = PairedActivationStore(any_model, (SOURCES, TARGETS), "hook_embed", progress=False)
    assert embed.stop_at_layer == 0
    expected = [
        reference(any_model, t, "hook_embed", "last")
        - reference(any_model, s, "hook_embed", "last")
        for s, t in zip(SOURCES, TARGETS, strict=True)
    ]
    torch.testing.assert_close(embed.harvest()["hook_embed"], torch.stack(expected))


def test_dtype_and_device_options(tiny_model):
    hook = "blocks.1.hook_resid_post"
    exact = harvest_shifts(tiny_model, (SOURCES, TARGETS), hook, progress=False)
    half = harvest_shifts(
        tiny_model, (SOURCES, TARGETS), hook, dtype=torch.bfloat16, device="cpu", progress=False
    )
    assert exact.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert half.device.type == "cpu"
    assert harvest_shifts(tiny_model, (SOURCES, TARGETS), hook, device="meta").device.type == "meta"
    torch.testing.assert_close(half.float(), exact, atol=0.05, rtol=0.01)


# --- bad input -------------------------------------------------------------------------------


def test_unknown_hook_lists_close_names(tiny_model):
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_pst.*blocks\.1\.hook_resid_post"):
        harvest_shifts(tiny_model, (SOURCES, TARGETS), "blocks.1.hook_resid_pst")


def test_all_position_rejects_unequal_lengths_naming_the_pair(tiny_model):
    sources = ["the king", "the king sat"]
    targets = ["the queen", "the queen of the northern castle"]
    with pytest.raises(ValueError, match=r"1 pair.*pair 1 .*'the king sat': 6 tokens.*'last'"):
        harvest_shifts(tiny_model, (sources, targets), "blocks.0.hook_resid_post", "all")


def test_too_long_prompt_names_pair_and_lengths(tiny_model):
    long = " ".join(["hundred thousand"] * 40)
    with pytest.raises(ValueError, match=r"pair 1 \(target\) is \d+ tokens long.*context of 48"):
        harvest_shifts(tiny_model, (["king", "man"], ["queen", long]), "blocks.0.hook_resid_post")


@pytest.mark.parametrize(
    "pairs, message",
    [
        (([], []), "No pairs to harvest: the dataset is empty"),
        (
            ("king", "queen"),
            r"^sources and targets must be lists of strings, not single strings\.$",
        ),
        ((["king", ""], ["queen", "woman"]), r"pair 1 \(source\) is empty"),
        ((["king"], ["queen", "woman"]), "1 sources but 2 targets"),
        (["king", "queen"], "ConceptPairs"),
    ],
)
def test_bad_datasets(tiny_model, pairs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        harvest_shifts(tiny_model, pairs, "blocks.0.hook_resid_post")


@pytest.mark.parametrize(
    "texts, options, message",
    [
        ("king", {}, r"not a single string; wrap it: \[text\]"),
        ([], {}, r"^No texts to harvest: the dataset is empty\.$"),
        (["king"], {"padding_side": "middle"}, "'left', 'right' or None, got 'middle'"),
        (["king"], {"shard_size": 0}, r"must be >= 1 \(got 32, 0\)"),
    ],
)
def test_bad_texts_and_options_name_the_fix(tiny_model, texts, options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        harvest_activations(tiny_model, texts, "blocks.0.hook_resid_post", **options)


def test_texts_run_longest_first_in_batches_of_similar_length(tiny_model):
    texts = ["king", "He was writing a letter when the phone rang.", "red", "I love this movie."]
    counter = ForwardCounter()
    with counter.counting(tiny_model):
        harvest_activations(
            tiny_model, texts, "blocks.0.hook_resid_post", batch_size=2, progress=False
        )
    lengths = sorted((tiny_model.to_tokens(text).shape[1] for text in texts), reverse=True)
    assert lengths[1] > lengths[2]  # two long and two short texts
    assert counter.widths == [lengths[0], lengths[2]]  # the long pair first, then the short


def test_shifts_without_bos_match_the_hand_computation(tiny_model):
    hook = "blocks.1.hook_resid_post"
    shifts = harvest_shifts(
        tiny_model, (SOURCES[:3], TARGETS[:3]), hook, prepend_bos=False, progress=False
    )
    for row, source, target in zip(shifts, SOURCES[:3], TARGETS[:3], strict=True):
        last = [
            tiny_model.run_with_cache(t, prepend_bos=False)[1][hook][0, -1]
            for t in (source, target)
        ]
        torch.testing.assert_close(row, last[1] - last[0], atol=1e-5, rtol=0)


def test_cache_key_covers_prepend_bos_even_for_the_same_token_ids(tiny_model, tmp_path):
    # "<bos>queen" without BOS and "queen" with BOS have the same token ids, but only the
    # second drops its (prepended) BOS from the mean: a cache of one cannot serve the other.
    texts = ["the king sat", "queen", "a red box"]
    bos = tiny_model.tokenizer.bos_token
    literal = [bos + text for text in texts]
    options = dict(hook_name="blocks.1.hook_resid_post", position="mean", progress=False)
    assert [tiny_model.to_tokens(t, prepend_bos=False).tolist() for t in literal] == [
        tiny_model.to_tokens(t, prepend_bos=True).tolist() for t in texts
    ]
    harvest_activations(tiny_model, literal, prepend_bos=False, cache_dir=tmp_path, **options)
    counter = ForwardCounter()
    with counter.counting(tiny_model):
        cached = harvest_activations(
            tiny_model, texts, prepend_bos=True, cache_dir=tmp_path, **options
        )
    assert counter.calls > 0
    for row, text in zip(cached, texts, strict=True):
        act = tiny_model.run_with_cache(text)[1]["blocks.1.hook_resid_post"][0]
        torch.testing.assert_close(row, act[1:].mean(0), atol=1e-5, rtol=0)  # BOS excluded


def test_an_object_with_sources_but_no_targets_is_refused(tiny_model):
    class OnlySources:
        sources = ["king", "queen"]

    with pytest.raises(TypeError, match="ConceptPairs"):
        harvest_shifts(tiny_model, OnlySources(), "blocks.0.hook_resid_post")


def test_bad_position_and_hook_shape(tiny_model):
    with pytest.raises(ValueError, match="Unknown position 'first'"):
        harvest_shifts(tiny_model, (SOURCES, TARGETS), "blocks.0.hook_resid_post", "first")
    with pytest.raises(ValueError, match="hook_pattern"):
        harvest_shifts(tiny_model, (SOURCES, TARGETS), "blocks.0.attn.hook_pattern", progress=False)


# --- disk cache ------------------------------------------------------------------------------


def test_cache_is_written_and_reused(any_model, tmp_path):
    options = dict(hook_name="blocks.1.hook_resid_post", batch_size=2, cache_dir=tmp_path)
    first_count, second_count = ForwardCounter(), ForwardCounter()
    first = run_counted(any_model, first_count, **options)
    second = run_counted(any_model, second_count, **options)

    assert first_count.calls == 7  # 13 distinct texts in batches of 2
    assert second_count.calls == 0
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    (folder,) = tmp_path.iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["layout"]["n_items"] == 13  # distinct texts, in one shard
    assert manifest["settings"]["hook_names"] == ["blocks.1.hook_resid_post"]
    assert chunk_files(folder) == ["chunk_0000000000_0000000013.safetensors"]


def test_cache_from_another_model_or_hook_is_not_reused(tiny_model, tiny_tokenizer, tmp_path):
    hook = "blocks.1.hook_resid_post"
    run_counted(tiny_model, ForwardCounter(), hook_name=hook, cache_dir=tmp_path)

    other_model = build_tiny_model(tiny_tokenizer, seed=5)  # same config, other weights
    assert model_fingerprint(other_model) != model_fingerprint(tiny_model)
    counter = ForwardCounter()
    cached = run_counted(other_model, counter, hook_name=hook, cache_dir=tmp_path)
    fresh = harvest_shifts(other_model, (SOURCES, TARGETS), hook, progress=False)
    assert counter.calls > 0
    torch.testing.assert_close(cached, fresh, atol=0, rtol=0)

    counter = ForwardCounter()
    other_hook = run_counted(
        tiny_model, counter, hook_name="blocks.2.hook_resid_post", cache_dir=tmp_path
    )
    assert counter.calls > 0
    assert not torch.allclose(other_hook, harvest_shifts(tiny_model, (SOURCES, TARGETS), hook))

    counter = ForwardCounter()
    run_counted(tiny_model, counter, hook_name=hook, position="mean", cache_dir=tmp_path)
    assert counter.calls > 0
    assert len(list(tmp_path.iterdir())) == 4


def test_killed_run_resumes_at_last_completed_shard(tiny_model, tmp_path):
    options = dict(
        hook_name="blocks.1.hook_resid_post", batch_size=2, shard_size=4, cache_dir=tmp_path
    )
    with pytest.raises(KeyboardInterrupt):
        run_counted(tiny_model, ForwardCounter(fail_on=6), **options)  # dies in shard 2
    (folder,) = tmp_path.iterdir()
    assert chunk_files(folder) == [  # shards 0 and 1 of 4 texts each
        "chunk_0000000000_0000000004.safetensors",
        "chunk_0000000004_0000000008.safetensors",
    ]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left

    counter = ForwardCounter()
    resumed = run_counted(tiny_model, counter, **options)
    assert counter.calls == 3  # shard 2 (2 batches) and shard 3 (1 text)
    fresh = harvest_shifts(tiny_model, (SOURCES, TARGETS), options["hook_name"], progress=False)
    torch.testing.assert_close(resumed, fresh, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "shard_size, batch_size, n_texts, expected",
    [(4096, 8, 100, 16), (10, 8, 1000, 10), (4096, 3, 1, 3)],
)
def test_shards_under_torchrun_give_each_rank_about_four(
    monkeypatch, shard_size, batch_size, n_texts, expected
):
    # Two ranks: ceil(n_texts / (batch_size * 2 ranks * 4 shards)) batches per shard, at least
    # one, at most shard_size texts (100 texts: 2 batches of 8; 1000: 16 batches, capped at 10).
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert _shared_shard_size(shard_size, batch_size, n_texts) == expected


def test_model_fingerprint_tracks_weights(tiny_model, tiny_tokenizer):
    same = build_tiny_model(tiny_tokenizer, seed=0)
    assert model_fingerprint(same) == model_fingerprint(tiny_model)
    with torch.no_grad():
        same.blocks[1].mlp.W_out[0, 0] += 1.0
    assert model_fingerprint(same) != model_fingerprint(tiny_model)


# --- caches that cannot lie (issue 14, item 1) --------------------------------------------------
CACHED = dict(hook_name="blocks.1.hook_resid_post", batch_size=4, shard_size=5)


def cached_shifts(model, tmp_path, counter=None):
    return run_counted(model, counter or ForwardCounter(), cache_dir=tmp_path, **CACHED)


def fresh_shifts(model):
    return harvest_shifts(model, (SOURCES, TARGETS), CACHED["hook_name"], progress=False)


def test_cache_is_refused_under_steering(any_model, tmp_path):
    cached_shifts(any_model, tmp_path)
    vector = SteeringVector(torch.ones(32), "blocks.0.hook_resid_post")
    with steer(any_model, vector, scale=50.0):
        with pytest.raises(RuntimeError, match=r"hooks are active.*cache_dir=None"):
            cached_shifts(any_model, tmp_path)
        steered = fresh_shifts(any_model)  # without a cache it runs, under the steering
    assert not torch.allclose(steered, fresh_shifts(any_model))  # what a cache hit would hide
    with (
        any_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: None)]),
        pytest.raises(RuntimeError, match=rf"{any_model.hook_dict['hook_embed'].name} \(1\)"),
    ):
        cached_shifts(any_model, tmp_path)


def test_weight_edit_after_harvest_is_not_served_from_cache(tiny_tokenizer, tmp_path):
    model = build_tiny_model(tiny_tokenizer, seed=3)
    before = cached_shifts(model, tmp_path)
    with torch.no_grad():
        model.blocks[0].mlp.W_in[:, 3] *= 5  # one column of one weight, in place
    counter = ForwardCounter()
    after = cached_shifts(model, tmp_path, counter)
    assert counter.calls > 0
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh_shifts(model), atol=1e-5, rtol=0)
    assert len(list(tmp_path.iterdir())) == 2  # one cache per set of weights


def _zero_payload(path):
    """Overwrite the tensor bytes of a safetensors file with zeros, keeping its header."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = bytes(len(data) - start)
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_zero_payload, _truncate])
def test_damaged_shard_is_recomputed_with_a_warning(tiny_model, tmp_path, damage):
    first = cached_shifts(tiny_model, tmp_path)
    (folder,) = tmp_path.iterdir()
    shard = folder / chunk_files(folder)[1]
    damage(shard)
    counter = ForwardCounter()
    with pytest.warns(CacheWarning, match=shard.name):
        again = cached_shifts(tiny_model, tmp_path, counter)
    assert counter.calls == 2  # only the damaged shard (5 texts in batches of 4) ran again
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    torch.testing.assert_close(again, fresh_shifts(tiny_model), atol=1e-5, rtol=0)
    counter = ForwardCounter()
    cached_shifts(tiny_model, tmp_path, counter)  # rewritten: read without warnings
    assert counter.calls == 0


def test_truncated_manifest_is_rewritten_and_shards_still_verify(tiny_model, tmp_path):
    first = cached_shifts(tiny_model, tmp_path)
    (folder,) = tmp_path.iterdir()
    _truncate(folder / "manifest.json")
    counter = ForwardCounter()
    with pytest.warns(CacheWarning, match="manifest.json"):
        again = cached_shifts(tiny_model, tmp_path, counter)
    assert counter.calls == 0  # the shards carry their own checks
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    assert json.loads((folder / "manifest.json").read_text())["layout"]["chunk_size"] == 5


def test_model_fingerprint_covers_every_weight_value(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, seed=4)
    base = model_fingerprint(model)
    assert model_fingerprint(build_tiny_model(tiny_tokenizer, seed=4)) == base  # values only
    w_in = model.blocks[0].mlp.W_in
    saved = w_in.detach().clone()
    with torch.no_grad():
        w_in[:, 3] *= 5
    assert model_fingerprint(model) != base
    with torch.no_grad():
        w_in.copy_(saved)
    assert model_fingerprint(model) == base  # a function of the values, not of the history
    with torch.no_grad():
        model.blocks[2].attn.W_O[1, 2, 3] += 1e-6  # one element no sample would see
    assert model_fingerprint(model) != base
    assert model_fingerprint(build_tiny_model(tiny_tokenizer, seed=4).double()) != base


# --- real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_language_pairs_on_gemma(gemma, tmp_path):
    from ssae_lens.data import load_pairs

    pairs = load_pairs("language")
    hook = "blocks.6.hook_resid_post"
    counter = ForwardCounter()
    with counter.counting(gemma):
        shifts = harvest_shifts(gemma, pairs, hook, cache_dir=tmp_path, progress=False)
    assert shifts.shape == (len(pairs), 640)
    assert torch.isfinite(shifts).all()
    assert (shifts.norm(dim=-1) > 0).all()

    reused_counter = ForwardCounter()
    with reused_counter.counting(gemma):
        again = harvest_shifts(gemma, pairs, hook, cache_dir=tmp_path, progress=False)
    assert counter.calls > 0 and reused_counter.calls == 0
    torch.testing.assert_close(again, shifts, atol=0, rtol=0)

    i = 3
    _, src = gemma.run_with_cache(pairs.sources[i], names_filter=hook, stop_at_layer=7)
    _, tgt = gemma.run_with_cache(pairs.targets[i], names_filter=hook, stop_at_layer=7)
    expected = tgt[hook][0, -1] - src[hook][0, -1]
    torch.testing.assert_close(shifts[i], expected, atol=1e-3 * expected.norm().item(), rtol=0)
