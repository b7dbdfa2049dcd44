"""Property-based tests (hypothesis) of the loaders a user feeds files to: random bytes,
strings, YAML and ``--set`` values either load into a valid object or raise the area's own
error type (:class:`PairsError`, :class:`ConfigError`, :class:`VectorFileError`), never
anything else (issue 14). Kept fast: modest example counts and a deadline per example."""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path

import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ssae_lens.config import ConfigError, ExperimentConfig, load_config
from ssae_lens.data import ConceptPairs, PairsError
from ssae_lens.steering import SteeringVector, VectorFileError

FUZZ = settings(max_examples=60, deadline=2000, derandomize=True)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
PAIR_KEYS = ["source", "target", "labels", "lang", "gender", ""]
records = st.dictionaries(st.sampled_from(PAIR_KEYS) | st.text(max_size=5), json_values, max_size=5)
label_keys = st.none() | st.lists(st.sampled_from(["lang", "gender", "source", "x"]), max_size=2)


def _check_pairs(load):
    """``load()`` gives valid pairs or raises PairsError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate or identical pairs warn; that is allowed
        try:
            pairs = load()
        except PairsError:
            return
    assert isinstance(pairs, ConceptPairs) and len(pairs) > 0
    assert all(isinstance(s, str) and s.strip() for s in pairs.sources + pairs.targets)
    if pairs.concepts:
        matrix, _ = pairs.label_matrix()
        assert torch.isfinite(matrix).all()


def _in_file(name: str, data: bytes, read):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        _check_pairs(lambda: read(path))


@FUZZ
@given(st.binary(max_size=300), label_keys)
def test_jsonl_loader_on_random_bytes(data, keys):
    _in_file("p.jsonl", data, lambda p: ConceptPairs.from_jsonl(p, label_keys=keys))


@FUZZ
@given(st.lists(records | json_values, max_size=4), label_keys, st.booleans())
def test_jsonl_loader_on_random_json_lines(rows, keys, bom):
    text = "\n".join(json.dumps(row) for row in rows)
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    _in_file("p.jsonl", data, lambda p: ConceptPairs.from_jsonl(p, label_keys=keys))


csv_text = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\t\x00;1-.é\ufeff')), max_size=120)


@FUZZ
@given(csv_text | st.binary(max_size=200), label_keys)
def test_csv_loader_on_random_text_and_bytes(data, keys):
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    _in_file("p.csv", raw, lambda p: ConceptPairs.from_csv(p, label_keys=keys))


@FUZZ
@given(csv_text, label_keys)
def test_csv_loader_after_a_valid_header(body, keys):
    raw = ("source,target,lang\n" + body).encode("utf-8")
    _in_file("p.csv", raw, lambda p: ConceptPairs.from_csv(p, label_keys=keys))


@FUZZ
@given(st.lists(records | json_values, max_size=4), label_keys)
def test_records_loader_on_random_records(rows, keys):
    _check_pairs(lambda: ConceptPairs.from_records(rows, label_keys=keys))


CONFIG_KEYS = [
    "model",
    "dataset",
    "seeds",
    "position",
    "train",
    "train.d_sae",
    "train.lr",
    "train.sparsity_target",
    "train.sparsity",
    "harvest.batch_size",
    "harvest.test_fraction",
    "steer.scale",
    "steer.prompts",
    "columns.labels",
    "synthetic",
    "synthetic.n_pairs",
    "publish.dry_run",
]
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


def _check_config(load):
    """``load()`` gives an ExperimentConfig or raises ConfigError."""
    try:
        cfg = load()
    except ConfigError:
        return
    assert isinstance(cfg, ExperimentConfig)
    floats = [cfg.harvest.test_fraction, cfg.steer.scale_fraction, *cfg.diagnose.scales]
    assert all(math.isfinite(x) for x in floats)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_config_files_of_random_text(data):
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_bytes(raw)
        _check_config(lambda: load_config(path, ExperimentConfig))


@FUZZ
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=6), yaml_values, max_size=5))
def test_config_files_of_random_yaml(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(yaml.safe_dump(data))
        _check_config(lambda: load_config(path, ExperimentConfig))


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(CONFIG_KEYS) | st.text(max_size=8), st.text(max_size=12)),
        max_size=4,
    )
)
def test_random_set_values(overrides):
    _check_config(lambda: load_config(None, ExperimentConfig, [f"{k}={v}" for k, v in overrides]))


def _valid_vector_files(folder: Path) -> None:
    SteeringVector(torch.arange(4.0), "blocks.0.hook_resid_post", model_name="m").save(folder)


def _check_vector(folder: Path) -> None:
    try:
        vector = SteeringVector.load(folder)
    except VectorFileError:
        return
    assert torch.isfinite(vector.direction).all() and vector.direction.ndim == 1
    assert math.isfinite(vector.default_scale)


@FUZZ
@given(
    st.sampled_from(["vector.json", "vector.safetensors"]),
    st.binary(max_size=300) | st.just(b""),
)
def test_vector_files_of_random_bytes(name, data):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        _valid_vector_files(folder)
        (folder / name).write_bytes(data)
        _check_vector(folder)


@FUZZ
@given(st.sampled_from(["vector.json", "vector.safetensors"]), st.data())
def test_vector_files_with_flipped_bytes(name, data):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        _valid_vector_files(folder)
        raw = bytearray((folder / name).read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        (folder / name).write_bytes(bytes(raw[:cut] if data.draw(st.booleans()) else raw))
        _check_vector(folder)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "format_version",
                "hook_name",
                "model_name",
                "method",
                "normalized",
                "default_scale",
                "provenance",
                "extra",
                "d",
                "norm",
                "x",
            ]
        ),
        json_values,
    )
)
def test_vector_metadata_of_random_json(meta):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        _valid_vector_files(folder)
        (folder / "vector.json").write_text(json.dumps({"format_version": 1, **meta}))
        _check_vector(folder)


DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.bool,
    torch.uint8,
    torch.float8_e4m3fn,
]


@FUZZ
@given(
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 3), max_size=3),
    st.sampled_from(["direction", "other"]),
)
def test_vector_weights_of_any_dtype_and_shape(dtype, shape, key):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        _valid_vector_files(folder)
        tensor = (torch.randn(tuple(shape)) * 1e5).to(dtype)
        save_file({key: tensor}, str(folder / "vector.safetensors"))
        _check_vector(folder)
