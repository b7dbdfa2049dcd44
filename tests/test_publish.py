"""Hub publishing: the folder round-trips through ``SAE.from_pretrained`` from a local cache,
and the upload speaks the Hub's HTTP protocol to the stand-in server on 127.0.0.1
(``fake_hub`` in conftest.py)."""

from __future__ import annotations

import base64
import json

import huggingface_hub.constants as hf_constants
import pytest
import torch
from sae_lens import SAE

from ssae_lens.publish import publish
from ssae_lens.ssae import SSAE, SSAEConfig

REPO, SAE_ID = "someone/ssae-tiny", "blocks.1.hook_resid_post"


def _ssae() -> SSAE:
    torch.manual_seed(0)
    sae = SSAE(SSAEConfig(d_in=8, d_sae=3))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
        sae.normalize_decoder()
    sae.fit_normalization(torch.randn(100, 8) * 2.0)
    sae.cfg.metadata.model_name = "tiny-model"
    sae.cfg.metadata.hook_name = SAE_ID
    return sae


def test_dry_run_folder_loads_back_through_from_pretrained(tmp_path, monkeypatch):
    sae = _ssae()
    commit = "b" * 40
    repo = tmp_path / f"models--{REPO.replace('/', '--')}"
    sparsity = torch.tensor([0.5, 0.1, 0.2])
    folder = publish(
        sae,
        REPO,
        SAE_ID,
        out_dir=repo / "snapshots" / commit,
        dry_run=True,
        sparsity=sparsity,
        card_info={"dataset": "binary", "metrics": {"seed_agreement_mcc": 0.9731}},
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    loaded, _, loaded_sparsity = SAE.from_pretrained_with_cfg_and_sparsity(REPO, SAE_ID)
    assert type(loaded) is SSAE
    x = torch.randn(5, 8)
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded_sparsity, sparsity)

    card = (folder / "README.md").read_text()
    for fact in ("tiny-model", SAE_ID, "binary", "seed_agreement_mcc", "0.9731"):
        assert fact in card
    assert f'SAE.from_pretrained("{REPO}", "{SAE_ID}")' in card
    assert "import ssae_lens" in card


def test_republishing_replaces_the_dictionary(tmp_path):
    first = _ssae()
    publish(first, REPO, SAE_ID, out_dir=tmp_path, dry_run=True, sparsity=torch.ones(3))
    second = SSAE(SSAEConfig(d_in=8, d_sae=3))
    publish(second, REPO, SAE_ID, out_dir=tmp_path, dry_run=True)
    assert not (tmp_path / SAE_ID / "sparsity.safetensors").exists()
    loaded = SAE.load_from_disk(tmp_path / SAE_ID)
    torch.testing.assert_close(loaded.W_dec, second.W_dec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "blocks.1.hook_resid_post"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repo_id": "no-owner"}, "user/name"),
        ({"sae_id": "../escape"}, "relative folder"),
        ({"sparsity": torch.ones(4)}, r"shape \(3,\)"),
    ],
)
def test_bad_arguments_name_the_fix(tmp_path, kwargs, message):
    args = {"repo_id": REPO, "sae_id": SAE_ID, **kwargs}
    with pytest.raises(ValueError, match=message):
        publish(_ssae(), args.pop("repo_id"), args.pop("sae_id"), out_dir=tmp_path, **args)


def test_upload_sends_every_file_of_the_folder_to_the_hub_api(tmp_path, fake_hub):
    endpoint, hub = fake_hub
    requests = hub.requests
    folder = publish(_ssae(), REPO, SAE_ID, out_dir=tmp_path, token="hf_test", endpoint=endpoint)

    paths = [path for _, path, _, _ in requests]
    # First the repository's files are listed (for the card); the repository does not exist yet.
    assert paths[0].startswith(f"/api/models/{REPO}/tree/main")
    assert paths[1:] == [
        "/api/repos/create",
        "/api/validate-yaml",
        f"/api/models/{REPO}/preupload/main",
        f"/api/models/{REPO}/commit/main",
    ]
    assert json.loads(requests[1][3]) == {
        "name": "ssae-tiny",
        "organization": "someone",
        "type": "model",
    }
    assert all(headers["authorization"] == "Bearer hf_test" for _, _, headers, _ in requests)

    lines = [json.loads(line) for line in requests[-1][3].decode().splitlines() if line]
    assert lines[0]["key"] == "header"
    sent = {
        entry["value"]["path"]: base64.b64decode(entry["value"]["content"])
        for entry in lines
        if entry["key"] == "file"
    }
    local = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert set(sent) == {"README.md", f"{SAE_ID}/cfg.json", f"{SAE_ID}/sae_weights.safetensors"}
    assert sent == local
    assert hub.repos[REPO] == local


def test_dry_run_makes_no_request(tmp_path, fake_hub):
    endpoint, hub = fake_hub
    publish(_ssae(), REPO, SAE_ID, out_dir=tmp_path, dry_run=True, endpoint=endpoint)
    assert hub.requests == []
