"""Feature cards: what one feature of any SAELens SAE reads and writes, on a reference corpus.

A card holds the feature's top-activating contexts (a token window around each text's
most-activating token, that token marked), the histogram of its activations over every
token of the corpus, and the tokens its decoder row promotes and suppresses directly
(``W_dec[f] @ W_U``: top and bottom logits). ``print(card)`` shows it as plain text;
``card.figure()`` draws it::

    cards = feature_cards(model, sae, [8392, 15769], corpus)
    print(cards[0])
    cards[0].plot("feature_8392.png")

Activations come from :func:`~ssae_lens.activations.harvest_activations` with
``position="all"`` (every real token, BOS excluded, padding-correct, cacheable with
``cache_dir``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor
from transformer_lens import HookedTransformer

from ssae_lens._core.hooks import dictionary_hook_name
from ssae_lens._core.io import save_figure
from ssae_lens.activations import harvest_activations

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FeatureCard", "FeatureContext", "feature_cards"]

MARK = ("[[", "]]")


@dataclass(frozen=True)
class FeatureContext:
    """A window of one text around its most-activating token.

    Attributes:
        text_index: the text's index in the corpus.
        position: the token's index among the text's tokens (BOS not counted).
        activation: the feature's activation there.
        tokens: the window's tokens as strings.
        marked: index in ``tokens`` of the most-activating token.
    """

    text_index: int
    position: int
    activation: float
    tokens: list[str]
    marked: int

    def render(self) -> str:
        """The window as one line, the most-activating token in ``[[...]]``."""
        pieces = list(self.tokens)
        pieces[self.marked] = MARK[0] + pieces[self.marked] + MARK[1]
        return "".join(pieces).replace("\n", "\\n")


@dataclass(frozen=True)
class FeatureCard:
    """One feature on a corpus: top contexts, activation histogram, direct logit effects.

    Attributes:
        feature: the feature index.
        hook_name: the hook point the SAE reads.
        n_tokens: tokens in the corpus (BOS excluded).
        density: fraction of those tokens with a positive activation.
        max_activation: the largest activation.
        histogram: counts of the positive activations per bin.
        bin_edges: the ``len(histogram) + 1`` bin edges.
        contexts: the top-activating texts' windows, most active first (one per text).
        top_logits: ``(token, logit)`` of the largest entries of ``W_dec[f] @ W_U``.
        bottom_logits: ``(token, logit)`` of the smallest, most negative first.
    """

    feature: int
    hook_name: str
    n_tokens: int
    density: float
    max_activation: float
    histogram: list[int]
    bin_edges: list[float]
    contexts: list[FeatureContext]
    top_logits: list[tuple[str, float]]
    bottom_logits: list[tuple[str, float]]

    def summary(self) -> str:
        """The card as plain text for a terminal."""
        lines = [
            f"Feature {self.feature} at {self.hook_name}",
            f"active on {100 * self.density:.2f}% of {self.n_tokens:,} tokens; "
            f"max activation {self.max_activation:.4g}",
            "",
            "Top contexts (activation, window with the most active token in [[...]]):",
        ]
        lines += [f"  {c.activation:9.4g}  {c.render()}" for c in self.contexts] or ["  (none)"]
        lines += ["", "Activation histogram (positive activations):"]
        widest = max(self.histogram, default=0)
        for k, count in enumerate(self.histogram):
            bar = "#" * (round(40 * count / widest) if widest else 0)
            low, high = self.bin_edges[k], self.bin_edges[k + 1]
            lines.append(f"  [{low:8.3g}, {high:8.3g})  {count:7d} {bar}")
        if not self.histogram:
            lines.append("  (the feature never fires on this corpus)")
        lines += [
            "",
            "Top logit tokens (W_dec[f] @ W_U): " + _token_list(self.top_logits),
            "Bottom logit tokens: " + _token_list(self.bottom_logits),
        ]
        return "\n".join(lines)

    __str__ = summary

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def figure(self) -> Figure:
        """Histogram, logit bars and top contexts in one figure (not attached to pyplot)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(13, 5), layout="constrained")
        grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.6))
        hist, logits, text = (
            fig.add_subplot(grid[0, 0]),
            fig.add_subplot(grid[1, 0]),
            fig.add_subplot(grid[:, 1]),
        )
        if self.histogram:
            edges = self.bin_edges
            hist.stairs(self.histogram, edges, fill=True)
            hist.set_yscale("log")
        hist.set(
            xlabel="activation",
            ylabel="tokens",
            title=f"positive activations ({100 * self.density:.2f}% of {self.n_tokens:,} tokens)",
        )
        pairs = self.top_logits[::-1] + self.bottom_logits[::-1]
        logits.barh(
            range(len(pairs)),
            [v for _, v in pairs],
            color=["tab:blue"] * len(self.top_logits) + ["tab:red"] * len(self.bottom_logits),
        )
        logits.set_yticks(range(len(pairs)), [repr(t) for t, _ in pairs], fontsize=7)
        logits.set(xlabel="W_dec[f] @ W_U", title="direct logit effect")
        text.axis("off")
        body = "\n".join(f"{c.activation:8.3g}  {c.render()}" for c in self.contexts)
        text.text(
            0, 1, body or "(never fires)", va="top", family="monospace", fontsize=7, wrap=True
        )
        text.set_title(f"feature {self.feature} at {self.hook_name}: top contexts")
        return fig

    def plot(self, path: str | os.PathLike) -> Path:
        """Save :meth:`figure` to ``path`` (format from the suffix); returns it."""
        return save_figure(self.figure(), path)


