"""Harvesting activations and paired activation shifts from a TransformerLens model
(``HookedTransformer`` or ``TransformerBridge``).

A Sparse Shift Autoencoder learns from shifts ``z(target) - z(source)`` of paired prompts read at
one hook point. :class:`PairedActivationStore` runs the model over both sides of every pair and
returns those shifts; :func:`harvest_shifts` is its function form and
:func:`harvest_activations` harvests single prompts (steering and CAA need those).

How a prompt becomes one vector (``position``):

- ``"last"``: the last real token, under left or right padding, with or without BOS.
- ``"mean"``: the mean over the real tokens. BOS is excluded unless ``include_bos=True``: it
  carries no information about the prompt and is a massive-norm outlier in models such as Gemma.
- ``"all"``: every real token (BOS excluded unless ``include_bos=True``); rows are concatenated
  pair by pair (prompt by prompt), so the result is ``(n_tokens, d)``. Paired harvesting then
  needs both sides of each pair to have the same token length.

Each distinct text is run once. Texts are sorted by token length and batched to minimise padding,
padding is masked with an explicit attention mask, the forward pass stops just after the deepest
requested hook (``stop_at_layer``), and hooks keep only the requested positions, so full
activations are never stored. Hooks already on the model (e.g. a steering hook) stay active
(without ``cache_dir``; with it they are refused).
Activations of attention hooks with a head dimension (e.g. ``blocks.L.attn.hook_q``,
``[batch, pos, head, d_head]``) are flattened to ``head * d_head``.

With ``cache_dir`` set, activations are written as safetensors shards (a
:class:`~ssae_lens._core.cache.ChunkStore`) in a folder keyed by everything that changes them:
the model (config, dtype and a full hash of its weights, :func:`model_fingerprint`; the two
backends' configs and parameter names differ, so a bridge never reads a ``HookedTransformer``'s
cache or the reverse), the precision, the hooks,
the position options and the token ids of the texts. Shards are checksummed and written
atomically; an interrupted run resumes at the first missing shard, a corrupt shard is
recomputed with a warning, and a rerun with the same key reads the cache instead of running the
model. Harvesting with a cache while hooks are active on the model (e.g. inside ``steer(...)``)
raises, since the key does not describe hooks. Cached activations are stored in float32
whatever the requested ``dtype``.

``precision`` (:mod:`ssae_lens._core.precision`; default: the model's) is the precision of the
forward passes. Activations are read out of the model in float32 and shifts are formed from
them in float32 (subtracted before any cast to the requested ``dtype``).

Under ``torchrun``, inside :func:`ssae_lens.distributed.process_group`, the shards are shared
by the ranks (:func:`~ssae_lens.distributed.compute_chunks`; a temporary folder stands in for
``cache_dir`` on one machine) and every rank returns the full result, equal to one process's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ssae_lens._core.backend import Model, backend
from ssae_lens._core.cache import ChunkStore, model_fingerprint, refuse_active_hooks
from ssae_lens._core.hooks import check_hook_names, stop_at_layer
from ssae_lens._core.precision import Precision, autocast, resolve_precision
from ssae_lens._core.tokens import pad_token_rows
from ssae_lens.distributed import compute_chunks, work_context

__all__ = [
    "PairedActivationStore",
    "Position",
    "harvest_activations",
    "harvest_shifts",
    "model_fingerprint",
]

Position = Literal["last", "mean", "all"]
POSITIONS: tuple[str, ...] = ("last", "mean", "all")

HarvestOutput = Float[Tensor, "n d"] | tuple[Float[Tensor, "n d"], Float[Tensor, "n d"]]
"""Shifts, or ``(source_acts, target_acts)`` with ``return_both=True``."""

_CACHE_FORMAT_VERSION = 3  # 2: full weight hash; checksummed ChunkStore shards; 3: precision


class PairedActivationStore:
    """Activation shifts ``target - source`` of paired prompts at one or more hook points.

    Args:
        model: The model to run: a ``HookedTransformer`` or a ``TransformerBridge``.
        pairs: A ``ConceptPairs`` (or any object with ``.sources`` and ``.targets`` lists of
            strings) or a ``(sources, targets)`` tuple of lists.
        hook_names: One TransformerLens hook name or a list of them (``blocks.6.hook_resid_post``,
            ``blocks.3.attn.hook_q``, ...).
        position: ``"last"``, ``"mean"`` or ``"all"`` (see the module docstring).
        batch_size: Texts per forward pass.
        dtype: Dtype of the returned tensors.
        device: Device of the returned tensors.
        cache_dir: Folder for the disk cache; ``None`` disables caching.
        return_both: If true, :meth:`harvest` returns ``(source_acts, target_acts)`` per hook
            instead of shifts.
        prepend_bos: Whether to prepend BOS; ``None`` uses ``model.cfg.default_prepend_bos``.
        padding_side: ``"left"`` or ``"right"``; ``None`` uses ``model.tokenizer.padding_side``.
            Results do not depend on it beyond float rounding.
        include_bos: Whether BOS counts as a token for ``"mean"`` and ``"all"``.
        shard_size: Texts per cache shard.
        progress: Whether to show a progress bar.
        precision: ``"float32"``, ``"bf16-autocast"`` or ``"bfloat16"``; ``None``: the model's.
    """

    def __init__(
        self,
        model: Model,
        pairs: Any,
        hook_names: str | Sequence[str],
        position: Position = "last",
        *,
        batch_size: int = 32,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
        return_both: bool = False,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        include_bos: bool = False,
        shard_size: int = 4096,
        progress: bool = True,
        precision: Precision | None = None,
    ):
        sources, targets = _as_text_pairs(pairs)
        self.model = model
        self.hook_names = check_hook_names(model, hook_names)
        self.position = position
        self.dtype = dtype
        self.device = torch.device(device)
        self.return_both = return_both
        self._harvester = _TextHarvester(
            model,
            sources + targets,
            self.hook_names,
            position,
            describe=lambda i: _describe_pair_text(i, len(sources)),
            batch_size=batch_size,
            cache_dir=cache_dir,
            prepend_bos=prepend_bos,
            padding_side=padding_side,
            include_bos=include_bos,
            shard_size=shard_size,
            progress=progress,
            precision=precision,
        )
        n = len(sources)
        self._source_index = self._harvester.text_to_unique[:n]
        self._target_index = self._harvester.text_to_unique[n:]
        counts = self._harvester.counted_tokens
        if position == "all":
            unequal = [
                i
                for i in range(n)
                if counts[self._source_index[i]] != counts[self._target_index[i]]
            ]
            if unequal:
                i = unequal[0]
                raise ValueError(
                    f"position='all' needs both sides of a pair to have the same token length, "
                    f"but {len(unequal)} pair(s) differ; first: pair {i} "
                    f"({sources[i]!r}: {counts[self._source_index[i]]} tokens, "
                    f"{targets[i]!r}: {counts[self._target_index[i]]} tokens). "
                    "Use position='last' or 'mean', or drop those pairs."
                )
        self.rows_per_pair: list[int] = (
            [counts[u] for u in self._source_index] if position == "all" else [1] * n
        )
        """Output rows of each pair: its token count for ``position="all"``, else 1."""
        self._result: dict[str, HarvestOutput] | None = None

    def __len__(self) -> int:
        return len(self._source_index)

    @property
    def stop_at_layer(self) -> int | None:
        """The ``stop_at_layer`` used for the forward passes (``None``: the full model)."""
        return self._harvester.stop_at_layer

    @property
    def n_tokens(self) -> int:
        """Tokens fed to the model (distinct texts, BOS included, padding excluded)."""
        return self._harvester.n_tokens

    def harvest(self) -> dict[str, HarvestOutput]:
        """Run (or read from cache) and return the result for every hook.

        Returns:
            A dict from hook name to shifts ``Float[Tensor, "n d"]`` (``n`` pairs, or tokens for
            ``position="all"``), or to ``(source_acts, target_acts)`` if ``return_both``.
        """
        if self._result is None:
            acts = self._harvester.run()
            self._result = {hook: self._pair_up(acts[hook]) for hook in self.hook_names}
        return self._result

    def _pair_up(self, acts: Float[Tensor, "rows d"]) -> HarvestOutput:
        source = self._harvester.gather(acts, self._source_index)
        target = self._harvester.gather(acts, self._target_index)
        if self.return_both:
            return _cast(source, self.dtype, self.device), _cast(target, self.dtype, self.device)
        return _cast(target - source, self.dtype, self.device)


def harvest_shifts(
    model: Model,
    pairs: Any,
    hook_name: str | Sequence[str],
    position: Position = "last",
    batch_size: int = 32,
    **options: Any,
) -> HarvestOutput | dict[str, HarvestOutput]:
    """Activation shifts ``z(target) - z(source)`` of paired prompts.

    Function form of :class:`PairedActivationStore` (``options`` are its keyword arguments).

    Returns:
        ``Float[Tensor, "n_pairs d"]`` (``"n_tokens d"`` for ``position="all"``), or
        ``(source_acts, target_acts)`` with ``return_both=True``; a dict by hook name if
        ``hook_name`` is a list.
    """
    store = PairedActivationStore(
        model, pairs, hook_name, position, batch_size=batch_size, **options
    )
    result = store.harvest()
    return result[hook_name] if isinstance(hook_name, str) else result


def harvest_activations(
    model: Model,
    texts: Sequence[str],
    hook_name: str | Sequence[str],
    position: Position = "last",
    batch_size: int = 32,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Float[Tensor, "n d"] | dict[str, Float[Tensor, "n d"]]:
    """Activations of single prompts at one or more hook points.

    Args:
        model: The model to run.
        texts: The prompts.
        hook_name: A hook name or a list of them.
        position: ``"last"``, ``"mean"`` or ``"all"`` (rows concatenated prompt by prompt).
        batch_size: Texts per forward pass.
        dtype: Dtype of the returned tensors.
        device: Device of the returned tensors.
        **options: ``cache_dir``, ``prepend_bos``, ``padding_side``, ``include_bos``,
            ``shard_size``, ``progress``, ``precision`` as in :class:`PairedActivationStore`.

    Returns:
        ``Float[Tensor, "n_texts d"]`` (``"n_tokens d"`` for ``"all"``), or a dict by hook name
        if ``hook_name`` is a list.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string; wrap it: [text].")
    harvester = _TextHarvester(
        model,
        list(texts),
        check_hook_names(model, hook_name),
        position,
        describe=lambda i: f"text {i}",
        batch_size=batch_size,
        **options,
    )
    acts = harvester.run()
    out = {
        hook: _cast(harvester.gather(value, harvester.text_to_unique), dtype, device)
        for hook, value in acts.items()
    }
    return out[hook_name] if isinstance(hook_name, str) else out


