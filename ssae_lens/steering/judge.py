"""An LLM as judge: scores steered texts through any OpenAI-compatible chat-completions endpoint.

One criterion, or several graded separately and combined by harmonic mean as AxBench does
(:meth:`LLMJudgeScorer.axbench`). Uses only the standard library (``urllib.request``).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from ssae_lens.steering.scorers import check_lengths

__all__ = ["AXBENCH_JUDGE_TEMPLATE", "DEFAULT_JUDGE_TEMPLATE", "LLMJudgeError", "LLMJudgeScorer"]


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
        check_lengths(texts, prompts)
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