@torch.no_grad()
def feature_cards(
    model: HookedTransformer,
    sae: SAE,
    features: Sequence[int],
    texts: Sequence[str],
    *,
    hook_name: str | None = None,
    n_contexts: int = 10,
    before: int = 12,
    after: int = 4,
    n_logits: int = 10,
    bins: int = 20,
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
) -> list[FeatureCard]:
    """Cards of ``features`` of ``sae`` on the corpus ``texts`` (one harvest for all of them).

    Args:
        model: the model the SAE reads.
        sae: any SAELens SAE.
        features: feature indices.
        texts: the reference corpus (empty texts are skipped).
        hook_name: the hook point; default ``sae.cfg.metadata.hook_name``.
        n_contexts: top contexts per card (one per text: its most-activating token).
        before: tokens shown before the marked token.
        after: tokens shown after it.
        n_logits: tokens in each of the top and bottom logit lists.
        bins: histogram bins over ``(0, max activation]``.
        batch_size: texts per forward pass.
        cache_dir: caches the harvested activations (see ``harvest_activations``).
    """
    hook = dictionary_hook_name(sae, hook_name)
    d_sae = sae.W_dec.shape[0]
    features = [int(f) for f in features]
    for f in features:
        if not 0 <= f < d_sae:
            raise IndexError(f"Feature {f} out of range for d_sae={d_sae}.")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string; wrap it: [text].")
    kept = [i for i, t in enumerate(texts) if t]
    if not kept:
        raise ValueError("The corpus has no non-empty text.")
    corpus = [texts[i] for i in kept]
    acts = harvest_activations(
        model, corpus, hook, position="all", batch_size=batch_size, cache_dir=cache_dir
    )
    token_ids = [_text_tokens(model, t) for t in corpus]
    if acts.shape[0] != sum(len(ids) for ids in token_ids):
        raise RuntimeError(
            f"Harvested {acts.shape[0]} token rows for {sum(map(len, token_ids))} tokens; the "
            "tokenization of the cards and of harvest_activations disagree."
        )
    feature_acts = _encode(sae, acts, features)  # (n_tokens, len(features))
    logits = _direct_logits(model, sae, features)  # (len(features), d_vocab)
    text_of_row = torch.repeat_interleave(torch.tensor([len(ids) for ids in token_ids]))
    starts = [0]
    for ids in token_ids:
        starts.append(starts[-1] + len(ids))
    cards = []
    for k, f in enumerate(features):
        values = feature_acts[:, k]
        contexts = []
        for row in _top_rows(values, text_of_row, n_contexts):
            text = int(text_of_row[row])
            window = _window(model, token_ids[text], row - starts[text], before, after)
            contexts.append(
                FeatureContext(kept[text], row - starts[text], float(values[row]), *window)
            )
        top = logits[k].topk(min(n_logits, logits.shape[1]))
        bottom = (-logits[k]).topk(min(n_logits, logits.shape[1]))
        counts, edges = _histogram(values, bins)
        cards.append(
            FeatureCard(
                feature=f,
                hook_name=hook,
                n_tokens=int(values.numel()),
                density=float((values > 0).double().mean()),
                max_activation=float(values.max()),
                histogram=counts,
                bin_edges=edges,
                contexts=contexts,
                top_logits=_named(model, top.indices, top.values),
                bottom_logits=_named(model, bottom.indices, -bottom.values),
            )
        )
    return cards


