"""SAE-TS step 2: the effect of steering directions on an SAE's features.

The effect of a direction ``s`` is ``y(s) = E_steered[f(x)] - E_unsteered[f(x)]``: the change
of the mean SAE feature activations ``f`` on text generated under steering (Chalnev, Siu &
Conmy 2024). Many directions share one batched generation (:func:`~ssae_lens.steer_rows`).

The defaults are the protocol of the reference code: :data:`EFFECT_PROMPTS` (three BOS-only
prompts and eleven short ones) x 64 sampled rollouts, each 32 tokens long in total (prompt
included, so a BOS-only rollout generates 31 tokens and a 4-token prompt 28), top-50
sampling at temperature 1, and the features averaged over every position of the rollouts.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

from ssae_lens._core.backend import Model, backend
from ssae_lens._core.cache import (
    ChunkStore,
    dictionary_fingerprint,
    model_fingerprint,
    refuse_active_hooks,
    tensor_digest,
)
from ssae_lens._core.hooks import check_hook_names, dictionary_hook_name, hook_layer
from ssae_lens._core.precision import Precision, autocast, resolve_precision
from ssae_lens.distributed import compute_chunks
from ssae_lens.generation import generate_tokens
from ssae_lens.sae_ts._checks import check_directions, per_row_scales
from ssae_lens.sae_ts.vectors import Target, target_tensor
from ssae_lens.steering import steer_rows

__all__ = ["EFFECT_PROMPTS", "measure_effects", "side_effect_ratio"]

# 2: full model and SAE hashes, prompt token ids, checksummed chunks; 3: the precision;
# 4: total length, top-k / top-p, positions, steered readout by a steered pass
_CACHE_FORMAT = 4

EFFECT_PROMPTS: tuple[str, ...] = (
    "",
    "",
    "",
    "I think",
    "Yesterday morning",
    "The report says",
    "Once upon a time",
    "Dear friends,",
    "How to",
    "In the year",
    "She opened the door and",
    "Scientists have found",
    "My favourite",
    "The price of",
)
"""Default effect prompts: 3 BOS-only (the empty prompt is the BOS token alone) and 11 short
openings of different genres, as many of each kind as the reference's protocol uses."""

Positions = Literal["all", "generated"]

DEFAULT_TOTAL_TOKENS = 32
"""Rollout length, prompt included, when neither ``total_tokens`` nor ``max_new_tokens`` is
given (the reference's)."""


