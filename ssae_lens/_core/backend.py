"""One interface to the two TransformerLens model classes: ``HookedTransformer`` and
``TransformerBridge``.

Both expose the same hook names (the bridge adds aliases such as ``blocks.6.hook_resid_post``
for its ``blocks.6.hook_out``), ``to_tokens``, the ``cfg`` fields read here, ``tokenizer``,
``hooks()``, ``run_with_cache`` / ``run_with_hooks`` and ``forward(..., attention_mask=,
stop_at_layer=)``, so those are used directly. Hook names are validated for both in
:mod:`ssae_lens._core.hooks`. The classes differ in these places, each handled by one method of the
backend class:

- :meth:`Backend.observe_forward`: where the tokens of a forward call sit in the sequence. A
  ``HookedTransformer`` block receives ``past_kv_cache_entry`` and the attention mask; a bridge
  block receives Hugging Face's 4-D mask, so the bridge is observed at the Hugging Face model's
  input, whose 2-D mask spans the cached columns and the new ones.
- :meth:`Backend.prefill` / :meth:`Backend.decode`: KV-cached decoding. TransformerLens's cache
  holds its own mask and the model can return the final residual (``stop_at_layer=n_layers``);
  the bridge takes a Hugging Face ``DynamicCache`` plus the full mask on every step and returns
  logits (``logits_to_keep=1`` computes them for the last position only).
- :meth:`Backend.final_logits`: final norm, unembedding and logit soft-cap of a residual
  (``HookedTransformer``: ``W_U`` and ``b_U``; the bridge: its ``unembed`` component).
- :meth:`Backend.run_to_layer`: the bridge cannot stop after its last block, so a read of the
  last block unembeds the last position only.
- :meth:`Backend.check_steerable`: on a bridge ``hook_resid_mid`` is the input of the MLP's
  norm (``ln2.hook_in``), so an edit there reaches the MLP but not the residual stream.

The bridge runs the Hugging Face weights unprocessed; ``HookedTransformer`` as loaded by
``ssae_lens.models.load_model`` (``from_pretrained_no_processing``) does the same maths in its
own code, so activations agree to float rounding, not bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.utilities import apply_softcap

__all__ = [
    "Backend",
    "DecodeState",
    "ForwardObserver",
    "Model",
    "backend",
    "check_model",
    "machinery_hook",
]

Model: TypeAlias = HookedTransformer | TransformerBridge
"""What every ssae-lens function that runs a model accepts."""

ForwardObserver = Callable[[int, int, Tensor | None, torch.device], None]
"""Called as ``observer(offset, n, mask, device)`` before the blocks run a forward call:
``offset`` columns are already in the KV cache, ``n`` columns are new, and ``mask`` (or
``None``) is the 0/1 attention mask, ``[batch, offset + n]`` or ``[batch, n]``."""


def check_model(model: object) -> Model:
    """Return ``model`` if ssae-lens can run it; else a ``TypeError`` says how to load one."""
    if isinstance(model, (HookedTransformer, TransformerBridge)):
        return model
    raise TypeError(
        "model must be a TransformerLens HookedTransformer or TransformerBridge, got "
        f"{type(model).__name__}. Load one with ssae_lens.models.load_model(name) or "
        "load_model(name, backend='bridge')."
    )


def backend(model: object) -> Backend:
    """The backend adapter of ``model`` (a ``HookedTransformer`` or a ``TransformerBridge``)."""
    model = check_model(model)
    if isinstance(model, TransformerBridge):
        return _Bridge(model)
    return _Hooked(model)


# Modules whose torch hooks are part of how a model runs, not edits of it: the bridge wires
# capture hooks onto the Hugging Face layers on its first forward pass, and transformers adds
# output-capturing hooks when a run asks for hidden states or attentions.
_MACHINERY_MODULES = ("transformer_lens.model_bridge.", "transformers.")


def machinery_hook(hook: Callable[..., Any]) -> bool:
    """Whether a torch module hook was installed by the model's own libraries (a
    ``TransformerBridge`` or transformers) rather than by a user, steering or ssae-lens."""
    return (getattr(hook, "__module__", None) or "").startswith(_MACHINERY_MODULES)


@dataclass
class DecodeState:
    """KV-cached decoding in progress (see :meth:`Backend.prefill`).

    Attributes:
        cache: the backend's KV cache.
        mask: 0/1 attention mask over every column seen so far, ``[batch, pos]``.
        logits: next-token logits of the last column, ``[batch, vocab]``; ``None`` after a
            :meth:`Backend.decode` that stopped early.
    """

    cache: Any
    mask: Int[Tensor, "batch pos"]
    logits: Float[Tensor, "batch vocab"] | None


class Backend(ABC):
    """What ssae-lens needs from a model, implemented once per TransformerLens model class."""

    name: ClassVar[str]
    """``"hooked"`` or ``"bridge"``: the value of ``load_model(..., backend=)``."""
    no_autocast: ClassVar[str | None] = None
    """Why ``precision="bf16-autocast"`` cannot run this backend (``None``: it can)."""

    def __init__(self, model: Model):
        self.model = model

    # ------------------------------------------------------------------ config
    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    @property
    def n_ctx(self) -> int:
        return self.model.cfg.n_ctx

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.cfg.device)

    @property
    def default_prepend_bos(self) -> bool:
        return bool(self.model.cfg.default_prepend_bos)

    # ------------------------------------------------------------------ shared
    def token_ids(self, text: str, prepend_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``, untruncated (BOS per ``prepend_bos``, else the model default)."""
        tokens = self.model.to_tokens(
            text, prepend_bos=prepend_bos, move_to_device=False, truncate=False
        )
        return tokens[0].tolist()

    def run_to_layer(
        self,
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"],
        stop_at_layer: int | None,
    ) -> None:
        """Run the model for its hooks, through blocks ``0 .. stop_at_layer - 1`` (``None``:
        the whole model, unembedding included)."""
        self.model(tokens, attention_mask=attention_mask, stop_at_layer=stop_at_layer)

    # ------------------------------------------------------------------ what differs
    @abstractmethod
    def check_steerable(self, hook_name: str) -> None:
        """Raise ``ValueError`` if an edit at ``hook_name`` would not mean what its name says."""

    @abstractmethod
    def observe_forward(self, observer: ForwardObserver) -> list[RemovableHandle]:
        """Call ``observer`` before the blocks run on each forward call; returns the handles."""

    @abstractmethod
    def prefill(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> DecodeState:
        """Run the prompt into a new KV cache; ``state.logits`` predicts the next token."""

    @abstractmethod
    def decode(
        self, state: DecodeState, tokens: Int[Tensor, " batch"], stop_at_layer: int | None = None
    ) -> None:
        """Append one token per row: through the whole model (``state.logits`` is updated), or
        only through blocks ``0 .. stop_at_layer - 1`` (``state.logits`` becomes ``None``; the
        cache is then incomplete, so this must be the last step)."""

    @abstractmethod
    def final_logits(self, resid: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch vocab"]:
        """Logits of one final residual per row: final norm, unembedding, logit soft-cap."""


class _Hooked(Backend):
    name = "hooked"
    model: HookedTransformer

    def check_steerable(self, hook_name: str) -> None:
        pass  # every hook point edits the tensor it is named after

    def observe_forward(self, observer: ForwardObserver) -> list[RemovableHandle]:
        def on_block(module: Any, args: tuple, kwargs: dict) -> None:
            resid = args[0] if args else kwargs["resid_pre"]
            entry = kwargs.get("past_kv_cache_entry")
            offset = 0 if entry is None else entry.past_keys.shape[1]
            observer(offset, resid.shape[1], kwargs.get("attention_mask"), resid.device)

        return [
            block.register_forward_pre_hook(on_block, with_kwargs=True)
            for block in self.model.blocks
        ]

    def prefill(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> DecodeState:
        cache = TransformerLensKeyValueCache.init_cache(
            self.model.cfg, self.model.cfg.device, tokens.shape[0]
        )
        resid = self.model(
            tokens, attention_mask=attention_mask, past_kv_cache=cache, stop_at_layer=self.n_layers
        )
        return DecodeState(cache, attention_mask, self.final_logits(resid[:, -1]))

    def decode(
        self, state: DecodeState, tokens: Int[Tensor, " batch"], stop_at_layer: int | None = None
    ) -> None:
        new = torch.ones_like(tokens)[:, None]
        state.mask = torch.cat([state.mask, new.to(state.mask)], dim=1)
        resid = self.model(
            tokens[:, None],
            attention_mask=new,  # the TransformerLens cache keeps the mask of earlier columns
            past_kv_cache=state.cache,
            stop_at_layer=self.n_layers if stop_at_layer is None else stop_at_layer,
        )
        state.logits = self.final_logits(resid[:, -1]) if stop_at_layer is None else None

    def final_logits(self, resid: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch vocab"]:
        model = self.model
        if model.cfg.normalization_type is not None:
            resid = model.ln_final(resid[:, None])[:, 0]
        # As Unembed.forward computes it, without copying W_U (ssae_lens.models.decoding_layout).
        logits = torch.nn.functional.linear(resid, model.unembed.W_U.T, model.unembed.b_U)
        return apply_softcap(logits, model.cfg.output_logits_soft_cap)


class _Bridge(Backend):
    name = "bridge"
    model: TransformerBridge
    no_autocast = (
        "Hugging Face's attention masks padding with float32's most negative number, which "
        "autocast rounds to -inf in bfloat16, so a left-padded row turns into NaN"
    )

    def check_steerable(self, hook_name: str) -> None:
        if hook_name.endswith("hook_resid_mid"):
            layer = hook_name.removesuffix(".hook_resid_mid")
            raise ValueError(
                f"Cannot steer a TransformerBridge at {hook_name!r}: there it is the input of "
                "the MLP's norm, so an edit reaches the MLP but not the residual stream. Steer "
                f"at {layer}.hook_attn_out (the same edit for operator 'add') or at "
                f"{layer}.hook_resid_pre / hook_resid_post."
            )

    def observe_forward(self, observer: ForwardObserver) -> list[RemovableHandle]:
        def on_forward(module: Any, args: tuple, kwargs: dict) -> None:
            inputs = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
            n = inputs.shape[1]
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.ndim != 2:
                raise ValueError(
                    f"Steering a TransformerBridge needs a 2-D [batch, pos] attention mask, got "
                    f"shape {tuple(mask.shape)}; pass the 0/1 padding mask."
                )
            if mask is not None:  # Hugging Face masks span the cached columns too
                offset = mask.shape[1] - n
            else:
                cache = kwargs.get("past_key_values", kwargs.get("cache"))
                offset = 0 if cache is None else cache.get_seq_length()
            observer(offset, n, mask, inputs.device)

        hf_model = self.model.original_model
        return [hf_model.register_forward_pre_hook(on_forward, with_kwargs=True)]

    def run_to_layer(
        self,
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"],
        stop_at_layer: int | None,
    ) -> None:
        if stop_at_layer is not None and stop_at_layer >= self.n_layers:
            # The bridge cannot stop after its last block; unembed the last column only.
            self.model(tokens, attention_mask=attention_mask, logits_to_keep=1)
            return
        super().run_to_layer(tokens, attention_mask, stop_at_layer)

    def prefill(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> DecodeState:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.original_model.config)
        logits = self._step(tokens, attention_mask, cache)
        if cache.get_seq_length() != tokens.shape[1]:
            raise RuntimeError(
                "TransformerBridge did not fill the Hugging Face KV cache (it holds "
                f"{cache.get_seq_length()} of {tokens.shape[1]} columns), so cached decoding "
                "would be wrong. TransformerLens 3.9 reads the cache from a keyword that "
                "transformers 5.24 renamed: install transformers<5.24."
            )
        return DecodeState(cache, attention_mask, logits)

    def decode(
        self, state: DecodeState, tokens: Int[Tensor, " batch"], stop_at_layer: int | None = None
    ) -> None:
        state.mask = torch.cat([state.mask, state.mask.new_ones(len(tokens), 1)], dim=1)
        if stop_at_layer is None:
            state.logits = self._step(tokens[:, None], state.mask, state.cache)
            return
        self.model(
            tokens[:, None],
            attention_mask=state.mask,
            past_key_values=state.cache,
            use_cache=True,
            stop_at_layer=stop_at_layer,
        )
        state.logits = None

    def final_logits(self, resid: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch vocab"]:
        model = self.model
        logits = model.unembed(model.ln_final(resid[:, None]))[:, 0]
        return apply_softcap(logits, model.cfg.output_logits_soft_cap)

    def _step(self, tokens: Tensor, mask: Tensor, cache: Any) -> Float[Tensor, "batch vocab"]:
        logits = self.model(
            tokens, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        return logits[:, -1]
