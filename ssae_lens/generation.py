"""The one batched generation path: KV-cache decoding and sampling with shared random numbers.

Evaluation sweeps, SAE-TS effect rollouts, the reference corpus, the CLI and the demo all
generate through :func:`generate_tokens` (or :func:`generate_texts`, its text form), so a
steering hook sees the same forward passes everywhere: the prompt in one pass, then one pass
per new token with the KV cache.

Sampling inverts the CDF of the (optionally top-k / top-p filtered, temperature-scaled)
next-token distribution with one uniform number per row and token (:func:`sample_tokens`).
Rows given the same uniform numbers draw the same token wherever their distributions agree,
so the difference between a steered and an unsteered rollout is the steering, not the
sampling noise (common random numbers).

``precision`` (:mod:`ssae_lens._core.precision`; default: the model's) is the precision of the
forward passes; the next-token distribution is computed from the logits in float32, and
captured activations are returned in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ssae_lens._core.backend import Model, backend
from ssae_lens._core.finite import all_finite
from ssae_lens._core.hooks import hook_layer
from ssae_lens._core.precision import Precision, autocast, resolve_precision
from ssae_lens._core.tokens import pad_token_rows

__all__ = ["generate_texts", "generate_tokens", "greedy_tokens", "sample_tokens"]

# Values per chunk of rows when sampling (16 MB in float32), so that the passes over each
# row stay in cache.
_ROW_CHUNK_VALUES = 2**22


def sample_tokens(
    logits: Float[Tensor, "batch vocab"],
    uniform: Float[Tensor, " batch"],
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Int[Tensor, " batch"]:
    """One token per row by inverting the CDF of the filtered next-token distribution.

    The distribution is ``softmax(logits / temperature)`` restricted to the ``top_k`` most
    likely tokens and then to the smallest set of them whose probability reaches ``top_p``
    (the most likely token always stays), renormalised. Tokens keep their vocabulary order
    in the CDF, so token ``i`` is drawn when ``uniform`` falls in
    ``[P(tokens < i), P(tokens <= i))`` of the filtered distribution: the same uniform number
    gives the same token for two rows whose filtered distributions agree up to that token.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}.")
    if uniform.shape != logits.shape[:1]:
        raise ValueError(
            f"uniform needs one number per row ({logits.shape[0]}), got {tuple(uniform.shape)}."
        )
    if top_k is not None and top_k < logits.shape[-1]:
        # In the logits' own dtype: the up-cast and the division by a positive temperature
        # keep their order, and only k values are then converted.
        values, candidates = logits.topk(top_k, dim=-1)
        # Back to vocabulary order, so the CDF is ordered by token id as without top_k.
        candidates, order = candidates.sort(dim=-1)
        values = values.gather(-1, order)
    else:
        values, candidates = logits, None
    step = max(1, _ROW_CHUNK_VALUES // values.shape[-1])
    index = torch.cat(
        [
            _draw(rows, u, temperature, top_p)
            for rows, u in zip(values.split(step), uniform.split(step), strict=True)
        ]
    )
    return index if candidates is None else candidates.gather(-1, index[:, None])[:, 0]


def _draw(
    values: Float[Tensor, "batch vocab"],
    uniform: Float[Tensor, " batch"],
    temperature: float,
    top_p: float | None,
) -> Int[Tensor, " batch"]:
    """:func:`sample_tokens` after top-k: the index into ``values`` of each row's draw."""
    # Unnormalised probabilities exp((x - max) / T) in float32, in one buffer: the CDF is
    # inverted at uniform x total mass, so nothing needs normalising.
    weights = values.float()  # a copy unless the values are already float32
    shift = weights.max(-1, keepdim=True).values
    weights = weights - shift if weights is values else weights.sub_(shift)
    if temperature != 1.0:
        weights.div_(temperature)
    weights.exp_()
    if top_p is not None and top_p < 1:
        probs = weights / weights.sum(-1, keepdim=True)
        ranked, rank_order = probs.sort(dim=-1, descending=True)
        before = ranked.cumsum(-1) - ranked  # mass of strictly more likely tokens
        keep_ranked = before < top_p
        keep = torch.zeros_like(keep_ranked).scatter(-1, rank_order, keep_ranked)
        weights = torch.where(keep, probs, 0.0)
    return _invert_cdf(weights, uniform)


def _invert_cdf(
    weights: Float[Tensor, "batch vocab"], uniform: Float[Tensor, " batch"]
) -> Int[Tensor, " batch"]:
    """Per row, the first token whose cumulative weight exceeds ``uniform`` x the row's total;
    where rounding puts that at the total, the last token with positive weight.

    Two levels instead of a cumulative sum over the whole vocabulary (a slow sequential scan
    on CPU): cumulative sums of blocks of about sqrt(vocab) tokens locate each row's block,
    then the cumulative sum of that block alone locates the token.
    """
    n_rows, vocab = weights.shape
    width = math.isqrt(vocab)  # tokens per block; the last block may be shorter
    n_whole = vocab // width
    n_blocks = -(-vocab // width)
    sums = weights[:, : n_whole * width].reshape(n_rows, n_whole, width).sum(-1)
    if n_whole < n_blocks:
        sums = torch.cat([sums, weights[:, n_whole * width :].sum(-1, keepdim=True)], dim=-1)
    cumulative = sums.cumsum(-1)
    target = uniform.to(cumulative)[:, None] * cumulative[:, -1:]
    block = torch.searchsorted(cumulative, target, right=True)
    # At the total mass: the last block with positive weight.
    block = torch.where(block == n_blocks, _last_positive(sums), block)
    start = torch.where(block > 0, cumulative.gather(-1, (block - 1).clamp(min=0)), 0.0)
    columns = block * width + torch.arange(width, device=weights.device)
    inside = columns < vocab
    local = torch.where(inside, weights.gather(-1, columns.clamp(max=vocab - 1)), 0.0)
    offset = torch.searchsorted(local.cumsum(-1), target - start, right=True)
    # Where rounding puts the target past the block's own sum: its last token with weight.
    offset = torch.where(offset == width, _last_positive(local), offset)
    return (block * width + offset)[:, 0]


def _last_positive(x: Float[Tensor, "batch n"]) -> Int[Tensor, "batch 1"]:
    """Per row, the index of the last positive entry."""
    return x.shape[-1] - 1 - (x.flip(-1) > 0).int().argmax(-1, keepdim=True)


def greedy_tokens(logits: Float[Tensor, "batch vocab"]) -> Int[Tensor, " batch"]:
    """The most likely token of each row; the first of tied maxima, as ``argmax``."""
    if logits.dtype == torch.float32:
        return logits.argmax(-1)
    return logits.max(-1).indices  # same answer; on CPU, argmax of bfloat16 is ~3x slower


@torch.no_grad()
def generate_tokens(
    model: Model,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    uniforms: Float[Tensor, "batch new"] | None = None,
    capture: str | None = None,
    precision: Precision | None = None,
) -> tuple[Int[Tensor, "batch width"], Float[Tensor, "batch new d"] | None]:
    """Batched generation with a KV cache; a lean equivalent of ``model.generate``.

    The prompts are left-padded; each step runs only the new token through the blocks and
    computes logits for the last position only (``ln_final`` then ``resid @ W_U + b_U`` on a
    ``HookedTransformer``, ``logits_to_keep=1`` on a ``TransformerBridge``; see
    :mod:`ssae_lens._core.backend`). Greedy decoding returns the same tokens as
    ``model.generate(prompts, max_new_tokens, do_sample=False, stop_at_eos=False,
    padding_side="left", return_type="tokens")``.
    Steering hooks active on the model (``steer``, ``steer_rows``) apply on the prompt and on
    every decode step. Never stops early (cut at EOS afterwards: :func:`generate_texts`).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer. A bridge
            needs a transformers version whose KV cache it fills (below 5.24 with
            TransformerLens 3.9); otherwise this raises ``RuntimeError``.
        prompts: the prompts, one per batch row. An empty prompt is the BOS token alone
            (for a model that prepends BOS).
        max_new_tokens: tokens to generate per row.
        do_sample: sample (else greedy: the most likely token).
        temperature: sampling temperature.
        top_k: sample among the ``top_k`` most likely tokens only.
        top_p: sample from the smallest set of most likely tokens with mass ``>= top_p``.
        seed: seeds the generator of the sampling's uniform numbers (the global RNG is
            never used).
        uniforms: the uniform numbers themselves, ``uniforms[i, t]`` for token ``t`` of row
            ``i`` (instead of ``seed``): rows given the same numbers sample the same
            tokens wherever their next-token distributions agree (common random numbers).
        capture: a hook point; if given, its activations at the inputs
            ``prompt_len .. prompt_len + max_new_tokens - 1`` (the generated tokens, as the
            next forward pass sees them, after any steering hook) are also returned.
        precision: ``"float32"``, ``"bf16-autocast"`` or ``"bfloat16"``; ``None``: the model's.

    Returns:
        ``(tokens, acts)``: the left-padded prompts followed by the new tokens, and the
        captured ``(batch, max_new_tokens, d)`` float32 activations (``None`` without
        ``capture``).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens}.")
    if not prompts:
        raise ValueError("No prompts to continue.")
    lm = backend(model)
    device = lm.device
    precision = resolve_precision(model, precision)
    if uniforms is None and do_sample:
        generator = torch.Generator().manual_seed(seed)
        uniforms = torch.rand(len(prompts), max_new_tokens, generator=generator)
    if uniforms is not None and tuple(uniforms.shape) != (len(prompts), max_new_tokens):
        raise ValueError(
            f"uniforms must have shape (len(prompts), max_new_tokens) = "
            f"({len(prompts)}, {max_new_tokens}), got {tuple(uniforms.shape)}."
        )
    tokenized = {p: lm.token_ids(p) for p in dict.fromkeys(prompts)}  # rows repeat prompts
    empty = [p for p, ids in tokenized.items() if not ids]
    if empty:
        raise ValueError(
            f"The prompt {empty[0]!r} has no tokens: the model prepends no BOS token "
            "(default_prepend_bos is False), so an empty prompt has nothing to continue. "
            "Give a non-empty prompt, or a model that prepends BOS."
        )
    longest = max(tokenized.values(), key=len)
    if len(longest) + max_new_tokens > lm.n_ctx:
        raise ValueError(
            f"A prompt of {len(longest)} tokens plus max_new_tokens={max_new_tokens} exceeds "
            f"the model's context of {lm.n_ctx} tokens (n_ctx); shorten the prompt or "
            "generate fewer tokens."
        )
    tokens, mask = pad_token_rows(
        [tokenized[p] for p in prompts],
        side="left",
        pad_id=model.tokenizer.pad_token_id,
        device=device,
    )
    mask = mask.long()
    layer = None if capture is None else hook_layer(capture)
    captured: list[Tensor] = []

    def grab(act: Tensor, hook: Any) -> None:
        captured.append(act.detach()[:, -1:].float())

    hooks = [] if capture is None else [(capture, grab)]
    with model.hooks(fwd_hooks=hooks), autocast(precision, device):
        state = lm.prefill(tokens, mask)
        captured.clear()  # the prompt's own activations are not wanted
        new = []
        for step in range(max_new_tokens):
            logits = state.logits
            if not all_finite(logits):
                raise FloatingPointError(
                    "The logits became NaN/inf during generation (steering scale too large?)."
                )
            if uniforms is None:
                nxt = greedy_tokens(logits)
            else:
                nxt = sample_tokens(
                    logits,
                    uniforms[:, step].to(device),
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                )
            new.append(nxt)
            last = step == max_new_tokens - 1
            if last and capture is None:
                break
            lm.decode(state, nxt, stop_at_layer=layer + 1 if last and layer is not None else None)
    out = torch.cat([tokens, torch.stack(new, dim=1)], dim=1)
    acts = torch.cat(captured, dim=1) if capture is not None else None
    return out, acts


def generate_texts(
    model: Model,
    prompts: Sequence[str],
    max_new_tokens: int,
    **options: Any,
) -> list[str]:
    """The continuation of each prompt as text (cut at the first EOS, prompt excluded).

    ``options`` are those of :func:`generate_tokens` (default: sampling; pass
    ``do_sample=False`` for greedy text).
    """
    out, _ = generate_tokens(model, prompts, max_new_tokens, **options)
    eos = model.tokenizer.eos_token_id
    texts = []
    for row in out[:, out.shape[1] - max_new_tokens :].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(model.tokenizer.decode(row, skip_special_tokens=True))
    return texts