def measure_effects(
    model: Model,
    sae: SAE,
    directions: Float[Tensor, "n d"],
    scales: float | Sequence[float] | Float[Tensor, " n"],
    *,
    prompts: Sequence[str] = EFFECT_PROMPTS,
    n_samples: int = 64,
    total_tokens: int | None = None,
    max_new_tokens: int | None = None,
    positions: Positions = "all",
    batch_size: int = 64,
    seed: int = 0,
    hook_name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = None,
    steer_readout: bool = False,
    chunk_size: int = 64,
    precision: Precision | None = None,
) -> Float[Tensor, "n d_sae"]:
    """Effect of each steering direction on the mean SAE feature activations.

    Direction ``i`` is added as ``scales[i] * directions[i]`` at every position (prompt and
    each decode step) while ``n_samples`` rollouts are generated from each prompt
    (:func:`generate_tokens`, KV cache). A rollout is ``total_tokens`` long in all, prompt
    included (default 32, as in the reference; an empty prompt is the BOS token alone), so
    prompts of different lengths generate different numbers of tokens; rollouts of prompts
    with the same token count share batches, so no row is padded. With ``max_new_tokens``
    instead, every rollout generates that many tokens. Rollouts never stop early.

    The rollouts are then read by an unsteered pass up to the SAE's hook: the effect of the
    vector through the text it makes the model write, as in the paper. With
    ``steer_readout`` that pass is steered as the generation was, so the activations
    contain the vector as well (a decoder row then activates its own feature whatever the
    text).

    **Normalisation.** The activations are encoded by the SAE and averaged, per rollout,
    over ``positions``: ``"all"`` (default, as the reference) every position of the rollout,
    BOS and prompt included; ``"generated"`` the generated tokens only (as inputs, i.e. the
    positions ``prompt_len .. prompt_len + n_new - 1``). The rollouts are then averaged with
    equal weights (with ``total_tokens`` every rollout has the same length, so this is the
    mean over all their tokens), and the same mean over unsteered rollouts is subtracted.
    The effect is in the SAE's activation units, for the direction at its own scale: it is
    not divided by the scale nor standardised per feature. With the unsteered readout the
    BOS and prompt positions read the same activations with and without steering, so under
    ``"all"`` they add nothing to the difference and scale a prompt's contribution by
    ``n_new / total_tokens``.

    Sampling (top-``k`` 50 at temperature 1 by default, as the reference's TransformerLens
    sampling; ``top_p`` optional) uses common random numbers: rollout ``j`` of every direction
    and of the unsteered baseline draws its tokens with the same uniform numbers (a generator
    seeded with ``seed``; the global RNG is untouched). Where a vector leaves the next-token
    distribution unchanged it leaves the token unchanged, so the difference of the two means
    is far less noisy than with independent draws, and the result does not depend on
    ``batch_size``.

    With ``cache_dir``, the unsteered means and each chunk of ``chunk_size`` directions are
    written as checksummed safetensors files (a :class:`~ssae_lens._core.cache.ChunkStore`)
    beside a manifest of the settings, which cover the model's and the SAE's weights in full:
    an interrupted run resumes at the first missing chunk, a damaged chunk is recomputed with
    a warning, and a rerun with other settings raises. Caching while hooks are active on the
    model or the SAE (e.g. inside ``steer(...)``) raises.

    Under ``torchrun``, inside :func:`ssae_lens.distributed.process_group`, the chunks of
    directions are shared by the ranks (:func:`~ssae_lens.distributed.compute_chunks`) and
    every rank returns the full result. Each chunk is computed as in one process and the
    rollouts' random numbers are keyed by rollout, not by rank, so the effects do not depend
    on the number of processes.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        sae: a SAELens ``SAE`` reading the hook point (``sae.cfg.metadata.hook_name``).
        directions: the steering directions, one per row.
        scales: one scale for all directions or one per direction (e.g. each direction's
            own, from :func:`~ssae_lens.sae_ts.calibrate_scales`).
        prompts: the prompts the rollouts continue (repeats count as separate prompts).
        n_samples: rollouts per prompt (``> 1`` needs ``do_sample=True``).
        total_tokens: tokens per rollout, prompt included (default 32 unless
            ``max_new_tokens`` is given).
        max_new_tokens: generated tokens per rollout, whatever the prompt's length (instead
            of ``total_tokens``).
        positions: the positions the features are averaged over, ``"all"`` or
            ``"generated"``.
        batch_size: rollouts per ``generate`` call.
        seed: seed of the uniform numbers the rollouts share.
        hook_name: the hook point to steer and read; default the SAE's.
        cache_dir: folder for resumable results.
        do_sample: sample (``True``) or decode greedily.
        temperature: sampling temperature.
        top_k: sample among the ``top_k`` most likely tokens (``None``: all).
        top_p: sample from the smallest set of most likely tokens with mass ``>= top_p``.
        steer_readout: keep the steering on while reading the features of the rollouts.
        chunk_size: directions per cache file.
        precision: the precision of the model's forward passes (generation and readout;
            ``None``: the model's); the SAE encodes in its own dtype, and the effects are
            float32 whatever the precision.

    Returns:
        ``(n, d_sae)`` float32 effects on the CPU.
    """
    hook_name = _effect_hook(model, sae, hook_name)
    precision = resolve_precision(model, precision)
    directions = check_directions(directions)
    n = directions.shape[0]
    scale_t = per_row_scales(scales, n)
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError("measure_effects needs at least one prompt.")
    if total_tokens is not None and max_new_tokens is not None:
        raise ValueError(
            "Give total_tokens (rollout length, prompt included) or max_new_tokens (generated "
            f"tokens per rollout), not both; got {total_tokens} and {max_new_tokens}."
        )
    if total_tokens is None and max_new_tokens is None:
        total_tokens = DEFAULT_TOTAL_TOKENS
    for name, value in (
        ("n_samples", n_samples),
        ("total_tokens", total_tokens),
        ("max_new_tokens", max_new_tokens),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}.")
    if positions not in ("all", "generated"):
        raise ValueError(f"positions must be 'all' or 'generated', got {positions!r}.")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}.")
    if n_samples > 1 and not do_sample:
        raise ValueError(
            f"Greedy decoding makes all {n_samples} samples identical: pass do_sample=True "
            "or n_samples=1."
        )
    rollout = _Rollouts(
        model=model,
        sae=sae,
        hook_name=hook_name,
        prompts=[p for p in prompts for _ in range(n_samples)],
        lengths=rollout_lengths(model, prompts, total_tokens, max_new_tokens),
        positions=positions,
        batch_size=batch_size,
        seed=seed,
        generate_kwargs=dict(
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p
        ),
        steer_readout=steer_readout,
        precision=precision,
    )
    settings = dict(
        format=_CACHE_FORMAT,
        model_name=model.cfg.model_name,
        model=model_fingerprint(model),
        prompt_tokens=_prompt_tokens_digest(model, prompts),
        pad_token_id=model.tokenizer.pad_token_id,
        hook_name=hook_name,
        d_sae=int(sae.W_dec.shape[0]),
        sae=dictionary_fingerprint(sae),
        directions_checksum=tensor_digest(directions, scale_t),
        n=n,
        prompts=prompts,
        n_samples=n_samples,
        total_tokens=total_tokens,
        max_new_tokens=max_new_tokens,
        positions=positions,
        batch_size=batch_size,
        seed=seed,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        steer_readout=steer_readout,
        precision=precision,
        sampling="common uniforms per rollout",
    )
    store = None
    if cache_dir is not None:
        refuse_active_hooks(model, sae, what="measure_effects with cache_dir")
        store = ChunkStore(cache_dir, settings, n, chunk_size)

    def chunk(items: range) -> dict[str, Tensor]:
        rows = slice(items.start, items.stop)
        return {"mean_features": rollout.mean_features(directions[rows], scale_t[rows])}

    def baseline() -> dict[str, Tensor]:
        return {"mean_features": rollout.mean_features(None, None)}

    means, named = compute_chunks(
        chunk, n, chunk_size, store=store, entries={"baseline": baseline}, desc="SAE-TS effects"
    )
    return means["mean_features"] - named["baseline"]["mean_features"][0]