class _TextHarvester:
    """Runs a model over distinct texts and reduces hook activations to the requested positions.

    ``run()`` returns, per hook, a float32 CPU tensor with one row per distinct text
    (``"last"``/``"mean"``) or the concatenated token rows of the distinct texts (``"all"``,
    located by ``row_slices``). ``text_to_unique`` maps each input text to its distinct text.
    """

    def __init__(
        self,
        model: Model,
        texts: list[str],
        hook_names: list[str],
        position: str,
        *,
        describe: Callable[[int], str],
        batch_size: int = 32,
        cache_dir: str | os.PathLike | None = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        include_bos: bool = False,
        shard_size: int = 4096,
        progress: bool = True,
        precision: Precision | None = None,
    ):
        self.backend = backend(model)
        if model.tokenizer is None:
            raise ValueError("The model has no tokenizer; set one with model.set_tokenizer(...).")
        if position not in POSITIONS:
            raise ValueError(f"Unknown position {position!r}; use one of {list(POSITIONS)}.")
        if batch_size < 1 or shard_size < 1:
            raise ValueError(
                f"batch_size and shard_size must be >= 1 (got {batch_size}, {shard_size})."
            )
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}.")
        if not texts:
            raise ValueError("No texts to harvest: the dataset is empty.")
        check_hook_names(model, hook_names)

        self.model = model
        self.precision = resolve_precision(model, precision)
        self.hook_names = hook_names
        self.position = position
        self.batch_size = batch_size
        self.padding_side = padding_side or model.tokenizer.padding_side or "right"
        self.progress = progress
        self.stop_at_layer = stop_at_layer(hook_names)
        if prepend_bos is None:
            prepend_bos = self.backend.default_prepend_bos
        has_bos = bool(prepend_bos) and model.tokenizer.bos_token_id is not None
        self.drop_bos = has_bos and not include_bos and position != "last"

        unique: dict[str, int] = {}
        self.text_to_unique = [unique.setdefault(text, len(unique)) for text in texts]
        first_use = {u: i for i, u in reversed(list(enumerate(self.text_to_unique)))}
        self.tokens: list[list[int]] = []
        for u, text in enumerate(unique):
            if not isinstance(text, str) or not text:
                raise ValueError(
                    f"{describe(first_use[u])} is empty or not a string ({text!r}); "
                    "remove it from the dataset."
                )
            ids = self.backend.token_ids(text, prepend_bos)
            if len(ids) > self.backend.n_ctx:
                raise ValueError(
                    f"{describe(first_use[u])} is {len(ids)} tokens long, more than the model's "
                    f"context of {self.backend.n_ctx} (n_ctx). Shorten or drop it."
                )
            if len(ids) <= int(self.drop_bos):
                raise ValueError(
                    f"{describe(first_use[u])} ({text!r}) has no tokens besides BOS, so "
                    f"position={position!r} has nothing to harvest; remove it or pass "
                    "include_bos=True."
                )
            self.tokens.append(ids)

        self.counted_tokens = [len(ids) - int(self.drop_bos) for ids in self.tokens]
        self.n_tokens = sum(len(ids) for ids in self.tokens)
        rows = self.counted_tokens if position == "all" else [1] * len(self.tokens)
        # Longest first: memory problems show up in the first batch, not the last.
        self.order = sorted(range(len(self.tokens)), key=lambda u: -len(self.tokens[u]))
        self.row_slices: list[slice] = [slice(0, 0)] * len(self.tokens)
        start = 0
        for u in self.order:
            self.row_slices[u] = slice(start, start + rows[u])
            start += rows[u]
        self.shard_size = _shared_shard_size(shard_size, batch_size, len(self.order))
        self.cache: ChunkStore | None = None
        if cache_dir is not None:
            refuse_active_hooks(model, what="Harvesting with cache_dir")
            key = self._cache_key(prepend_bos, include_bos)
            name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
            self.cache = ChunkStore(
                Path(cache_dir) / name,
                key,
                len(self.order),
                self.shard_size,
                keep_stored_layout=True,
            )

    def _cache_key(self, prepend_bos: bool, include_bos: bool) -> dict[str, Any]:
        tokens = hashlib.sha256()
        for u in self.order:
            tokens.update(json.dumps(self.tokens[u]).encode())
        return {
            "format_version": _CACHE_FORMAT_VERSION,
            "model_name": self.model.cfg.model_name,
            "model_fingerprint": model_fingerprint(self.model),
            "model_dtype": str(self.model.cfg.dtype),
            "precision": self.precision,
            "hook_names": sorted(self.hook_names),
            "position": self.position,
            "prepend_bos": bool(prepend_bos),
            "include_bos": bool(include_bos),
            "n_texts": len(self.tokens),
            "tokens_sha256": tokens.hexdigest(),
        }

    def gather(self, acts: Float[Tensor, "rows d"], texts: list[int]) -> Float[Tensor, "n d"]:
        """The rows of the distinct texts ``texts`` (indices into the distinct texts), in order."""
        if self.position == "all":
            return torch.cat([acts[self.row_slices[u]] for u in texts])
        return acts[torch.tensor([self.row_slices[u].start for u in texts], dtype=torch.long)]

    def run(self) -> dict[str, Float[Tensor, "rows d"]]:
        """Per hook, the reduced activations of all distinct texts (float32, CPU).

        The shards are computed through :func:`~ssae_lens.distributed.compute_chunks`: in
        this process, or shared by the ranks of a ``torchrun`` process group.
        """
        ctx = work_context()
        show = self.progress and ctx.is_main
        # Cached shards and the other ranks' shares are not counted: no total then.
        total = len(self.order) if ctx.world_size == 1 and self.cache is None else None
        bar = tqdm(total=total, desc="Harvesting", unit="text", disable=None if show else True)

        def compute(items: range) -> dict[str, Tensor]:
            return self._run_shard(self.order[items.start : items.stop], bar)

        with torch.no_grad():
            acts, _ = compute_chunks(
                compute, len(self.order), self.shard_size, store=self.cache, ctx=ctx
            )
        bar.close()
        return {hook: acts[hook] for hook in self.hook_names}

    def _run_shard(self, shard: list[int], bar: tqdm) -> dict[str, Tensor]:
        parts: dict[str, list[Tensor]] = {hook: [] for hook in self.hook_names}
        for i in range(0, len(shard), self.batch_size):
            batch = shard[i : i + self.batch_size]
            for hook, value in self._run_batch(batch).items():
                parts[hook].append(value)
            bar.update(len(batch))
        return {hook: torch.cat(values) for hook, values in parts.items()}

    def _run_batch(self, batch: list[int]) -> dict[str, Tensor]:
        model = self.model
        lengths = torch.tensor([len(self.tokens[u]) for u in batch])
        tokens, mask = pad_token_rows(
            [self.tokens[u] for u in batch],
            side=self.padding_side,
            pad_id=model.tokenizer.pad_token_id,
        )
        width = tokens.shape[1]
        starts = width - lengths if self.padding_side == "left" else torch.zeros_like(lengths)
        positions = torch.arange(width)[None, :]
        keep = mask & (positions != starts[:, None]) if self.drop_bos else mask
        last = starts + lengths - 1

        captured: dict[str, Tensor] = {}

        def capture(name: str, act: Tensor) -> None:
            if act.shape[:2] != tokens.shape:
                raise ValueError(
                    f"Hook {name} has activations of shape {tuple(act.shape)}, not "
                    "[batch, pos, ...]; harvest a hook with one row per token instead "
                    "(e.g. hook_z or hook_result rather than hook_pattern)."
                )
            act = act.reshape(*tokens.shape, -1)
            device = act.device
            if self.position == "last":
                reduced = act[torch.arange(len(batch), device=device), last.to(device)]
            elif self.position == "mean":
                kept = keep.to(device)[..., None]
                summed = torch.where(kept, act, 0).sum(1, dtype=torch.float32)
                reduced = summed / kept.sum(1)
            else:
                reduced = act[keep.to(device)]
            captured[name] = reduced.to("cpu", torch.float32)

        # Keyed by the requested name: a bridge's hook.name is the canonical name of an alias.
        hooks = [
            (name, lambda act, hook, name=name: capture(name, act)) for name in self.hook_names
        ]
        device = self.backend.device
        with model.hooks(fwd_hooks=hooks), autocast(self.precision, device):
            self.backend.run_to_layer(tokens.to(device), mask.long().to(device), self.stop_at_layer)
        return captured


