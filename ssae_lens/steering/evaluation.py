"""Does a steering vector work? Sweep scales, generate, score behaviour and coherence.

``evaluate_steering`` generates continuations of neutral prompts under ``steer`` at each scale
(scale 0 is the unsteered baseline and is always included), scores every continuation for
behaviour (does it show the target concept) and coherence (is it fluent), both in ``[0, 1]``,
and reports per scale the means and the mean of ``behaviour * coherence``. The maximum of that
product over scales is the metric of SAE-targeted steering (Chalnev, Siu & Conmy 2024,
arXiv 2411.02193)::

    result = evaluate_steering(
        model, vector, prompts=["I think", "The weather"], scales=[2, 4, 8],
        behavior_scorer=KeywordScorer(["wedding", "bride"]),
    )
    print(result.to_markdown(examples=2))
    result.plot("sweep.png")
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from ssae_lens._core.io import save_figure
from ssae_lens.distributed import compute_chunks
from ssae_lens.generation import generate_texts
from ssae_lens.steering.apply import POSITION_NAMES, steer
from ssae_lens.steering.scorers import LikelihoodCoherenceScorer, Scorer
from ssae_lens.steering.vector import SteeringVector

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ScaleResult", "SteeringEvaluation", "SteeringSample", "evaluate_steering"]


@dataclass(frozen=True)
class ScaleResult:
    """Scores at one scale, averaged over all prompts and samples.

    Attributes:
        scale: the steering scale (0 = unsteered).
        behavior: mean behaviour score.
        coherence: mean coherence score.
        score: mean over texts of ``behaviour * coherence``.
        n_texts: number of continuations scored.
    """

    scale: float
    behavior: float
    coherence: float
    score: float
    n_texts: int


@dataclass(frozen=True)
class SteeringSample:
    """One steered continuation next to the unsteered one for the same prompt and sample."""

    scale: float
    prompt: str
    sample: int
    text: str
    unsteered: str
    behavior: float
    coherence: float


@dataclass
class SteeringEvaluation:
    """The result of ``evaluate_steering``.

    Attributes:
        results: one ``ScaleResult`` per scale, in increasing scale order (includes 0).
        samples: every continuation, with the unsteered one for the same prompt and sample.
        hook_names: the hook points steered.
        settings: the generation settings used (prompts, max_new_tokens, n_samples, seed, ...).
    """

    results: list[ScaleResult]
    samples: list[SteeringSample]
    hook_names: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> ScaleResult:
        """The scale with the highest mean ``behaviour * coherence`` (the first on ties)."""
        return max(self.results, key=lambda r: r.score)

    @property
    def best_scale(self) -> float:
        return self.best.scale

    @property
    def best_score(self) -> float:
        """``max`` over scales of mean ``behaviour * coherence`` (the SAE-TS metric)."""
        return self.best.score

    @property
    def baseline(self) -> ScaleResult:
        """The unsteered row (scale 0)."""
        return next(r for r in self.results if r.scale == 0.0)

    def samples_at(self, scale: float | None = None) -> list[SteeringSample]:
        """The continuations at ``scale`` (default: the best scale), steered vs unsteered."""
        scale = self.best_scale if scale is None else float(scale)
        found = [s for s in self.samples if s.scale == scale]
        if not found:
            raise ValueError(
                f"No samples at scale {scale:g}; evaluated scales: "
                f"{[r.scale for r in self.results]}."
            )
        return found

    def table(self) -> list[dict[str, float]]:
        """The per-scale table as a list of rows."""
        return [asdict(r) for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: table, best scale and score, samples and settings."""
        return {
            "hook_names": list(self.hook_names),
            "settings": dict(self.settings),
            "results": self.table(),
            "best_scale": self.best_scale,
            "best_score": self.best_score,
            "samples": [asdict(s) for s in self.samples],
        }

    def to_markdown(self, examples: int = 0) -> str:
        """The sweep as a Markdown table; ``examples`` > 0 adds that many steered vs
        unsteered continuations at the best scale."""
        best = self.best
        lines = [
            "| scale | behaviour | coherence | behaviour x coherence |",
            "|---:|---:|---:|---:|",
        ]
        for r in self.results:
            label = f"{r.scale:g}" + (" (unsteered)" if r.scale == 0 else "")
            score = f"{r.score:.3f}"
            if r is best:
                label, score = f"**{label}**", f"**{score}**"
            lines.append(f"| {label} | {r.behavior:.3f} | {r.coherence:.3f} | {score} |")
        lines += [
            "",
            f"max behaviour x coherence = {best.score:.3f} at scale {best.scale:g} "
            f"(unsteered: {self.baseline.score:.3f})"
            + (f"; hook: {', '.join(self.hook_names)}." if self.hook_names else "."),
        ]
        if examples > 0:
            lines += [
                "",
                f"| prompt | unsteered | steered (scale {best.scale:g}) |",
                "|---|---|---|",
            ]
            for s in self.samples_at(best.scale)[:examples]:
                cells = (_md_cell(s.prompt), _md_cell(s.unsteered), _md_cell(s.text))
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def figure(self) -> Figure:
        """Behaviour, coherence and their product against scale (not attached to pyplot)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.subplots()
        scales = [r.scale for r in self.results]
        ax.plot(scales, [r.behavior for r in self.results], "o-", label="behaviour")
        ax.plot(scales, [r.coherence for r in self.results], "s-", label="coherence")
        ax.plot(scales, [r.score for r in self.results], "D-", lw=2, label="behaviour x coherence")
        ax.axvline(
            self.best_scale,
            color="0.5",
            ls=":",
            label=f"best scale {self.best_scale:g} ({self.best_score:.3f})",
        )
        ax.set(
            xlabel="steering scale (0 = unsteered)",
            ylabel="score",
            ylim=(-0.02, 1.02),
            title=f"steering sweep at {', '.join(self.hook_names)}",
        )
        ax.legend()
        return fig

    def plot(self, path: str | os.PathLike) -> Path:
        """Save ``figure()`` to ``path`` (format from the suffix, e.g. ``.png``); returns it."""
        return save_figure(self.figure(), path)


def evaluate_steering(
    model: HookedTransformer,
    vector: SteeringVector
    | Sequence[SteeringVector]
    | Callable[[float], contextlib.AbstractContextManager],
    *,
    prompts: Sequence[str],
    scales: Sequence[float],
    behavior_scorer: Scorer,
    coherence_scorer: Scorer | None = None,
    max_new_tokens: int = 32,
    n_samples: int = 1,
    seed: int = 0,
    positions: str = "all",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 16,
) -> SteeringEvaluation:
    """Sweep steering scales and score the generations.

    For each scale ``a`` (0 added if missing) and prompt, generates ``n_samples``
    continuations of ``max_new_tokens`` tokens with ``vector`` applied as ``x + a * direction``
    (``steer(model, vector, scale=a, positions=positions)``) on every forward pass, prompt and
    decode steps. Scale 0 runs without any hook: it is the unsteered baseline each steered
    continuation is paired with. The rows (each prompt repeated ``n_samples`` times) are
    generated by :func:`~ssae_lens.generation.generate_texts` in left-padded batches of
    ``batch_size``; batch ``c`` draws its tokens from the uniform numbers of seed ``seed + c``
    at every scale, so scales share their sampling noise (common random numbers; the global
    RNG is not used). Continuations are cut at the first EOS. Each batch is scored as soon
    as it is generated.

    Under ``torchrun``, inside :func:`ssae_lens.distributed.process_group`, the batches of the
    scale x prompt grid (and their scoring) are shared by the ranks
    (:func:`~ssae_lens.distributed.compute_chunks`) and every rank returns the full result,
    the same as one process's: batch ``c``'s random numbers do not depend on the rank.

    Args:
        model: the model to steer.
        vector: a ``SteeringVector`` or a list of them (all scaled by the same ``a``), or any
            intervention as a function ``a -> context manager`` (e.g. query steering with
            ``a`` steps); ``positions`` then applies only to vectors.
        prompts: neutral prompts to continue.
        scales: the scales to sweep.
        behavior_scorer: scores whether a continuation shows the target behaviour.
        coherence_scorer: scores fluency; default ``LikelihoodCoherenceScorer(model)``.
        max_new_tokens: tokens generated per continuation.
        n_samples: continuations per prompt and scale (> 1 needs ``do_sample=True``).
        seed: base seed of the sampling.
        positions: ``"all"``, ``"prompt"`` or ``"generated"`` (see ``steer``).
        do_sample: sample (``True``) or decode greedily (``False``).
        temperature: sampling temperature.
        top_k: sample among the ``top_k`` most likely tokens, or ``None`` for all.
        top_p: nucleus sampling mass, or ``None`` for the full distribution.
        batch_size: continuations generated per batch.

    Returns:
        A ``SteeringEvaluation`` with the per-scale table, the best scale and every sample.
    """
    prompts = _check_prompts(prompts)
    scales = _check_scales(scales)
    if callable(vector):
        intervene, vectors = vector, []
    else:
        vectors = [vector] if isinstance(vector, SteeringVector) else list(vector)
        if not vectors or not all(isinstance(v, SteeringVector) for v in vectors):
            raise TypeError(
                "vector must be a SteeringVector, a non-empty list of them, or a function "
                "scale -> context manager."
            )

        def intervene(scale: float) -> contextlib.AbstractContextManager:
            return steer(model, vectors, scale=scale, positions=positions)

    if positions not in POSITION_NAMES:
        raise ValueError(
            f"positions must be one of {POSITION_NAMES} in a sweep over several prompts, got "
            f"{positions!r}; for per-token selections call steer() directly."
        )
    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples}.")
    if n_samples > 1 and not do_sample:
        raise ValueError(
            f"Greedy decoding makes all {n_samples} samples identical: pass do_sample=True "
            "or n_samples=1."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens}.")
    coherence_scorer = coherence_scorer or LikelihoodCoherenceScorer(model)
    generate = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )

    rows = [(i, j) for i in range(len(prompts)) for j in range(n_samples)]
    chunks = [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]
    jobs = [(a, c) for a in scales for c in range(len(chunks))]

    def run_jobs(items: range) -> dict[str, Tensor]:
        """Generate and score the batches ``jobs[items]``: texts as UTF-8 bytes, scores."""
        out: dict[str, list[Tensor]] = {"text": [], "length": [], "behavior": [], "coherence": []}
        for scale, c in jobs[items.start : items.stop]:
            hooks = contextlib.nullcontext() if scale == 0.0 else intervene(scale)
            batch_prompts = [prompts[i] for i, _ in chunks[c]]
            with hooks:
                texts = generate_texts(model, batch_prompts, seed=seed + c, **generate)
            encoded = [text.encode("utf-8") for text in texts]
            out["text"].append(torch.tensor(list(b"".join(encoded)), dtype=torch.uint8))
            out["length"].append(torch.tensor([len(b) for b in encoded], dtype=torch.long))
            for name, scorer in (("behavior", behavior_scorer), ("coherence", coherence_scorer)):
                scores = _run_scorer(scorer, f"{name}_scorer", texts, batch_prompts)
                out[name].append(torch.tensor(scores, dtype=torch.float64))
        return {name: torch.cat(parts) for name, parts in out.items()}

    done, _ = compute_chunks(run_jobs, len(jobs), 1, desc="steering sweep")
    ends = done["length"].cumsum(0).tolist()
    payload = bytes(done["text"].tolist())
    decoded = [
        payload[end - n : end].decode("utf-8")
        for end, n in zip(ends, done["length"].tolist(), strict=True)
    ]
    keys = [(a, i, j) for a, c in jobs for i, j in chunks[c]]
    texts = dict(zip(keys, decoded, strict=True))
    behavior, coherence = done["behavior"].tolist(), done["coherence"].tolist()

    samples = [
        SteeringSample(
            scale=a,
            prompt=prompts[i],
            sample=j,
            text=texts[a, i, j],
            unsteered=texts[0.0, i, j],
            behavior=b,
            coherence=c,
        )
        for (a, i, j), b, c in zip(keys, behavior, coherence, strict=True)
    ]
    results = []
    for scale in scales:
        rows = [s for s in samples if s.scale == scale]
        results.append(
            ScaleResult(
                scale=scale,
                behavior=sum(s.behavior for s in rows) / len(rows),
                coherence=sum(s.coherence for s in rows) / len(rows),
                score=sum(s.behavior * s.coherence for s in rows) / len(rows),
                n_texts=len(rows),
            )
        )
    settings = dict(
        prompts=list(prompts),
        n_samples=n_samples,
        seed=seed,
        positions=positions,
        batch_size=batch_size,
        **generate,
    )
    return SteeringEvaluation(
        results=results,
        samples=samples,
        hook_names=[v.hook_name for v in vectors],
        settings=settings,
    )


def _run_scorer(scorer: Scorer, name: str, texts: list[str], prompts: list[str]) -> list[float]:
    scores = [float(s) for s in scorer(texts, prompts)]
    if len(scores) != len(texts):
        raise ValueError(f"{name} returned {len(scores)} scores for {len(texts)} texts.")
    for k, s in enumerate(scores):
        if not (math.isfinite(s) and 0.0 <= s <= 1.0):
            raise ValueError(
                f"{name} returned {s!r} for text {k} ({texts[k][:60]!r}); scorers must return "
                "values in [0, 1]."
            )
    return scores


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string; wrap it: [p].")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings.")
    return prompts


def _check_scales(scales: Sequence[float]) -> list[float]:
    values = [float(s) for s in scales]
    bad = [s for s in values if not math.isfinite(s)]
    if bad:
        raise ValueError(f"scales must be finite numbers, got {bad}.")
    return sorted({0.0, *values})


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(empty)"