def rollout_lengths(
    model: Model, prompts: list[str], total_tokens: int | None, max_new_tokens: int | None
) -> dict[str, tuple[int, int]]:
    """Per prompt, its token count and the tokens its rollouts generate: ``total_tokens``
    minus the prompt's length, or ``max_new_tokens`` (``total_tokens`` is
    :data:`DEFAULT_TOTAL_TOKENS` when both are ``None``, as in :func:`measure_effects`)."""
    lm = backend(model)
    lengths = {}
    for prompt in dict.fromkeys(prompts):
        length = len(lm.token_ids(prompt))
        if max_new_tokens is not None:
            lengths[prompt] = (length, max_new_tokens)
            continue
        total_tokens = total_tokens or DEFAULT_TOTAL_TOKENS
        if length >= total_tokens:
            raise ValueError(
                f"The prompt {prompt!r} has {length} tokens, so total_tokens={total_tokens} "
                "leaves none to generate: raise total_tokens or shorten the prompt."
            )
        lengths[prompt] = (length, total_tokens - length)
    return lengths


@dataclass
class _Rollouts:
    """Generates steered rollouts and averages SAE features over their positions."""

    model: Model
    sae: SAE
    hook_name: str
    prompts: list[str]  # one per rollout (each prompt repeated n_samples times)
    lengths: dict[str, tuple[int, int]]  # per prompt: (its tokens, tokens generated)
    positions: Positions
    batch_size: int
    seed: int
    generate_kwargs: dict[str, Any]
    steer_readout: bool
    precision: Precision

    @torch.no_grad()
    def mean_features(
        self, directions: Tensor | None, scales: Tensor | None
    ) -> Float[Tensor, "k d_sae"]:
        """Mean features per direction (one unsteered row when ``directions`` is None)."""
        per = len(self.prompts)
        k = 1 if directions is None else directions.shape[0]
        sums = torch.zeros(k, self.sae.W_dec.shape[0], dtype=torch.float64)
        shape = torch.tensor([self.lengths[p] for p in self.prompts])  # (per, 2)
        uniforms = None
        if self.generate_kwargs["do_sample"]:  # the same draws for every direction
            gen = torch.Generator().manual_seed(self.seed)
            uniforms = torch.rand(per, int(shape[:, 1].max()), generator=gen)
        # Rollouts of prompts of the same length are batched together: no row is padded.
        for n_prompt, n_new in sorted(set(map(tuple, shape.tolist()))):
            members = torch.nonzero(shape[:, 0] == n_prompt).flatten()
            rows = k * len(members)
            for lo in range(0, rows, self.batch_size):
                idx = torch.arange(lo, min(lo + self.batch_size, rows))
                vec, roll = idx // len(members), members[idx % len(members)]

                def steering(vec: Tensor = vec) -> Any:
                    if directions is None:
                        return nullcontext()
                    return steer_rows(self.model, directions[vec], self.hook_name, scales[vec])

                with steering():
                    tokens, _ = generate_tokens(
                        self.model,
                        [self.prompts[i] for i in roll.tolist()],
                        n_new,
                        uniforms=None if uniforms is None else uniforms[roll, :n_new],
                        precision=self.precision,
                        **self.generate_kwargs,
                    )
                with steering() if self.steer_readout else nullcontext():
                    feats = self._features(tokens)
                if self.positions == "generated":
                    feats = feats[:, -n_new:]
                sums.index_add_(0, vec, feats.mean(dim=1).double())
        return (sums / per).float()

    def _features(self, tokens: Tensor) -> Float[Tensor, "batch pos d_sae"]:
        """SAE features at every position of unpadded rollouts, read by a pass up to the hook."""
        captured: list[Tensor] = []
        layer = hook_layer(self.hook_name)
        grab = [(self.hook_name, lambda act, hook: captured.append(act.detach()))]
        with self.model.hooks(fwd_hooks=grab), autocast(self.precision, tokens.device):
            backend(self.model).run_to_layer(
                tokens, torch.ones_like(tokens), None if layer is None else layer + 1
            )
        acts = captured[0].reshape(*tokens.shape, -1)
        sae_param = next(self.sae.parameters())
        return self.sae.encode(acts.to(sae_param)).float().cpu()


