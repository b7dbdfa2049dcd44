"""Scorers for steered generations: behaviour and coherence in ``[0, 1]`` per text.

A scorer is any callable ``scorer(texts, prompts) -> list[float]`` (the ``Scorer`` protocol):
``texts[i]`` is the continuation generated for ``prompts[i]`` (without the prompt) and the
result holds one score in ``[0, 1]`` per text. Offline defaults:

- ``LikelihoodCoherenceScorer``: the unsteered model's own likelihood of the continuation,
  times a repetition penalty.
- ``KeywordScorer``: a lexicon of words or phrases.
- ``ProbeScorer``: a logistic-regression probe on activations of labelled texts.

``LLMJudgeScorer`` asks any OpenAI-compatible chat-completions endpoint instead (one
criterion, or several combined by harmonic mean as AxBench does). Off-the-shelf scorers that
no one here wrote (VADER sentiment, lingua language, textstat reading ease) are in
:mod:`ssae_lens.steering.text_scorers`.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ssae_lens.activations import harvest_activations

__all__ = [
    "AXBENCH_JUDGE_TEMPLATE",
    "DEFAULT_JUDGE_TEMPLATE",
    "KeywordScorer",
    "LLMJudgeError",
    "LLMJudgeScorer",
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
    """

    def __init__(
        self,
        model: HookedTransformer,
        *,
        fluent_nll: float = 0.0,
        ngram: int = 2,
        batch_size: int = 8,
    ):
        self.model = model
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
        _check_lengths(texts, prompts)
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
        logits = self.model(batch.to(self.model.cfg.device), return_type="logits")
        out = []
        for i, (p, c) in enumerate(pairs):
            if len(c) == 0:
                out.append(math.inf)
                continue
            # Token at position t is predicted by the logits at t - 1.
            pred = logits[i, len(p) - 1 : len(p) + len(c) - 1].float().log_softmax(dim=-1)
            logp = pred.gather(-1, c.to(pred.device)[:, None])
            out.append(-logp.mean().item())
        return out


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
        model: HookedTransformer,
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
        model: HookedTransformer,
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
        _check_lengths(texts, prompts)
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


DEFAULT_JUDGE_TEMPLATE = (
    "You are grading a text written by a language model as a continuation of a prompt.\n"
    "Criterion: {criterion}\n\n"
    "Prompt: {prompt}\n"
    "Continuation: {text}\n\n"
    "How well does the continuation meet the criterion? Answer with a single integer from 0 "
    "(not at all) to 10 (completely) and nothing else."
)
"""The default ``LLMJudgeScorer`` prompt; fields ``{criterion}``, ``{prompt}``, ``{text}``."""

AXBENCH_JUDGE_TEMPLATE = (
    "You are grading a text written by a language model as a continuation of a prompt.\n"
    "Criterion: {criterion}\n\n"
    "Prompt: {prompt}\n"
    "Continuation: {text}\n\n"
    "Answer with a single integer and nothing else: 0 if the continuation does not meet the "
    "criterion, 1 if it meets it partly, 2 if it meets it fully."
)
"""The 0-2 prompt of ``LLMJudgeScorer.axbench`` (AxBench grades each criterion 0, 1 or 2)."""

_NUM = r"\d+(?:\.\d+)?"
_LABELLED = re.compile(
    rf"\b(?:score|rating|grade)\W{{0,3}}(?:is\W{{0,3}})?({_NUM})(?:\s*(?:/|out of)\s*({_NUM}))?",
    re.IGNORECASE,
)
_FRACTION = re.compile(rf"({_NUM})\s*(?:/|out of)\s*({_NUM})", re.IGNORECASE)
_PERCENT = re.compile(rf"({_NUM})\s*%")
_RANGE = re.compile(rf"{_NUM}\s*(?:-|–|to)\s*{_NUM}")
_NUMBER = re.compile(_NUM)


class LLMJudgeError(RuntimeError):
    """The judge endpoint failed or replied with something that is not a score."""