def _text_tokens(model: HookedTransformer, text: str) -> list[int]:
    """The text's token ids as ``harvest_activations(position="all")`` rows them (no BOS)."""
    ids = model.to_tokens(text, move_to_device=False, truncate=False)[0].tolist()
    has_bos = model.cfg.default_prepend_bos and model.tokenizer.bos_token_id is not None
    return ids[1:] if has_bos else ids


def _encode(
    sae: SAE, acts: Float[Tensor, "n d"], features: list[int], chunk: int = 4096
) -> Float[Tensor, "n k"]:
    param = sae.W_dec
    index = torch.tensor(features, device=param.device)
    out = [
        sae.encode(acts[i : i + chunk].to(param.device, param.dtype))[:, index].float().cpu()
        for i in range(0, acts.shape[0], chunk)
    ]
    return torch.cat(out)


def _direct_logits(
    model: HookedTransformer, sae: SAE, features: list[int]
) -> Float[Tensor, "k vocab"]:
    rows = sae.W_dec.detach()[features]
    return (rows.to(model.W_U.device, model.W_U.dtype) @ model.W_U).float().cpu()


def _top_rows(values: Tensor, text_of_row: Tensor, n: int) -> list[int]:
    """The row of each text's largest activation, for the ``n`` texts whose largest is
    highest and positive (earlier texts first on ties)."""
    n_texts = int(text_of_row.max()) + 1
    best = torch.full((n_texts,), -math.inf).scatter_reduce(0, text_of_row, values, "amax")
    rows = []
    for text in sorted(range(n_texts), key=lambda i: (-float(best[i]), i))[:n]:
        if float(best[text]) <= 0:
            break
        in_text = torch.nonzero(text_of_row == text).flatten()
        rows.append(int(in_text[int(values[in_text].argmax())]))
    return rows


def _window(
    model: HookedTransformer, ids: list[int], position: int, before: int, after: int
) -> tuple[list[str], int]:
    """The tokens around ``position`` as strings, and the index of ``position`` among them."""
    low, high = max(0, position - before), min(len(ids), position + after + 1)
    return [model.tokenizer.decode([i]) for i in ids[low:high]], position - low


def _histogram(values: Tensor, bins: int) -> tuple[list[int], list[float]]:
    active = values[values > 0].double()
    if active.numel() == 0:
        return [], []
    top = float(active.max())
    counts = torch.histc(active, bins=bins, min=0.0, max=top)
    edges = torch.linspace(0.0, top, bins + 1)
    return [int(c) for c in counts.tolist()], edges.tolist()


def _named(model: HookedTransformer, ids: Tensor, values: Tensor) -> list[tuple[str, float]]:
    return [
        (model.tokenizer.decode([i]), float(v))
        for i, v in zip(ids.tolist(), values.tolist(), strict=True)
    ]


def _token_list(pairs: list[tuple[str, float]]) -> str:
    return ", ".join(f"{t!r} {v:+.3g}" for t, v in pairs)
