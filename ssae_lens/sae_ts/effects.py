"""SAE-TS step 2: the effect of steering directions on an SAE's features.

The effect of a direction ``s`` is ``y(s) = E_steered[f(x)] - E_unsteered[f(x)]``: the change
of the mean SAE feature activations ``f`` on text generated under steering (Chalnev, Siu &
Conmy 2024). Many directions share one batched generation (:func:`~ssae_lens.steer_rows`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor
from transformer_lens.utilities import get_attention_mask

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

__all__ = ["measure_effects", "side_effect_ratio"]

# 2: full model and SAE hashes, prompt token ids, checksummed chunks; 3: the precision
_CACHE_FORMAT = 3


def measure_effects(
    model: Model,
    sae: SAE,
    directions: Float[Tensor, "n d"],
    scales: float | Sequence[float] | Float[Tensor, " n"],
    *,
    prompts: Sequence[str],
    n_samples: int = 4,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    hook_name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    do_sample: bool = True,
    temperature: float = 1.0,
    steer_readout: bool = False,
    chunk_size: int = 64,
    precision: Precision | None = None,
) -> Float[Tensor, "n d_sae"]:
    """Effect of each steering direction on the mean SAE feature activations.

    Direction ``i`` is added as ``scales[i] * directions[i]`` at every position (prompt and
    each decode step) while ``n_samples`` rollouts of ``max_new_tokens`` tokens are generated
    from each prompt (:func:`generate_tokens`, KV cache). The rollouts are then read by an
    unsteered pass up to the SAE's hook: the effect of the vector through the text it makes
    the model write, as in the paper. With ``steer_readout`` the activations are instead
    those of the steered generation pass itself, which contain the vector as well (a decoder
    row then activates its own feature whatever the text). The activations are encoded, and
    the features are averaged over the **generated** positions only: the inputs
    ``prompt_len .. prompt_len + max_new_tokens - 1`` of every rollout (rollouts never stop
    early, so each has exactly ``max_new_tokens``), all rollouts weighted equally. The same
    average over unsteered rollouts is subtracted.

    Sampling uses common random numbers: rollout ``j`` of every direction and of the
    unsteered baseline draws its tokens with the same uniform numbers (a generator seeded
    with ``seed``; the global RNG is untouched). Where a vector leaves the next-token
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
        scales: one scale for all directions or one per direction.
        prompts: the prompts the rollouts continue.
        n_samples: rollouts per prompt (``> 1`` needs ``do_sample=True``).
        max_new_tokens: generated tokens per rollout.
        batch_size: rollouts per ``generate`` call.
        seed: seed of the uniform numbers the rollouts share.
        hook_name: the hook point to steer and read; default the SAE's.
        cache_dir: folder for resumable results.
        do_sample: sample (``True``) or decode greedily.
        temperature: sampling temperature.
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
    for name, value in (("n_samples", n_samples), ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}.")
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
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        generate_kwargs=dict(do_sample=do_sample, temperature=temperature),
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
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        do_sample=do_sample,
        temperature=temperature,
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


@dataclass
class _Rollouts:
    """Generates steered rollouts and averages SAE features over their generated tokens."""

    model: Model
    sae: SAE
    hook_name: str
    prompts: list[str]
    max_new_tokens: int
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
        rows = k * per
        sums = torch.zeros(k, self.sae.W_dec.shape[0], dtype=torch.float64)
        uniforms = None
        if self.generate_kwargs["do_sample"]:  # the same draws for every direction
            gen = torch.Generator().manual_seed(self.seed)
            uniforms = torch.rand(per, self.max_new_tokens, generator=gen)
        for lo in range(0, rows, self.batch_size):
            idx = torch.arange(lo, min(lo + self.batch_size, rows))
            vec = idx // per
            prompts = [self.prompts[i] for i in (idx % per).tolist()]
            steering = (
                nullcontext()
                if directions is None
                else steer_rows(self.model, directions[vec], self.hook_name, scales[vec])
            )
            with steering:
                tokens, acts = generate_tokens(
                    self.model,
                    prompts,
                    self.max_new_tokens,
                    uniforms=None if uniforms is None else uniforms[idx % per],
                    capture=self.hook_name if self.steer_readout else None,
                    precision=self.precision,
                    **self.generate_kwargs,
                )
            if acts is None:  # unsteered readout of the steered text
                acts = self._readout(tokens)
            sums.index_add_(0, vec, self._encode(acts).double())
        return (sums / per).float()

    def _readout(self, tokens: Tensor) -> Tensor:
        """Activations at the hook of the generated tokens, read by an unsteered pass."""
        lm = backend(self.model)
        mask = get_attention_mask(
            self.model.tokenizer, tokens, lm.default_prepend_bos, padding_side="left"
        )
        captured: list[Tensor] = []
        layer = hook_layer(self.hook_name)
        grab = [(self.hook_name, lambda act, hook: captured.append(act.detach()))]
        with self.model.hooks(fwd_hooks=grab), autocast(self.precision, lm.device):
            lm.run_to_layer(tokens, mask, None if layer is None else layer + 1)
        return captured[0][:, -self.max_new_tokens :]

    def _encode(self, acts: Tensor) -> Float[Tensor, "batch d_sae"]:
        acts = acts.reshape(*acts.shape[:2], -1)
        sae_param = next(self.sae.parameters())
        feats = self.sae.encode(acts.to(sae_param))
        return feats.float().mean(dim=1).cpu()


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