class LLMJudgeScorer:
    """Scores texts by asking an LLM through any OpenAI-compatible chat-completions endpoint.

    Uses only the standard library (``urllib.request``). One request per text, sent as a
    single user message built from ``prompt_template`` (fields ``{criterion}``, ``{prompt}``,
    ``{text}``), with ``temperature`` and ``max_tokens`` set.

    The reply is parsed, in this order, as a labelled score (``"Score: 7"``,
    ``"rating 7/10"``), a fraction (``"7/10"``, ``"7 out of 10"``), a percentage (``"70%"``),
    or the first number that is not part of a range such as ``"0-10"``, read on a
    ``0..max_score`` scale (``max_score=10`` for the default template; use 1 for a template
    asking for 0-1). A value outside the scale or a
    reply without a number raises ``LLMJudgeError`` quoting the reply.

    Several criteria (a ``{name: criterion}`` mapping) are graded in separate requests and
    combined by their harmonic mean, which is 0 if any criterion scores 0: AxBench's way of
    combining concept, instruction and fluency scores (:meth:`axbench`). A text must meet
    every criterion to score well.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000/v1``. ``/chat/completions`` is
            appended (``/v1/chat/completions`` if the URL does not end in ``/v1``); a URL that
            already ends in ``/chat/completions`` is used as is.
        model: the model name sent to the server.
        api_key: sent as ``Authorization: Bearer <api_key>`` when given.
        prompt_template: the message template.
        criterion: what the judge grades, e.g. ``"The text expresses positive sentiment."``,
            or several named criteria combined by harmonic mean. Required when the template
            contains ``{criterion}``.
        max_score: the top of the scale the template asks for.
        timeout: seconds per request.
        max_retries: extra attempts after a network error, a timeout or a 5xx/429 reply
            (with exponential backoff from ``backoff`` seconds).
        max_tokens: tokens the judge may reply with.
        temperature: sampling temperature of the judge.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        prompt_template: str = DEFAULT_JUDGE_TEMPLATE,
        *,
        criterion: str | Mapping[str, str] | None = None,
        max_score: float = 10.0,
        timeout: float = 30.0,
        max_retries: int = 2,
        backoff: float = 1.0,
        max_tokens: int = 16,
        temperature: float = 0.0,
    ):
        if "{text}" not in prompt_template:
            raise ValueError("prompt_template must contain {text} (the continuation to grade).")
        if "{criterion}" in prompt_template and not criterion:
            raise ValueError(
                "This prompt_template grades a criterion: pass criterion='...' (e.g. 'The text "
                "expresses positive sentiment.') or a template without {criterion}."
            )
        if max_score <= 0:
            raise ValueError(f"max_score must be positive, got {max_score}.")
        url = base_url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url += "/chat/completions" if url.endswith("/v1") else "/v1/chat/completions"
        self.url = url
        self.model = model
        self.api_key = api_key
        self.prompt_template = prompt_template
        self.criteria = dict(criterion) if isinstance(criterion, Mapping) else {"": criterion}
        if isinstance(criterion, Mapping) and (not criterion or not all(criterion.values())):
            raise ValueError("criterion mapping needs at least one non-empty criterion.")
        self.max_score = float(max_score)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.temperature = temperature

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        _check_lengths(texts, prompts)
        return [
            self.score(text, prompt)
            for text, prompt in tqdm(
                list(zip(texts, prompts, strict=True)), desc="LLM judge", disable=None, leave=False
            )
        ]

    @classmethod
    def axbench(
        cls,
        base_url: str,
        model: str,
        concept: str,
        api_key: str | None = None,
        **options: Any,
    ) -> LLMJudgeScorer:
        """A judge of AxBench's three criteria, 0-2 each, combined by harmonic mean.

        ``concept``: is the concept present; ``instruction``: does the text follow on from
        the prompt; ``fluency``: is it fluent. ``options`` are the constructor's keyword
        options.
        """
        criteria = {
            "concept": f"The text clearly involves this concept: {concept}.",
            "instruction": "The text is a relevant, sensible continuation of the prompt.",
            "fluency": "The text is fluent, grammatical English without repetition loops.",
        }
        options = {"prompt_template": AXBENCH_JUDGE_TEMPLATE, "max_score": 2.0, **options}
        return cls(base_url, model, api_key, criterion=criteria, **options)

    def score(self, text: str, prompt: str) -> float:
        """Ask the judge about one continuation; the score in [0, 1] (the harmonic mean of
        the criteria's scores when there are several)."""
        return _harmonic_mean(list(self.score_criteria(text, prompt).values()))

    def score_criteria(self, text: str, prompt: str) -> dict[str, float]:
        """Each criterion's score in [0, 1] for one continuation, by criterion name."""
        return {
            name: self.parse_score(
                self._complete(
                    self.prompt_template.format(criterion=criterion, prompt=prompt, text=text)
                )
            )
            for name, criterion in self.criteria.items()
        }

    def parse_score(self, reply: str) -> float:
        """Turn a judge reply into a score in [0, 1] (see the class docstring)."""
        if m := _LABELLED.search(reply):
            value = float(m.group(1))
            top = float(m.group(2)) if m.group(2) else self.max_score
        elif m := _FRACTION.search(reply):
            value, top = float(m.group(1)), float(m.group(2))
        elif m := _PERCENT.search(reply):
            value, top = float(m.group(1)), 100.0
        elif m := _NUMBER.search(_RANGE.sub(" ", reply)):  # skip "0-10", "0 to 10"
            value, top = float(m.group(0)), self.max_score
        else:
            raise LLMJudgeError(f"The judge's reply has no score: {reply!r}.")
        if top <= 0 or not 0.0 <= value <= top:
            raise LLMJudgeError(
                f"The judge's score {value:g} is outside 0..{top:g} (reply {reply!r}); check "
                "max_score against the scale your prompt_template asks for."
            )
        return value / top

    def _complete(self, message: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": message}],
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:500].decode(errors="replace")
                last_error = f"HTTP {e.code} {e.reason}: {detail}"
                if e.code == 429 or e.code >= 500:
                    continue
                raise LLMJudgeError(
                    f"The judge at {self.url} refused the request: {last_error}"
                ) from e
            except TimeoutError:
                last_error = f"no reply within timeout={self.timeout:g}s"
                continue
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    last_error = f"no reply within timeout={self.timeout:g}s"
                else:
                    last_error = f"cannot reach the server ({e.reason})"
                continue
            return _reply_content(payload, self.url)
        raise LLMJudgeError(
            f"The judge at {self.url} failed after {self.max_retries + 1} attempts: {last_error}."
        )


def _reply_content(payload: bytes, url: str) -> str:
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise LLMJudgeError(
            f"{url} did not answer like an OpenAI chat-completions endpoint "
            f"(expected choices[0].message.content): {payload[:300]!r}"
        ) from e
    if not isinstance(content, str):
        raise LLMJudgeError(f"{url} replied with non-text content: {content!r}")
    return content


def _harmonic_mean(values: list[float]) -> float:
    """``n / sum(1 / v)``; 0 if any value is 0."""
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def _check_lengths(texts: list[str], prompts: list[str]) -> None:
    if len(texts) != len(prompts):
        raise ValueError(
            f"Got {len(texts)} texts but {len(prompts)} prompts; pass one prompt per text."
        )
