"""Hook names, the vocabulary shared with TransformerLens: validation, widths, depth.

Every module that takes a hook name checks it here, so an unknown name always gets the same
message (the name, the closest valid names, where to find them all). ``HookedTransformer`` and
``TransformerBridge`` share the hook names (the bridge keeps the ``HookedTransformer`` names as
aliases); where a name means something else on one backend, :func:`check_steerable_hook` asks
the backend adapter (:mod:`ssae_lens._core.backend`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "check_hook_names",
    "check_steerable_hook",
    "dictionary_hook_name",
    "hook_layer",
    "hook_width",
    "stop_at_layer",
]

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")
_EMBEDDING_HOOKS = ("hook_embed", "hook_pos_embed", "hook_tokens")
# Hook points whose activations are [batch, pos, ...] inside the transformer blocks, by the
# width of their flattened trailing dimensions. Other hook points are checked when the first
# activation arrives.
_D_MODEL_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_mlp_in",
    "hook_normalized",
)
_HEADS_HOOKS = ("attn.hook_q", "attn.hook_z", "attn.hook_rot_q")
_MLP_HOOKS = ("mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear")
# Hook points that cannot be read or steered position by position.
_NOT_POSITIONAL = ("hook_attn_scores", "hook_pattern")


def _hook_dict(model: Any) -> dict[str, Any]:
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None:
        raise TypeError(
            f"Expected a TransformerLens model with hook points (HookedTransformer or "
            f"TransformerBridge), got {type(model).__name__}; load one with "
            "ssae_lens.models.load_model."
        )
    return hook_dict


def _unknown_hook(name: str, valid: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, list(valid), n=5, cutoff=0.6)
    hint = (
        f" Closest valid names: {close}." if close else f" Valid names include {list(valid)[:5]}."
    )
    return ValueError(
        f"Unknown hook name {name!r} for this model.{hint} All names: model.hook_dict."
    )


def check_hook_names(model: Any, hook_names: str | Sequence[str]) -> list[str]:
    """The hook names as a list, each checked to exist in ``model`` (no duplicates)."""
    names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    if not names:
        raise ValueError("No hook names given; pass e.g. 'blocks.6.hook_resid_post'.")
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate hook names in {names}.")
    hook_dict = _hook_dict(model)
    for name in names:
        if name not in hook_dict:
            raise _unknown_hook(name, list(hook_dict))
    return names


def check_steerable_hook(model: Any, hook_name: str) -> str:
    """``hook_name``, checked to be a hook point steering can edit on every forward pass."""
    from ssae_lens._core.backend import backend  # lazy: this module stays import-light

    check_hook_names(model, hook_name)
    if not hook_name.startswith(("blocks.", "ln_final.")):
        raise ValueError(
            f"Cannot steer at {hook_name!r}: generate() embeds tokens outside the forward "
            "pass, so steering there would skip decode steps. Use 'blocks.0.hook_resid_pre', "
            "which is the same activation as the embedding output."
        )
    if hook_name.endswith(_NOT_POSITIONAL):
        raise ValueError(
            f"Cannot steer at {hook_name!r}: its activations are [batch, head, query, key], "
            "not [batch, pos, ...]. Steer at 'attn.hook_z' or a residual hook point."
        )
    backend(model).check_steerable(hook_name)
    return hook_name


def dictionary_hook_name(sae: Any, hook_name: str | None = None) -> str:
    """``hook_name``, or else the hook point a SAELens dictionary was trained on."""
    hook_name = hook_name or sae.cfg.metadata.hook_name
    if not hook_name:
        raise ValueError(
            f"{type(sae).__name__}.cfg.metadata.hook_name is not set: pass hook_name=... "
            "(the hook point the dictionary was trained on)."
        )
    return hook_name


def hook_width(model: Any, hook_name: str) -> int | None:
    """Width of the flattened activation at ``hook_name`` from ``model.cfg``, if known."""
    cfg = model.cfg
    if hook_name.endswith(_D_MODEL_HOOKS):
        return cfg.d_model
    if hook_name.endswith(_HEADS_HOOKS):
        return cfg.n_heads * cfg.d_head
    if hook_name.endswith(_MLP_HOOKS):
        return cfg.d_mlp
    return None


def hook_layer(hook_name: str) -> int | None:
    """The block index of a ``blocks.L.*`` hook name, else ``None``."""
    match = _BLOCK_HOOK.match(hook_name)
    return int(match.group(1)) if match else None


def stop_at_layer(hook_names: Sequence[str]) -> int | None:
    """``stop_at_layer`` that runs exactly up to the deepest hook (``None``: the whole model)."""
    stops = []
    for name in hook_names:
        layer = hook_layer(name)
        if layer is not None:
            stops.append(layer + 1)
        elif name in _EMBEDDING_HOOKS:
            stops.append(0)
        else:
            return None
    return max(stops)
