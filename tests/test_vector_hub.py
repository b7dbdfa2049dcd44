"""Steering vectors on the Hub: pushed to the stand-in Hub on 127.0.0.1 (``fake_hub`` in
conftest.py), read back through the Hugging Face cache, online and offline."""

from __future__ import annotations

import json
import re

import huggingface_hub.constants as hf_constants
import pytest
import torch

from ssae_lens import SteeringVector
from ssae_lens.ssae import SSAE, SSAEConfig
from ssae_lens.steering import mean_shift_vector
from ssae_lens.steering.hub import vector_card

REPO = "someone/steering-tiny"
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache for the test (the default cache_dir of hf_hub_download)."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def _ssae_vector() -> SteeringVector:
    gen = torch.Generator().manual_seed(0)
    sae = SSAE(SSAEConfig(d_in=8, d_sae=3))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(3, 8, generator=gen))
        sae.normalize_decoder()
    sae.cfg.metadata.model_name = "tiny-model"
    sae.cfg.metadata.hook_name = HOOK
    return SteeringVector.from_ssae(sae, 1)


def _mean_shift_vector() -> SteeringVector:
    gen = torch.Generator().manual_seed(1)
    shifts = torch.randn(20, 8, generator=gen) + 3.0
    return mean_shift_vector(shifts, "blocks.0.hook_resid_pre", model_name="tiny-model")