def side_effect_ratio(effect: Float[Tensor, " d_sae"], targets: Target) -> float:
    """Mean absolute change of the non-target features per unit change of the targets.

    With weights ``w_j`` on the target features ``T`` (1 for a list of features), the
    target change is ``sum_j w_j y_j / sum_j |w_j|`` (a negative weight asks for a
    decrease) and the side effect is ``mean_{i not in T} |y_i|``. Returns their ratio
    (lower is better), ``inf`` when the targets did not move the intended way.
    """
    y = torch.as_tensor(effect).detach().double().flatten().cpu()
    t = target_tensor(targets, y.shape[0]).double()
    chosen = t != 0
    if bool(chosen.all()):
        raise ValueError("Every feature is a target: there are no side effects to measure.")
    change = float((t * y).sum() / t.abs().sum())
    side = float(y[~chosen].abs().mean())
    return side / change if change > 0 else math.inf


def _effect_hook(model: Model, sae: SAE, hook_name: str | None) -> str:
    hook = dictionary_hook_name(sae, hook_name)
    check_hook_names(model, hook)
    return hook


def _prompt_tokens_digest(model: Model, prompts: list[str]) -> str:
    """The sha256 of the token ids the rollouts start from (the tokenizer is not in the
    model's fingerprint)."""
    digest = hashlib.sha256()
    for prompt in dict.fromkeys(prompts):
        digest.update(str(model.to_tokens(prompt)[0].tolist()).encode())
    return digest.hexdigest()
