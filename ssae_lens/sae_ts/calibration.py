"""SAE-TS step 1: per direction, the steering scale at which the LM loss rises by a target."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ssae_lens._core.backend import Model
from ssae_lens._core.cache import ChunkStore, model_fingerprint, refuse_active_hooks, tensor_digest
from ssae_lens._core.precision import Precision, autocast, resolve_precision
from ssae_lens._core.tokens import pad_token_rows
from ssae_lens.distributed import compute_chunks
from ssae_lens.metrics import next_token_nll
from ssae_lens.sae_ts._checks import check_directions
from ssae_lens.steering import steer_rows

__all__ = ["DEFAULT_LOSS_INCREASE", "calibrate_scales", "interpolate_scales"]

DEFAULT_LOSS_INCREASE = 0.5
"""The target rise of the LM loss, in nats, when neither target is given."""

_CACHE_FORMAT = 2  # 2: a sweep stops at its first crossing (NaN after it)


def calibrate_scales(
    model: Model,
    directions: Float[Tensor, "n d"],
    hook_name: str,
    *,
    reference_texts: Sequence[str],
    target_loss_increase: float | None = None,
    target_loss: float | None = None,
    scales: Sequence[float] | Tensor | None = None,
    batch_size: int = 32,
    precision: Precision | None = None,
    chunk_size: int = 16,
    cache_dir: str | os.PathLike | None = None,
) -> Float[Tensor, " n"]:
    """Per direction, the scale at which the LM loss on ``reference_texts`` reaches a target.

    The loss (mean next-token cross-entropy over all real tokens of the texts) is measured
    unsteered and with ``a * directions[i]`` added at every position of ``hook_name`` for the
    scales ``a`` of the sweep ``scales`` (default: 12 geometric steps from 0.05 to 4 times
    the mean activation norm at the hook), in increasing order. The target is
    ``target_loss`` (an absolute loss, as the reference code's 4.0 nats for Gemma-2-2B) or
    the unsteered loss plus ``target_loss_increase`` (default: plus 0.5 nats when neither is
    given). The scale is read off the curve by linear interpolation
    (:func:`interpolate_scales`, the curve starting at scale 0 with the unsteered loss).

    Many directions share each forward pass (one batch row per direction and text, each
    with its own vector: :func:`~ssae_lens.steer_rows`), and a direction's sweep stops at
    the first scale whose loss reaches the target: the larger scales cannot change its
    result. Directions whose loss never reaches it get the largest swept scale and a
    warning naming them.
    The forward passes run in ``precision`` (``None``: the model's); the losses and norms are
    computed in float32.

    The directions are processed in chunks of ``chunk_size``
    (:func:`~ssae_lens.distributed.compute_chunks`): with ``cache_dir`` each chunk's losses
    are written to a resumable :class:`~ssae_lens._core.cache.ChunkStore` keyed by the
    model's weights, the texts' tokens, the directions and the sweep; under ``torchrun``,
    inside :func:`ssae_lens.distributed.process_group`, the chunks are shared by the ranks
    and every rank returns the same scales as one process.

    Returns:
        ``(n,)`` float32 scales on the CPU.
    """
    directions = check_directions(directions)
    texts = [str(t) for t in reference_texts]
    if not texts:
        raise ValueError("calibrate_scales needs at least one reference text.")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}.")
    if target_loss is not None and target_loss_increase is not None:
        raise ValueError(
            "Give target_loss (an absolute loss) or target_loss_increase (over the unsteered "
            f"loss), not both; got {target_loss} and {target_loss_increase}."
        )
    if target_loss is None and target_loss_increase is None:
        target_loss_increase = DEFAULT_LOSS_INCREASE
    tokens, mask = _right_padded(model, texts)
    precision = resolve_precision(model, precision)
    if scales is None:
        scales = _default_scale_sweep(model, hook_name, tokens, mask, precision)
    sweep = torch.as_tensor(scales, dtype=torch.float32).flatten()
    if sweep.numel() == 0 or not bool((sweep > 0).all()) or not bool((sweep.diff() > 0).all()):
        raise ValueError(f"scales must be positive and increasing, got {sweep.tolist()}.")
    unsteered = _steered_losses(
        model, directions[:1] * 0, hook_name, tokens, mask, sweep[:1], batch_size, precision
    )
    base = float(unsteered[0, 0])
    if target_loss is not None and target_loss <= base:
        raise ValueError(
            f"target_loss={target_loss} is not above the unsteered loss on the reference texts "
            f"({base:.4g}): every scale, 0 included, reaches it. Give a higher target_loss, or "
            "target_loss_increase for a rise over the unsteered loss."
        )
    increase = target_loss - base if target_loss is not None else float(target_loss_increase)

    def chunk(items: range) -> dict[str, Tensor]:
        rows = directions[items.start : items.stop]
        losses = _steered_losses(
            model, rows, hook_name, tokens, mask, sweep, batch_size, precision, base + increase
        )
        return {"loss": losses}

    store = None
    if cache_dir is not None:
        refuse_active_hooks(model, what="calibrate_scales with cache_dir")
        settings = dict(
            format=_CACHE_FORMAT,
            model_name=model.cfg.model_name,
            model=model_fingerprint(model),
            tokens=tensor_digest(tokens, mask),
            hook_name=hook_name,
            directions=tensor_digest(directions, sweep),
            batch_size=batch_size,
            precision=precision,
            stop_at=base + increase,
        )
        store = ChunkStore(cache_dir, settings, directions.shape[0], chunk_size)
    losses, _ = compute_chunks(
        chunk, directions.shape[0], chunk_size, store=store, desc="calibrating scales"
    )
    result, reached = interpolate_scales(sweep, losses["loss"] - base, increase)
    if not bool(reached.all()):
        missing = torch.nonzero(~reached).flatten().tolist()
        goal = (
            f"reached {target_loss}"
            if target_loss is not None
            else f"rose by {target_loss_increase}"
        )
        warnings.warn(
            f"The loss never {goal} for directions {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}; they get the largest scale "
            f"{float(sweep[-1]):g}. Extend the sweep (scales=...) to calibrate them.",
            stacklevel=2,
        )
    return result


def interpolate_scales(
    scales: Float[Tensor, " k"],
    loss_increase: Float[Tensor, "n k"],
    target: float,
) -> tuple[Float[Tensor, " n"], Bool[Tensor, " n"]]:
    """Where each row of a loss-increase curve first reaches ``target``, linearly interpolated.

    The curve of row ``i`` is the points ``(0, 0)`` and ``(scales[j], loss_increase[i, j])``.
    With ``j`` the first sweep index whose increase is ``>= target`` and ``(a0, l0)`` the point
    before it, the scale is ``a0 + (target - l0) / (l_j - l0) * (scales[j] - a0)``. Rows that
    never reach the target get ``scales[-1]`` and ``reached = False``. ``NaN`` entries (scales
    not computed after the first crossing) never count as reaching it.
    """
    scales = torch.as_tensor(scales, dtype=torch.float32)
    inc = torch.as_tensor(loss_increase, dtype=torch.float32)
    n = inc.shape[0]
    xs = torch.cat([scales.new_zeros(1), scales])
    ys = torch.cat([inc.new_zeros(n, 1), inc], dim=1)
    hit = ys[:, 1:] >= target
    reached = hit.any(dim=1)
    j = torch.where(
        reached,
        hit.float().argmax(dim=1) + 1,
        torch.full_like(reached, len(xs) - 1, dtype=torch.long),
    )
    rows = torch.arange(n)
    x0, x1 = xs[j - 1], xs[j]
    y0, y1 = ys[rows, j - 1], ys[rows, j]
    frac = ((target - y0) / (y1 - y0)).clamp(0, 1)
    result = torch.where(reached, x0 + frac * (x1 - x0), xs[-1].expand(n))
    return result, reached


@torch.no_grad()
def _steered_losses(
    model: Model,
    directions: Tensor,
    hook_name: str,
    tokens: Tensor,
    mask: Tensor,
    sweep: Tensor,
    batch_size: int,
    precision: Precision,
    stop_at: float | None = None,
) -> Float[Tensor, "n k"]:
    """Mean per-token loss on the texts for every (direction, scale) pair, scale by scale.

    With ``stop_at``, a direction's larger scales are skipped (``NaN``) once its loss
    reaches ``stop_at``.
    """
    n, k, t = directions.shape[0], sweep.shape[0], tokens.shape[0]
    n_tokens = float(mask[:, 1:].sum())
    losses = torch.full((n, k), math.nan)
    active = torch.arange(n)
    for step in range(k):
        vecs, texts = active.repeat_interleave(t), torch.arange(t).repeat(len(active))
        nll_sum = torch.zeros(len(active), dtype=torch.float64)
        for lo in range(0, len(vecs), batch_size):
            sel = slice(lo, lo + batch_size)
            vec, txt = vecs[sel], texts[sel]
            steering = steer_rows(model, directions[vec], hook_name, sweep[step].expand(len(vec)))
            with steering, autocast(precision, model.cfg.device):
                logits = model(tokens[txt], attention_mask=mask[txt])
            nll = next_token_nll(logits, tokens[txt])
            nll = (nll * mask[txt][:, 1:]).sum(-1).double().cpu()
            nll_sum.index_add_(0, torch.arange(lo, lo + len(vec)) // t, nll)
        losses[active, step] = (nll_sum / n_tokens).float()
        if stop_at is not None:
            active = active[losses[active, step] < stop_at]
        if len(active) == 0:
            break
    return losses


def _right_padded(model: Model, texts: list[str]) -> tuple[Tensor, Tensor]:
    rows = [model.to_tokens(text)[0] for text in texts]
    tokens, mask = pad_token_rows(
        rows, side="right", pad_id=model.tokenizer.pad_token_id, device=rows[0].device
    )
    return tokens, mask.long()


@torch.no_grad()
def _default_scale_sweep(
    model: Model, hook_name: str, tokens: Tensor, mask: Tensor, precision: Precision
) -> Tensor:
    with autocast(precision, tokens.device):
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=hook_name)
    acts = cache[hook_name].reshape(*tokens.shape, -1).float()
    norm = float(acts.norm(dim=-1)[mask.bool()].mean())
    return norm * torch.logspace(math.log10(0.05), math.log10(4.0), 12)
