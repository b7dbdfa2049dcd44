"""Scorers for steered generations: behaviour and coherence in ``[0, 1]`` per text.

A scorer is any callable ``scorer(texts, prompts) -> list[float]`` (the ``Scorer`` protocol):
``texts[i]`` is the continuation generated for ``prompts[i]`` (without the prompt) and the
result holds one score in ``[0, 1]`` per text. Offline defaults:

- ``LikelihoodCoherenceScorer``: the unsteered model's own likelihood of the continuation,
  times a repetition penalty.
- ``KeywordScorer``: a lexicon of words or phrases.
- ``ProbeScorer``: a logistic-regression probe on activations of labelled texts.

:class:`~ssae_lens.steering.judge.LLMJudgeScorer` asks any OpenAI-compatible chat-completions
endpoint instead (:mod:`ssae_lens.steering.judge`). Off-the-shelf scorers that no one here
wrote (VADER sentiment, lingua language, textstat reading ease) are in
:mod:`ssae_lens.steering.text_scorers`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ssae_lens._core.backend import Model
from ssae_lens._core.precision import Precision, autocast, resolve_precision
from ssae_lens.activations import harvest_activations
from ssae_lens.metrics import next_token_nll

__all__ = [
    "KeywordScorer",
    "LikelihoodCoherenceScorer",
    "LinearProbe",
    "ProbeScorer",
    "Scorer",
]


@runtime_checkable
class Scorer(Protocol):
    """Scores generated continuations: ``scorer(texts, prompts)`` -> one value in [0, 1] each."""

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]: ...


class KeywordScorer:
    """Lexicon scorer: ``min(1, hits / saturation)`` where ``hits`` counts keyword matches.

    Args:
        keywords: words or phrases; matched case-insensitively unless ``case_sensitive``.
        saturation: number of hits that scores 1 (the default 1 scores "mentions any keyword").
        whole_words: match only where a keyword is not part of a longer word ("happy" does not
            match "unhappy"); set False to match substrings ("happ" matches "happiness").
        case_sensitive: match case exactly.
    """

    def __init__(
        self,
        keywords: Iterable[str],
        *,
        saturation: int = 1,
        whole_words: bool = True,
        case_sensitive: bool = False,
    ):
        self.keywords = [k for k in dict.fromkeys(keywords) if k.strip()]
        if not self.keywords:
            raise ValueError("KeywordScorer needs at least one non-empty keyword.")
        if saturation < 1:
            raise ValueError(f"saturation must be a positive integer, got {saturation}.")
        self.saturation = saturation
        # Longest first, so a phrase wins over a keyword it contains.
        alternatives = "|".join(re.escape(k) for k in sorted(self.keywords, key=len, reverse=True))
        pattern = rf"(?<!\w)(?:{alternatives})(?!\w)" if whole_words else f"(?:{alternatives})"
        self._regex = re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)

    def count(self, text: str) -> int:
        """Number of non-overlapping keyword matches in ``text``."""
        return len(self._regex.findall(text))

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        return [min(1.0, self.count(t) / self.saturation) for t in texts]

    def __repr__(self) -> str:
        return f"KeywordScorer({len(self.keywords)} keywords, saturation={self.saturation})"


class LikelihoodCoherenceScorer:
    """Coherence from the unsteered model's own likelihood of the text, times a repetition
    penalty.

    For a continuation with mean per-token negative log-likelihood ``nll`` (nats, given the
    prompt) under ``model``, and ``V`` the vocabulary size:

        fluency    = clip((log V - nll) / (log V - fluent_nll), 0, 1)
        repetition = distinct n-grams / n-grams of the continuation's tokens
        coherence  = fluency * repetition

    ``log V`` is the loss of guessing uniformly over the vocabulary (fluency 0: the model finds
    the text no more predictable than noise); ``fluent_nll`` is the loss that scores 1. The
    default 0 makes ``fluency = 1 - nll / log V``; set it to the model's mean loss on
    reference text (``scorer.nll(reference_texts, reference_prompts)``) to stretch the scale
    so that text as fluent as the reference scores 1. The repetition factor catches degenerate
    loops ("the the the"), which a model finds very likely. Empty continuations score 0.

    Call it outside any ``steer`` context: it must see the unsteered model.

    Args:
        model: the (unsteered) model.
        fluent_nll: the loss that scores fluency 1, in nats per token.
        ngram: n-gram order of the repetition penalty.
        batch_size: texts per forward pass.
        precision: the precision of the forward passes (``None``: the model's).
    """

    def __init__(
        self,
        model: Model,
        *,
        fluent_nll: float = 0.0,
        ngram: int = 2,
        batch_size: int = 8,
        precision: Precision | None = None,
    ):
        self.model = model
        self.precision = resolve_precision(model, precision)
        self.log_vocab = math.log(model.cfg.d_vocab)
        if not 0.0 <= fluent_nll < self.log_vocab:
            raise ValueError(
                f"fluent_nll must be in [0, log(d_vocab) = {self.log_vocab:.2f}), got {fluent_nll}."
            )
        if ngram < 1:
            raise ValueError(f"ngram must be a positive integer, got {ngram}.")
        self.fluent_nll = fluent_nll
        self.ngram = ngram
        self.batch_size = batch_size

    def nll(self, texts: list[str], prompts: list[str]) -> list[float]:
        """Mean negative log-likelihood per token (nats) of each continuation given its prompt;
        ``inf`` for an empty continuation."""
        check_lengths(texts, prompts)
        out: list[float] = []
        for start in tqdm(
            range(0, len(texts), self.batch_size), desc="likelihood", disable=None, leave=False
        ):
            out.extend(
                self._nll_batch(
                    texts[start : start + self.batch_size], prompts[start : start + self.batch_size]
                )
            )
        return out

    def distinct_ngram_fraction(self, text: str) -> float:
        """Fraction of distinct token n-grams in ``text`` (order ``min(ngram, n_tokens)``)."""
        tokens = self._continuation_tokens(text).tolist()
        if not tokens:
            return 0.0
        n = min(self.ngram, len(tokens))
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        return len(set(grams)) / len(grams)

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        scores = []
        for text, nll in zip(texts, self.nll(texts, prompts), strict=True):
            if math.isinf(nll):
                scores.append(0.0)
                continue
            fluency = (self.log_vocab - nll) / (self.log_vocab - self.fluent_nll)
            scores.append(min(1.0, max(0.0, fluency)) * self.distinct_ngram_fraction(text))
        return scores

    def _continuation_tokens(self, text: str) -> Tensor:
        if not text:
            return torch.zeros(0, dtype=torch.long)
        return self.model.to_tokens(text, prepend_bos=False)[0].cpu()

    @torch.no_grad()
    def _nll_batch(self, texts: list[str], prompts: list[str]) -> list[float]:
        pairs = [
            (self.model.to_tokens(p)[0].cpu(), self._continuation_tokens(t))
            for t, p in zip(texts, prompts, strict=True)
        ]
        length = max(len(p) + len(c) for p, c in pairs)
        # Right padding: with causal attention, padding after a sequence cannot change the
        # logits of its real tokens, so no attention mask is needed.
        batch = torch.zeros(len(pairs), length, dtype=torch.long)
        for i, (p, c) in enumerate(pairs):
            batch[i, : len(p) + len(c)] = torch.cat([p, c])
        with autocast(self.precision, self.model.cfg.device):
            logits = self.model(batch.to(self.model.cfg.device), return_type="logits")
        nll = next_token_nll(logits, batch).cpu()  # nll[:, t] scores token t + 1
        return [
            nll[i, len(p) - 1 : len(p) + len(c) - 1].mean().item() if len(c) else math.inf
            for i, (p, c) in enumerate(pairs)
        ]


@dataclass
class LinearProbe:
    """A logistic-regression probe ``P(positive | x) = sigmoid(((x - mean) / scale) @ w + b)``.

    Attributes:
        weight: ``w``, ``Float[Tensor, " d"]``, on standardised features.
        bias: ``b``.
        mean: per-feature mean of the training features.
        scale: per-feature standard deviation of the training features.
    """

    weight: Float[Tensor, " d"]
    bias: float
    mean: Float[Tensor, " d"]
    scale: Float[Tensor, " d"]

    @classmethod
    def fit(
        cls,
        features: Float[Tensor, "n d"],
        labels: Float[Tensor, " n"],
        *,
        l2: float = 1e-2,
        max_iter: int = 200,
    ) -> LinearProbe:
        """Fit by L-BFGS on the mean logistic loss plus ``l2 / 2 * ||w||^2`` (deterministic:
        starts from zero). ``labels`` are 0/1; the features are standardised first."""
        x = features.detach().double().cpu()
        y = torch.as_tensor(labels).detach().double().cpu()
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(
                f"features must be [n, d] and labels [n], got {tuple(x.shape)} and "
                f"{tuple(y.shape)}."
            )
        if not ((y == 0) | (y == 1)).all() or y.min() == y.max():
            raise ValueError("labels must be 0/1 and contain both classes.")
        mean = x.mean(dim=0)
        scale = x.std(dim=0).clamp_min(1e-8) if x.shape[0] > 1 else torch.ones_like(mean)
        z = (x - mean) / scale
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y)
            loss = loss + 0.5 * l2 * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(weight=w.detach().float(), bias=b.item(), mean=mean.float(), scale=scale.float())

    def predict_proba(self, features: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
        """``P(positive)`` for each row."""
        z = (features.detach().float().cpu() - self.mean) / self.scale
        return torch.sigmoid(z @ self.weight + self.bias)


class ProbeScorer:
    """Behaviour scorer: a linear probe's ``P(positive)`` on the continuation's activations.

    Build it with ``ProbeScorer.fit(model, positive_texts, negative_texts, hook_name)``. Each
    continuation is read on its own (without the prompt), at ``position`` of ``hook_name``;
    empty continuations score 0.
    """

    def __init__(
        self,
        model: Model,
        probe: LinearProbe,
        hook_name: str,
        *,
        position: str = "last",
        batch_size: int = 32,
    ):
        self.model = model
        self.probe = probe
        self.hook_name = hook_name
        self.position = position
        self.batch_size = batch_size

    @classmethod
    def fit(
        cls,
        model: Model,
        positive_texts: list[str],
        negative_texts: list[str],
        hook_name: str,
        *,
        position: str = "last",
        l2: float = 1e-2,
        batch_size: int = 32,
    ) -> ProbeScorer:
        """Train the probe on activations of labelled texts (positive = 1, negative = 0)."""
        if not positive_texts or not negative_texts:
            raise ValueError("ProbeScorer.fit needs at least one positive and one negative text.")
        texts = list(positive_texts) + list(negative_texts)
        acts = harvest_activations(
            model, texts, hook_name, position=position, batch_size=batch_size
        )
        labels = torch.cat([torch.ones(len(positive_texts)), torch.zeros(len(negative_texts))])
        probe = LinearProbe.fit(acts, labels, l2=l2)
        return cls(model, probe, hook_name, position=position, batch_size=batch_size)

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        check_lengths(texts, prompts)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        scores = [0.0] * len(texts)
        if keep:
            acts = harvest_activations(
                self.model,
                [texts[i] for i in keep],
                self.hook_name,
                position=self.position,
                batch_size=self.batch_size,
            )
            for i, p in zip(keep, self.probe.predict_proba(acts).tolist(), strict=True):
                scores[i] = p
        return scores


def check_lengths(texts: list[str], prompts: list[str]) -> None:
    if len(texts) != len(prompts):
        raise ValueError(
            f"Got {len(texts)} texts but {len(prompts)} prompts; pass one prompt per text."
        )
