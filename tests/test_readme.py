"""The README's commands run as written (issue 14, docs): every ``ssae-lens ...`` line and every
Python block is extracted from README.md and run, on the tiny model instead of Gemma-3-270M.

What is substituted, and why (each ``old`` must still occur in the README, so this list stays
true when the README changes):

- ``load_model(...)`` (any name) returns the tiny 3-layer model (with ``backend="bridge"``, the
  tiny Gemma 3 through TransformerBridge): Gemma-3-270M takes minutes on a CPU. Their hook
  points are ``blocks.0-2``, their width 32, so the README's ``blocks.12`` / ``blocks.8`` /
  ``blocks.6`` hooks, ``d_in=640`` and ``n_layers=18`` are replaced (``PYTHON_SUBSTITUTIONS``).
- The SSAE in the Python example trains 200 steps, not 3000.
- The configs the commands name (``configs/binary.yaml``, ``configs/demo.yaml``,
  ``configs/effects.yaml``) are the repository's own files with ``CONFIG_OVERRIDES`` applied
  (the tiny model's name and hook, fewer training steps and generated tokens; the demo's
  many-concept part on 200 categorical pairs at width 29), and for the SAE-TS commands
  ``EFFECTS_OVERRIDES`` (the test's SAE, few directions, a target it has).
- ``ssae-lens paper`` runs ``benchmarks/paper.py`` (22 minutes on Gemma): the script run is
  replaced by a stub that records its arguments.
- The Hub is the stand-in server of conftest.py (``fake_hub``), set as the default endpoint.
- Files a README line assumes the user has (``pairs.jsonl``, ``pairs.csv``, ``my_vector/``,
  ``my_sae/``, a SAELens SAE) are made by the test.

The quick-start's ``make demo`` / ``make test`` are not run here (they are what runs this).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
import yaml
from sae_lens import StandardSAE, StandardSAEConfig
from typer.testing import CliRunner

from ssae_lens import cli, models
from ssae_lens.steering import SteeringVector

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
HOOK = "blocks.1.hook_resid_post"

PYTHON_SUBSTITUTIONS = [
    ('"blocks.12.hook_resid_post"', f'"{HOOK}"'),
    ('"blocks.8.hook_resid_post"', f'"{HOOK}"'),
    ('"blocks.6.hook_resid_post"', f'"{HOOK}"'),
    ("d_in=640", "d_in=32"),
    ("d_sae=2), seed=0", "d_sae=2, training_steps=200), seed=0"),
    ("n_layers=18", "n_layers=3"),
]
CONFIG_OVERRIDES = {
    "model": "tiny",
    "hook_name": HOOK,
    "train": {"d_sae": 2, "training_steps": 40},
    "steer": {"max_new_tokens": 3},
}


# configs/effects.yaml measures the effects of the tiny SAE the test saves (my_sae), few and
# short, and aims at a feature it has (the shipped targets are the reference SAE's).
EFFECTS_OVERRIDES = {
    "effects": {
        "sae_path": "my_sae",
        "n_decoder": 4,
        "n_mix": 2,
        "n_random": 2,
        "calibration_directions": 2,
        "prompts": ["", "I think"],  # a BOS-only prompt and a short one
        "n_samples": 2,
        "total_tokens": 6,
        "chunk_size": 4,
    },
    "sae_ts": {"targets": {"f3": [3]}},
}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def _commands() -> list[list[str]]:
    lines = [line for block in _blocks("bash") for line in block.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.startswith("ssae-lens ")]


def test_the_substitutions_still_match_the_readme():
    python = "\n".join(_blocks("python"))
    for old, _ in PYTHON_SUBSTITUTIONS:
        assert old in python, f"README no longer contains {old!r}: update this test"
    registered = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    names = {args[1] for args in _commands()}
    assert names and names <= registered, names - registered


@pytest.fixture
def workspace(tmp_path, tiny_model, tiny_bridge, fake_hub, monkeypatch):
    """A working directory with the files the README assumes, the tiny models behind
    ``load_model``, and the stand-in Hub as the default endpoint."""
    endpoint, _ = fake_hub
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSAE_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        models,
        "load_model",
        lambda name, backend="hooked", **kw: tiny_bridge if backend == "bridge" else tiny_model,
    )
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    words = [("king", "roi"), ("queen", "reine"), ("the cat", "le chat"), ("red", "rouge")]
    Path("pairs.jsonl").write_text(
        "".join(f'{{"source": "{s}", "target": "{t}"}}\n' for s, t in words)
    )
    Path("pairs.csv").write_text("english,french\n" + "".join(f"{s},{t}\n" for s, t in words))
    for name in ("binary", "demo", "paper", "effects"):
        data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
        if name != "paper":
            overrides = {**CONFIG_OVERRIDES, **(EFFECTS_OVERRIDES if name == "effects" else {})}
            for key, value in overrides.items():
                data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        if name == "demo":  # categorical's 29 concepts fit the tiny model's width 32
            data["many"] = {**data["many"], "max_pairs": 200, "width_multiplier": 1}
        Path("configs").mkdir(exist_ok=True)
        Path("configs", f"{name}.yaml").write_text(yaml.safe_dump(data))
    # The SAELens SAE the SAE-TS lines name, at the tiny model's hook.
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    sae.cfg.metadata.hook_name = HOOK
    sae.save_model("my_sae")
    return tmp_path


def test_the_python_blocks_run(workspace, capsys):
    namespace: dict = {}
    for block in _blocks("python"):
        for old, new in PYTHON_SUBSTITUTIONS:
            block = block.replace(old, new)
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (the README's code)
    assert type(namespace["ssae"]).__name__ == "SSAE"
    assert namespace["ssae"].cfg.metadata.hook_name == HOOK
    assert namespace["vector"].model_name == namespace["model"].cfg.model_name
    assert Path("french.gguf").stat().st_size > 0
    assert len(namespace["pairs"]) == 4 and namespace["shifts"].shape == (4, 32)
    assert capsys.readouterr().out.startswith("The")  # the steered generation was printed
    assert type(namespace["bridge"]).__name__ == "TransformerBridge"  # "Your own model"
    assert namespace["binary_shifts"].shape == (285, 32)


def test_the_command_lines_run(workspace, tiny_model, monkeypatch):
    ran = {}
    monkeypatch.setattr(cli.runpy, "run_path", lambda path, run_name: ran.update(path=path))
    # The files the diagnose line names: a vector and a SAELens SAE at the tiny model's hook.
    gen = torch.Generator().manual_seed(0)
    SteeringVector(torch.randn(32, generator=gen), HOOK).save("my_vector")
    runner = CliRunner()
    for args in _commands():
        assert args[0] == "ssae-lens"
        result = runner.invoke(cli.app, args[1:])
        assert result.exit_code == 0, f"{shlex.join(args)}\n{result.output}"
        assert "Traceback" not in result.output
    assert Path(ran["path"]).name == "paper.py"
    assert Path("runs/binary/publish/me--ssae-binary/README.md").exists()
    assert Path("runs/demo/report.md").exists()
