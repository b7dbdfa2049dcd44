"""A reference SAELens dictionary (SAE) for a model, trained offline and cached.

SAE-TS and the steering diagnostics need an ordinary SAE at the hook they steer. Pretrained
SAELens releases live on the Hugging Face Hub, which is out of reach offline, so
:func:`train_reference_sae` trains one with SAELens's own ``SAETrainer``.

Why ``SAETrainer`` and not ``LanguageModelSAETrainingRunner``: the runner streams tokens from
a Hub dataset through its ``ActivationsStore``; offline there is none. ``SAETrainer`` is the
runner's inner loop (same losses, dead-feature tracking, learning-rate schedule, activation
norm scaling folded into the weights at the end) and accepts any iterator of ``(batch, d_in)``
activations, which here come from :func:`ssae_lens.activations.harvest_activations`
(``position="all"``, BOS excluded).

The default corpus (:func:`reference_corpus`) needs no download:

- text the model generates itself (sampled continuations of a fixed, seeded set of short
  prompts): on-distribution for the model, varied in topic;
- the package's templated sentences (all four attributes, both poles) and its English/French
  word list: the concepts the steering benchmarks target.

The trained SAE is saved with ``SAE.save_model`` in ``<cache_root()>/saes/<key>``, a verified
cache folder (:func:`ssae_lens._core.cache.write_cached_folder`: written atomically, each
file's sha256 checked on read, a damaged folder retrained with a warning), and loaded with
``SAE.load_from_disk`` on the next call with the same settings, which include a full hash of the
model's weights. Any other SAELens SAE can be used wherever this one is.

::

    sae = train_reference_sae("gemma-3-270m", "blocks.6.hook_resid_post", d_sae=2048)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from sae_lens import SAE
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from torch import Tensor
from tqdm.auto import tqdm

from ssae_lens._core.backend import Model
from ssae_lens._core.cache import (
    is_cached,
    model_fingerprint,
    refuse_active_hooks,
    write_cached_folder,
)
from ssae_lens._core.hooks import check_hook_names
from ssae_lens._core.precision import Precision, resolve_precision
from ssae_lens._core.rng import scoped_seed
from ssae_lens.activations import harvest_activations
from ssae_lens.data.builtin import SENTENCE_ATTRIBUTES, language_pairs, sentence_pairs
from ssae_lens.generation import generate_tokens
from ssae_lens.models import cache_root, load_model
from ssae_lens.ssae.training import ShuffledBatches

__all__ = ["CORPUS_PROMPTS", "reference_corpus", "train_reference_sae", "train_sae"]

Architecture = Literal["topk", "standard"]

CORPUS_PROMPTS: tuple[str, ...] = (
    "The history of the city",
    "In the morning, she",
    "Scientists have discovered",
    "The recipe calls for",
    "He opened the letter and",
    "The best way to learn",
    "Yesterday the team",
    "The weather in spring",
    "Once upon a time,",
    "The new law will",
    "My favourite book is",
    "The company announced",
    "La ville de Paris",
    "The football match",
    "To install the software,",
    "The museum exhibits",
)
"""Prompts whose sampled continuations make up the generated part of the default corpus."""

# 2: b_dec at the activation mean; 3: corpus sampled with shared uniforms; 4: the precision
_FORMAT_VERSION = 4


def reference_corpus(
    model: Model,
    *,
    n_generated: int = 128,
    generated_tokens: int = 64,
    n_sentences: int = 2_000,
    seed: int = 0,
    batch_size: int = 16,
    precision: Precision | None = None,
) -> list[str]:
    """An offline text corpus: model rollouts plus the package's sentences and words.

    Args:
        model: the model that writes the generated part.
        n_generated: sampled continuations (temperature 1) of :data:`CORPUS_PROMPTS`, cycled.
        generated_tokens: tokens per continuation.
        n_sentences: templated sentence pairs (both sides kept) from
            :func:`ssae_lens.data.builtin.sentence_pairs` over all attributes.
        seed: seed of the sampling and of the sentence draw.
        batch_size: continuations per ``generate`` call.
        precision: the precision of the generation (``None``: the model's).

    Returns:
        The texts: generations (prompt included), sentences, then English and French words.
    """
    prompts = [CORPUS_PROMPTS[i % len(CORPUS_PROMPTS)] for i in range(n_generated)]
    generated: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for b, start in enumerate(tqdm(starts, desc="corpus rollouts", disable=None)):
        chunk = prompts[start : start + batch_size]
        out, _ = generate_tokens(model, chunk, generated_tokens, seed=seed + b, precision=precision)
        width = out.shape[1] - generated_tokens
        generated += model.to_string(out[:, width:])
    generated = [p + t for p, t in zip(prompts, generated, strict=True)]
    pairs = sentence_pairs(n=n_sentences, seed=seed, attributes=list(SENTENCE_ATTRIBUTES))
    words = language_pairs()
    return (
        generated
        + list(pairs.sources)
        + list(pairs.targets)
        + list(words.sources)
        + list(words.targets)
    )


def train_reference_sae(
    model_name: str | Model = "gemma-3-270m",
    hook_name: str = "blocks.6.hook_resid_post",
    *,
    d_sae: int = 2048,
    architecture: Architecture = "topk",
    k: int = 32,
    l1_coefficient: float = 5.0,
    n_tokens: int = 300_000,
    batch_size: int = 512,
    lr: float = 1e-3,
    texts: Sequence[str] | None = None,
    corpus_options: dict[str, Any] | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: Precision | None = None,
) -> SAE:
    """Train (or load from the cache) a SAELens SAE on a model's activations at one hook.

    The activations of the corpus at ``hook_name`` (every non-BOS token) are harvested once;
    ``SAETrainer`` then sees ``n_tokens`` of them in shuffled batches (several epochs if the
    corpus is shorter), with SAELens's ``expected_average_only_in`` normalisation folded into
    the weights after training, so the returned SAE reads raw activations. ``b_dec`` starts
    at the activation mean: Gemma's residual stream has a large near-constant component
    (at ``blocks.6.hook_resid_post`` of Gemma-3-270M the mean has norm ~3500, the centred
    residual ~1000), and from ``b_dec = 0`` a few hundred steps do not remove it. The
    defaults (586 steps) give a TopK SAE with FVU ~0.06 on Gemma-3-270M; far fewer steps
    leave the SAE near its initialisation.

    Args:
        model_name: ``"gemma-3-270m"`` or any name :func:`ssae_lens.models.load_model` takes,
            or a loaded model (``HookedTransformer`` or ``TransformerBridge``).
        hook_name: the hook point, e.g. ``"blocks.6.hook_resid_post"``.
        d_sae: dictionary width.
        architecture: ``"topk"`` (``k`` active features) or ``"standard"`` (ReLU with an L1
            penalty of ``l1_coefficient``).
        k: active features per token of the TopK SAE.
        l1_coefficient: sparsity penalty of the standard SAE.
        n_tokens: activation vectors (tokens) the trainer sees in total.
        batch_size: activation vectors per training step.
        lr: Adam learning rate (cosine-annealed to ``lr / 10``).
        texts: the corpus; default :func:`reference_corpus` of the model.
        corpus_options: keyword arguments of :func:`reference_corpus` (default corpus only).
        seed: seed of the initialisation, the corpus and the batch order.
        cache_dir: root cache folder; default :func:`ssae_lens.models.cache_root`. The SAE is
            kept in ``<cache_dir>/saes/<key>``.
        device: device to train on.
        precision: the precision the model writes the corpus and is read in (``None``: the
            model's; for a name, ``load_model``'s default float32). The SAE trains in float32
            on float32 activations either way; the cache key names the precision.

    Returns:
        An inference ``SAE`` whose ``cfg.metadata.hook_name`` is ``hook_name``.
    """
    _check_sae_options(architecture, d_sae, k, n_tokens, batch_size)
    if texts is not None and corpus_options:
        raise ValueError("corpus_options only shape the default corpus: pass texts or them.")
    if texts is not None and (isinstance(texts, str) or not texts):
        raise ValueError("texts must be a non-empty list of strings (wrap one text: [text]).")
    if isinstance(model_name, str):
        model = load_model(model_name, device=device, precision=precision)
    else:
        model = load_model(model_name)
    precision = resolve_precision(model, precision)
    hook_name = check_hook_names(model, hook_name)[0]
    refuse_active_hooks(model, what="train_reference_sae")

    settings = dict(
        format_version=_FORMAT_VERSION,
        model=model_fingerprint(model),
        model_name=model.cfg.model_name,
        precision=precision,
        hook_name=hook_name,
        architecture=architecture,
        d_sae=d_sae,
        k=k if architecture == "topk" else None,
        l1_coefficient=l1_coefficient if architecture == "standard" else None,
        n_tokens=n_tokens,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        corpus=_corpus_key(texts, corpus_options),
    )
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    # A bridge's model name is a Hub id or a path ("google/gemma-3-270m"): keep its last part.
    name = model.cfg.model_name.rsplit("/", 1)[-1]
    folder = root / "saes" / f"{name}-{hook_name}-{architecture}-{d_sae}-{key}"
    if is_cached(folder, settings):
        return SAE.load_from_disk(folder, device=str(device))

    if texts is None:
        texts = reference_corpus(model, seed=seed, precision=precision, **(corpus_options or {}))
    acts = harvest_activations(
        model,
        list(texts),
        hook_name,
        position="all",
        include_bos=False,
        progress=True,
        precision=precision,
    )
    sae = train_sae(
        acts,
        d_sae=d_sae,
        architecture=architecture,
        k=k,
        l1_coefficient=l1_coefficient,
        n_tokens=n_tokens,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        hook_name=hook_name,
        model_name=model.cfg.model_name,
    )

    with write_cached_folder(folder, settings, info={"corpus_tokens": int(acts.shape[0])}) as build:
        sae.save_model(build)
    return SAE.load_from_disk(folder, device=str(device))


def train_sae(
    activations: Float[Tensor, "n d_in"],
    *,
    d_sae: int,
    architecture: Architecture = "topk",
    k: int = 32,
    l1_coefficient: float = 5.0,
    n_tokens: int = 300_000,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    hook_name: str | None = None,
    model_name: str | None = None,
) -> SAE:
    """The one SAELens ``SAETrainer`` recipe: an SAE trained on activations already in memory.

    ``SAETrainer`` sees ``n_tokens`` rows in shuffled batches of ``batch_size`` (several epochs
    if there are fewer rows), Adam at ``lr`` cosine-annealed to ``lr / 10``, SAELens's
    ``expected_average_only_in`` normalisation folded into the weights at the end (the SAE
    reads raw activations), and ``b_dec`` started at the activation mean (see
    :func:`train_reference_sae`). The initialisation and batch order depend on ``seed`` alone;
    the global RNG is left as it was.

    Returns:
        An inference ``SAE`` with ``cfg.metadata.hook_name`` / ``model_name`` set as given.
    """
    _check_sae_options(architecture, d_sae, k, n_tokens, batch_size)
    common = dict(
        d_in=int(activations.shape[1]),
        d_sae=d_sae,
        device=str(device),
        normalize_activations="expected_average_only_in",
    )
    with scoped_seed(seed, device):
        if architecture == "topk":
            sae: Any = TopKTrainingSAE(TopKTrainingSAEConfig(k=k, **common))
        else:
            sae = StandardTrainingSAE(
                StandardTrainingSAEConfig(l1_coefficient=l1_coefficient, **common)
            )
    sae.cfg.metadata.hook_name = hook_name
    sae.cfg.metadata.model_name = model_name
    acts = activations.detach().float().to(device)
    with torch.no_grad():  # b_dec at the mean, in the trainer's normalised units
        sae.b_dec.copy_(acts.mean(0) * acts.shape[1] ** 0.5 / acts.norm(dim=1).mean())
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_tokens,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="cosineannealing",
        device=str(device),
        n_batches_for_norm_estimate=max(1, min(100, acts.shape[0] // batch_size)),
        logger=LoggingConfig(log_to_wandb=False),
    )
    trained = SAETrainer(trainer_cfg, sae, ShuffledBatches(acts, batch_size, seed=seed)).fit()
    build = Path(tempfile.mkdtemp(prefix="ssae_lens_sae_"))
    try:
        trained.save_inference_model(build)
        return SAE.load_from_disk(build, device=str(device))
    finally:
        shutil.rmtree(build)


def _check_sae_options(
    architecture: str, d_sae: int, k: int, n_tokens: int, batch_size: int
) -> None:
    if architecture not in ("topk", "standard"):
        raise ValueError(
            f"architecture must be 'topk' or 'standard', got {architecture!r}; for other "
            "architectures train with SAELens directly and load the SAE with SAE.load_from_disk."
        )
    for name, value in (("d_sae", d_sae), ("k", k), ("n_tokens", n_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}.")
    if batch_size < 1 or batch_size > n_tokens:
        raise ValueError(
            f"batch_size must be between 1 and n_tokens ({n_tokens}), got {batch_size}."
        )


def _corpus_key(texts: Sequence[str] | None, options: dict[str, Any] | None) -> dict[str, Any]:
    if texts is None:
        return {"default": dict(sorted((options or {}).items())), "prompts": list(CORPUS_PROMPTS)}
    digest = hashlib.sha256()
    for text in texts:
        digest.update(str(text).encode())
        digest.update(b"\0")
    return {"texts": digest.hexdigest(), "n_texts": len(texts)}