def _sections(card: str) -> dict[str, str]:
    """``{folder: text}`` of the card's per-vector sections."""
    parts = re.split(r"^## `([^`]*)`$", card, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _assert_same(loaded: SteeringVector, original: SteeringVector, positions: str = "all"):
    torch.testing.assert_close(loaded.direction, original.direction, rtol=0, atol=0)
    expected = {**original.metadata(), "extra": {**original.extra, "positions": positions}}
    assert loaded.metadata() == expected


def test_vectors_in_two_folders_round_trip_and_the_card_lists_both(fake_hub, hf_cache):
    endpoint, hub = fake_hub
    ssae_vec, shift_vec = _ssae_vector(), _mean_shift_vector()
    ssae_vec.push_to_hub(REPO, path_in_repo="french", endpoint=endpoint, token="hf_test")
    url = shift_vec.push_to_hub(
        REPO, path_in_repo="feminine", positions="generated", endpoint=endpoint, token="hf_test"
    )

    assert url.endswith(f"{REPO}/commit/{hub.commit[REPO]}")
    assert set(hub.repos[REPO]) == {
        "README.md",
        "french/vector.safetensors",
        "french/vector.json",
        "feminine/vector.safetensors",
        "feminine/vector.json",
    }
    assert all(h["authorization"] == "Bearer hf_test" for _, _, h, _ in hub.requests)
    assert "positions" not in shift_vec.extra  # the caller's vector is not modified

    # The second push read the first vector's metadata back from the Hub for the card.
    card = hub.repos[REPO]["README.md"].decode()
    sections = _sections(card)
    assert set(sections) == {"french", "feminine"}
    french, feminine = sections["french"], sections["feminine"]
    assert HOOK in french and "blocks.0.hook_resid_pre" in feminine
    assert "tiny-model" in french and "tiny-model" in feminine
    assert "Sparse Shift Autoencoder" in french and "mean of paired activation shifts" in feminine
    assert "unit-normalised" in french and "not normalised" in feminine
    assert 'positions="all"' in french and 'positions="generated"' in feminine
    raw_norm = shift_vec.provenance["raw_norm"]
    assert f"norm {raw_norm:.4g}" in feminine and f'"raw_norm": {raw_norm}' in feminine
    front = card.split("---")[1]
    assert "library_name: ssae-lens" in front and "- ssae" in front and "- mean_shift" in front

    _assert_same(
        SteeringVector.from_pretrained(REPO, subfolder="french", endpoint=endpoint), ssae_vec
    )
    loaded = SteeringVector.from_pretrained(REPO, subfolder="feminine", endpoint=endpoint)
    _assert_same(loaded, shift_vec, positions="generated")


def test_cached_vectors_load_offline_without_a_request(fake_hub, hf_cache, monkeypatch):
    endpoint, hub = fake_hub
    vector = _ssae_vector()
    vector.push_to_hub(REPO, path_in_repo="french", endpoint=endpoint)
    SteeringVector.from_pretrained(REPO, subfolder="french", endpoint=endpoint)
    n_requests = len(hub.requests)

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    _assert_same(SteeringVector.from_pretrained(REPO, subfolder="french"), vector)
    assert len(hub.requests) == n_requests
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        SteeringVector.from_pretrained(REPO, subfolder="never-downloaded")


def test_repushing_a_folder_replaces_that_vector_only(fake_hub, hf_cache):
    endpoint, hub = fake_hub
    first, other = _ssae_vector(), _mean_shift_vector()
    first.push_to_hub(REPO, path_in_repo="a", endpoint=endpoint)
    other.push_to_hub(REPO, path_in_repo="b", endpoint=endpoint)
    second = (first * -2.0).to(torch.float64)
    second.push_to_hub(REPO, path_in_repo="a", endpoint=endpoint)

    loaded = SteeringVector.from_pretrained(REPO, subfolder="a", endpoint=endpoint)
    torch.testing.assert_close(loaded.direction, -2.0 * first.direction, rtol=0, atol=0)
    assert loaded.direction.dtype == torch.float32
    assert set(_sections(hub.repos[REPO]["README.md"].decode())) == {"a", "b"}
    _assert_same(SteeringVector.from_pretrained(REPO, subfolder="b", endpoint=endpoint), other)


def test_a_vector_at_the_repository_root(fake_hub, hf_cache):
    endpoint, hub = fake_hub
    vector = _mean_shift_vector()
    vector.push_to_hub(REPO, endpoint=endpoint, private=True)
    (create,) = [body for _, path, _, body in hub.requests if path == "/api/repos/create"]
    assert json.loads(create)["visibility"] == "private"
    assert set(hub.repos[REPO]) == {"README.md", "vector.safetensors", "vector.json"}
    assert set(_sections(hub.repos[REPO]["README.md"].decode())) == {"."}
    _assert_same(SteeringVector.from_pretrained(REPO, endpoint=endpoint), vector)


def test_offline_loading_from_a_hand_built_cache(tmp_path, monkeypatch):
    commit = "d" * 40
    repo = tmp_path / f"models--{REPO.replace('/', '--')}"
    vector = _ssae_vector()
    vector.save(repo / "snapshots" / commit / "french")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    by_ref = SteeringVector.from_pretrained(REPO, subfolder="french", cache_dir=tmp_path)
    by_commit = SteeringVector.from_pretrained(
        REPO, subfolder="french", revision=commit, cache_dir=tmp_path
    )
    for loaded in (by_ref, by_commit):
        torch.testing.assert_close(loaded.direction, vector.direction, rtol=0, atol=0)
        assert loaded.metadata() == vector.metadata()


def test_a_local_folder_is_read_directly(tmp_path):
    vector = _mean_shift_vector()
    vector.save(tmp_path / "vectors" / "feminine")
    loaded = SteeringVector.from_pretrained(tmp_path / "vectors", subfolder="feminine")
    torch.testing.assert_close(loaded.direction, vector.direction, rtol=0, atol=0)
    with pytest.raises(ValueError, match="only applies to Hub"):
        SteeringVector.from_pretrained(tmp_path / "vectors", subfolder="feminine", revision="v1")


def test_a_missing_folder_on_the_hub_names_the_problem(fake_hub, hf_cache):
    endpoint, _ = fake_hub
    _ssae_vector().push_to_hub(REPO, path_in_repo="french", endpoint=endpoint)
    with pytest.raises(FileNotFoundError, match="has no file 'german/vector.safetensors'"):
        SteeringVector.from_pretrained(REPO, subfolder="german", endpoint=endpoint)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repo_id": "no-owner"}, "user/name"),
        ({"path_in_repo": "../escape"}, "relative folder"),
        ({"path_in_repo": "/abs"}, "relative folder"),
        ({"positions": "last"}, "one of"),
    ],
)
def test_bad_push_arguments_name_the_fix_before_any_request(fake_hub, kwargs, message):
    endpoint, hub = fake_hub
    args = {"repo_id": REPO, **kwargs}
    with pytest.raises(ValueError, match=message):
        _ssae_vector().push_to_hub(args.pop("repo_id"), endpoint=endpoint, **args)
    assert hub.requests == []


def test_from_pretrained_rejects_what_is_neither_a_folder_nor_a_repo_id(tmp_path):
    with pytest.raises(ValueError, match="neither a local folder nor a Hub repo id"):
        SteeringVector.from_pretrained(tmp_path / "absent" / "deeper" / "path")


def test_card_states_the_scale_convention_of_each_vector():
    unit = _ssae_vector() * 1.0
    unit.default_scale = 12.5
    raw = _mean_shift_vector()
    sections = _sections(vector_card(REPO, {"u": unit.file_metadata(), "r": raw.file_metadata()}))
    assert "unit-normalised direction (norm 1)" in sections["u"]
    assert "`default_scale` = 12.5 is the size used" in sections["u"]
    assert f"raw direction, not normalised (norm {raw.norm:.4g})" in sections["r"]
    assert "`default_scale` = 1." in sections["r"]