def _as_text_pairs(pairs: Any) -> tuple[list[str], list[str]]:
    if hasattr(pairs, "sources") and hasattr(pairs, "targets"):
        sources, targets = pairs.sources, pairs.targets
    elif isinstance(pairs, tuple) and len(pairs) == 2:
        sources, targets = pairs
    else:
        raise TypeError(
            "pairs must be a ConceptPairs (anything with .sources and .targets) or a "
            f"(sources, targets) tuple of lists of strings, got {type(pairs).__name__}."
        )
    if isinstance(sources, str) or isinstance(targets, str):
        raise TypeError("sources and targets must be lists of strings, not single strings.")
    sources, targets = list(sources), list(targets)
    if len(sources) != len(targets):
        raise ValueError(
            f"Got {len(sources)} sources but {len(targets)} targets; every source needs a target."
        )
    if not sources:
        raise ValueError("No pairs to harvest: the dataset is empty.")
    return sources, targets


def _shared_shard_size(shard_size: int, batch_size: int, n_texts: int) -> int:
    """Texts per shard: ``shard_size``, or fewer under ``torchrun`` so that every rank gets
    about four shards. Smaller shards stay a multiple of ``batch_size``: with a
    ``shard_size`` that is one too, the batches (and so the numbers) are those of one
    process."""
    world = work_context().world_size
    if world == 1:
        return shard_size
    batches = -(-n_texts // (batch_size * world * 4))  # ceil
    return max(1, min(shard_size, batches * batch_size))


def _describe_pair_text(i: int, n_pairs: int) -> str:
    return f"pair {i} (source)" if i < n_pairs else f"pair {i - n_pairs} (target)"


def _cast(x: Tensor, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    return x.to(device=device, dtype=dtype)
