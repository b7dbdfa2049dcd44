"""GGUF control-vector export, read back with ``gguf.GGUFReader``, and checked against
llama.cpp's loading rule (re-stated here from its source) on a tiny model."""

from __future__ import annotations

import json

import gguf  # in the dev and models extras: make install / pip install 'ssae-lens[models]'
import pytest
import torch

from ssae_lens import SteeringVector
from ssae_lens.steering import Steering, steer
from ssae_lens.steering.gguf import control_vector_layer, write_control_vector


def _vector(hook: str, seed: int, d: int = 32, **kwargs) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(d, generator=gen), hook, **kwargs)


def _read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: (f.types[0], f.contents()) for name, f in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def test_file_holds_scaled_f32_directions_and_llama_cpp_metadata(tmp_path):
    post = _vector("blocks.2.hook_resid_post", 0, model_name="tiny")
    pre = _vector("blocks.2.hook_resid_pre", 1, model_name="tiny")
    path = write_control_vector([post, pre], tmp_path / "cv.gguf", scale=[3.0, -0.5])

    fields, tensors = _read(path)
    assert fields["general.architecture"] == (gguf.GGUFValueType.STRING, "controlvector")
    assert fields["controlvector.model_hint"] == (gguf.GGUFValueType.STRING, "tiny")
    assert fields["controlvector.layer_count"] == (gguf.GGUFValueType.INT32, 2)
    assert set(tensors) == {"direction.1", "direction.2"}
    for name, vector, scale in (("direction.2", post, 3.0), ("direction.1", pre, -0.5)):
        tensor = tensors[name]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(tensor.shape) == [32]
        torch.testing.assert_close(torch.from_numpy(tensor.data.copy()), vector.direction * scale)
    record = json.loads(fields["ssae_lens.vectors"][1])
    assert {r["tensor"]: [s["hook_name"] for s in r["sources"]] for r in record} == {
        "direction.1": ["blocks.2.hook_resid_pre"],
        "direction.2": ["blocks.2.hook_resid_post"],
    }


def test_to_gguf_uses_the_default_scale_and_the_model_hint(tmp_path):
    vector = _vector("blocks.5.hook_resid_post", 2, default_scale=40.0)
    path = vector.to_gguf(tmp_path / "v.gguf", n_layers=18, model_hint="gemma3")
    fields, tensors = _read(path)
    assert fields["controlvector.model_hint"][1] == "gemma3"
    assert list(tensors) == ["direction.5"]
    torch.testing.assert_close(
        torch.from_numpy(tensors["direction.5"].data.copy()), 40.0 * vector.direction
    )
    other = vector.to_gguf(tmp_path / "w.gguf", scale=-1.0)
    assert _read(other)[0]["controlvector.model_hint"][1] == "unknown"
    torch.testing.assert_close(
        torch.from_numpy(_read(other)[1]["direction.5"].data.copy()), -vector.direction
    )


@pytest.mark.parametrize(
    ("hook", "layer"),
    [
        ("blocks.1.hook_resid_post", 1),
        ("blocks.11.hook_resid_post", 11),
        ("blocks.17.hook_resid_post", 17),
        ("blocks.2.hook_resid_pre", 1),
        ("blocks.12.hook_resid_pre", 11),
    ],
)
def test_residual_hooks_map_to_the_block_whose_output_they_are(hook, layer):
    assert control_vector_layer(hook, n_layers=18) == layer


@pytest.mark.parametrize(
    ("hook", "n_layers", "message"),
    [
        ("blocks.0.hook_resid_post", None, "block 0's output"),
        ("blocks.1.hook_resid_pre", None, "block 0's output"),
        ("blocks.0.hook_resid_pre", None, "embeddings"),
        ("blocks.3.attn.hook_q", None, "not a residual hook point"),
        ("blocks.3.hook_resid_mid", None, "not a residual hook point"),
        ("blocks.3.hook_mlp_out", None, "not a residual hook point"),
        ("blocks.18.hook_resid_post", 18, "layers 1 to 17"),
    ],
)
def test_hooks_llama_cpp_cannot_steer_are_refused(tmp_path, hook, n_layers, message):
    with pytest.raises(ValueError, match=message):
        _vector(hook, 0).to_gguf(tmp_path / "x.gguf", n_layers=n_layers)
    assert not (tmp_path / "x.gguf").exists()


def _llama_cpp_additions(path, n_layer: int) -> dict[int, torch.Tensor]:
    """What llama.cpp adds to each block's output, following its source:
    common_control_vector_load_one puts direction.N at buffer offset n_embd * (N - 1);
    llama_adapter_cvec::apply gives block il (1 <= il < n_layer) offset n_embd * (il - 1)."""
    _, tensors = _read(path)
    n_embd = len(next(iter(tensors.values())).data)
    buffer = torch.zeros(0)
    for name, tensor in tensors.items():
        index = int(name.split(".")[1])
        assert name.startswith("direction.") and index >= 1
        if buffer.numel() < n_embd * index:
            buffer = torch.cat([buffer, torch.zeros(n_embd * index - buffer.numel())])
        buffer[n_embd * (index - 1) : n_embd * index] += torch.from_numpy(tensor.data.copy())
    return {
        il: buffer[n_embd * (il - 1) : n_embd * il]
        for il in range(1, n_layer)
        if n_embd * il <= buffer.numel()
    }


def test_llama_cpp_reading_of_the_file_reproduces_steer_on_a_model(tiny_model, tmp_path):
    # Two vectors land on layer 1 (block 1's output == block 2's input) and are summed.
    specs = [
        Steering(_vector("blocks.1.hook_resid_post", 3), scale=2.0),
        Steering(_vector("blocks.2.hook_resid_pre", 4), scale=-1.5),
        Steering(_vector("blocks.2.hook_resid_post", 5), scale=0.7),
    ]
    path = write_control_vector(
        [s.vector for s in specs], tmp_path / "cv.gguf", scale=[s.scale for s in specs]
    )
    tokens = tiny_model.to_tokens(["the king said that the queen"])
    with steer(tiny_model, specs, positions="all"):
        expected = tiny_model(tokens)

    additions = _llama_cpp_additions(path, tiny_model.cfg.n_layers)
    assert sorted(additions) == [1, 2]
    hooks = [
        (f"blocks.{il}.hook_resid_post", lambda act, hook, add=add: act + add)
        for il, add in additions.items()
    ]
    got = tiny_model.run_with_hooks(tokens, fwd_hooks=hooks)
    unsteered = tiny_model(tokens)
    assert (expected - unsteered).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("vectors", "kwargs", "error", "message"),
    [
        ([], {}, TypeError, "non-empty"),
        (
            [_vector("blocks.1.hook_resid_post", 0), _vector("blocks.2.hook_resid_post", 1, d=16)],
            {},
            ValueError,
            "one width",
        ),
        (
            [
                _vector("blocks.1.hook_resid_post", 0, model_name="a"),
                _vector("blocks.2.hook_resid_post", 1, model_name="b"),
            ],
            {},
            ValueError,
            "different models",
        ),
        ([_vector("blocks.1.hook_resid_post", 0)], {"scale": [1.0, 2.0]}, ValueError, "2 scales"),
        ([_vector("blocks.1.hook_resid_post", 0)], {"scale": 1e39}, ValueError, "overflows"),
    ],
)
def test_bad_inputs_name_the_problem(tmp_path, vectors, kwargs, error, message):
    with pytest.raises(error, match=message):
        write_control_vector(vectors, tmp_path / "x.gguf", **kwargs)
    assert not (tmp_path / "x.gguf").exists()
