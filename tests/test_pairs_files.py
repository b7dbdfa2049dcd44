"""Issue 14 item 3, pairs that cannot be silently corrupted: extra CSV cells, byte-order marks,
identical or empty pairs, and pairs files with other column names on the command line."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ssae_lens import cli, models
from ssae_lens.activations import harvest_shifts
from ssae_lens.config import ConfigError, ExperimentConfig, config_from_dict
from ssae_lens.data import ConceptPairs, IdenticalPairsWarning, PairsError
from ssae_lens.shift_data import ShiftData

HOOK = "blocks.1.hook_resid_post"


def test_a_row_with_more_cells_than_the_header_is_an_error_naming_the_line(tmp_path):
    # The case: an unquoted comma loaded as ('Hello', ' my friend').
    path = tmp_path / "pairs.csv"
    path.write_text("source,target\nking,roi\nHello, my friend,Bonjour mon ami\n")
    with pytest.raises(
        PairsError, match=r"line 3 of .*pairs\.csv has 3 cells but the header has 2"
    ):
        ConceptPairs.from_csv(path)
    path.write_text('source,target\nking,roi\n"Hello, my friend",Bonjour mon ami\n')
    assert list(ConceptPairs.from_csv(path)) == [
        ("king", "roi"),
        ("Hello, my friend", "Bonjour mon ami"),
    ]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_utf8_byte_order_mark_is_handled(tmp_path, suffix):
    # Excel's "CSV UTF-8" starts with EF BB BF; before, the first column was '\ufeffsource'.
    body = {
        "csv": "source,target,language\nking,roi,1\n",
        "jsonl": '{"source": "king", "target": "roi", "language": 1}\n',
    }[suffix]
    path = tmp_path / f"pairs.{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    read = ConceptPairs.from_csv if suffix == "csv" else ConceptPairs.from_jsonl
    pairs = read(path, label_keys=["language"])
    assert list(pairs) == [("king", "roi")]
    assert pairs.labels == [{"language": 1}]


def test_a_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("source,target\ngarçon,boy\n".encode("latin-1"))
    with pytest.raises(PairsError, match=r"latin1\.csv is not UTF-8 text"):
        ConceptPairs.from_csv(path)


def test_identical_source_and_target_warn_naming_the_first_pair():
    with pytest.warns(IdenticalPairsWarning, match=r"1 of 3 pairs .* \(first: pair 2, 'chat'\)"):
        ConceptPairs(["king", "man", "chat"], ["roi", "homme", "chat"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ConceptPairs(["king"], ["roi"])  # a normal pair does not warn


def test_empty_pairs_are_errors_at_construction():
    with pytest.raises(PairsError, match="pair 1: target is empty"):
        ConceptPairs(["king", "man"], ["roi", "  "])
    with pytest.raises(PairsError, match="at least one pair"):
        ConceptPairs([], [])
    # Our error types are ValueError / TypeError subclasses, so existing handlers still work.
    with pytest.raises(TypeError, match="pair 0: source is int"):
        ConceptPairs([5], ["x"])


@pytest.fixture
def pairs_config(tmp_path, tiny_model, monkeypatch):
    """A CSV of pairs with its own column names, and a config pointing at it."""
    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "load_model", lambda name, **kw: tiny_model)
    rows = [("king", "roi"), ("man", "homme"), ("the cat", "le chat"), ("red", "rouge")] * 2
    rows = [(f"{s} {i}", f"{t} {i}") for i, (s, t) in enumerate(rows)]
    csv = tmp_path / "words.csv"
    csv.write_text("english,french,lang\n" + "".join(f"{s},{t},1\n" for s, t in rows))
    config = tmp_path / "words.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "tiny",
                "dataset": str(csv),
                "hook_name": HOOK,
                "out_dir": str(tmp_path / "runs"),
                "harvest": {"test_fraction": 0.25},
            }
        )
    )
    return config, csv, rows


def test_the_cli_reads_a_pairs_file_with_other_column_names(pairs_config, tiny_model):
    config, csv, rows = pairs_config
    result = CliRunner().invoke(
        cli.app,
        [
            "harvest",
            str(config),
            "--set",
            "columns.source=english",
            "--set",
            "columns.target=french",
            "--set",
            "columns.labels=[lang]",
        ],
    )
    assert result.exit_code == 0, result.output
    data = ShiftData.load(config.parent / "runs" / "harvest" / "shifts.safetensors")
    assert data.concepts == ["lang"]
    pairs = ConceptPairs([s for s, _ in rows], [t for _, t in rows])
    _, test = pairs.split(0.25, seed=0)
    expected = harvest_shifts(tiny_model, test, HOOK, "last", progress=False)
    torch.testing.assert_close(data.shifts_te, expected, rtol=1e-5, atol=1e-5)


def test_missing_columns_on_the_cli_name_the_config_keys_not_python_arguments(pairs_config):
    config, _, _ = pairs_config
    result = CliRunner().invoke(cli.app, ["harvest", str(config)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "no 'source', 'target' columns" in lines[0]
    assert "available: ['english', 'french', 'lang']" in lines[0]
    assert "--set columns.source=english" in lines[0]
    assert "source_key=" not in lines[0]  # the Python argument the CLI cannot pass


def test_columns_apply_only_to_pairs_files():
    with pytest.raises(ConfigError, match=re.escape("columns: names the fields of a .jsonl")):
        config_from_dict(ExperimentConfig, {"dataset": "binary", "columns": {"source": "en"}})
