"""Steering attention queries in an SAE's latent space (Bhattacharyya & Rooshenas, 2025).

An SAE trained on ``blocks.L.attn.hook_q`` (heads flattened to ``n_heads * d_head``)
gives every query a sparse code. Each target class (a style, a register, a level of
complexity) has a *prototype*: the mean code of its examples' tokens. At inference
every query's code is moved toward the target prototype by a few gradient steps in
latent space, decoded, and substituted for the query, which changes what the head
attends to::

    protos = QueryPrototypes.fit(model, sae, {"formal": formal_texts, "informal": informal})
    with steer_queries(model, sae, protos, target="formal", steps=5, step_size=0.5):
        model.generate("hey, so", max_new_tokens=20)

The paper did not publish its hyper-parameters; the choices here:

- **Loss.** ``"prototype"`` (default): cross-entropy of a nearest-prototype
  classifier, ``softmax(-||c - p_k||^2 / T)``, toward the target class, with ``T``
  the mean squared distance between prototypes (scale-free) unless ``temperature``
  is given. It pulls the code toward the target *and* away from the other classes.
  At the default ``T`` the classifier saturates once a code is nearer the target, and
  the steps stop; a ``T`` far above the squared code distances keeps the softmax near
  uniform, so each step moves the code by about ``2 step_size (p_target - mean_k p_k)``
  (for two classes ``step_size (p_target - p_other)``) and ``steps`` acts as a scale.
  ``"distance"``: ``||c - p_target||^2 / 2``, whose gradient steps interpolate linearly toward the
  prototype (``c <- c + eta (p - c)``).
- **Steps.** Plain gradient descent, ``steps`` steps of size ``step_size`` (default
  5 x 0.5; the prototype loss's gradient is scaled by ``T``, so a step moves the code
  by ``2 step_size (p_target - E_softmax[p])``), codes projected onto ``c >= 0``
  after each step for ReLU-type SAEs (``nonnegative=True``).
- **Substitution.** ``q' = q + decode(c') - decode(c)``: only the latent edit is
  added, so the SAE's reconstruction error is kept and zero steps change nothing.
- **Positions.** Every token, prompt and generated; each query is edited as a
  function of itself only, so results are identical with and without the KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

from ssae_lens._core.backend import Model
from ssae_lens._core.hooks import check_steerable_hook

QueryLoss = Literal["prototype", "distance"]


@dataclass
class QueryPrototypes:
    """Mean SAE code of each class's query vectors at one ``attn.hook_q`` hook."""

    hook_name: str
    classes: list[str]
    prototypes: Float[Tensor, "n_classes d_sae"]

    @classmethod
    def fit(
        cls,
        model: Model,
        sae: SAE,
        texts_by_class: Mapping[str, Sequence[str]],
        *,
        hook_name: str | None = None,
        batch_size: int = 16,
    ) -> QueryPrototypes:
        """Prototypes from labelled texts: the mean code over all their (non-BOS) tokens."""
        from ssae_lens.activations import harvest_activations

        hook = _query_hook(model, sae, hook_name)
        if len(texts_by_class) < 2:
            raise ValueError("Prototype steering needs texts for at least 2 classes.")
        protos = []
        for name, texts in texts_by_class.items():
            if not texts:
                raise ValueError(f"Class {name!r} has no texts.")
            q = harvest_activations(
                model, list(texts), hook, position="all", batch_size=batch_size, progress=False
            )
            with torch.no_grad():
                protos.append(sae.encode(q.to(sae.W_enc.dtype)).mean(0))
        return cls(hook, list(texts_by_class), torch.stack(protos))

    def index(self, target: str | int) -> int:
        if isinstance(target, int):
            return target
        if target not in self.classes:
            raise ValueError(f"Unknown class {target!r}; the prototypes have {self.classes}.")
        return self.classes.index(target)


def move_codes(
    codes: Float[Tensor, "... d_sae"],
    prototypes: Float[Tensor, "n_classes d_sae"],
    target: int,
    *,
    steps: int = 5,
    step_size: float = 0.5,
    loss: QueryLoss = "prototype",
    nonnegative: bool = True,
    temperature: float | None = None,
) -> Float[Tensor, "... d_sae"]:
    """Move codes toward ``prototypes[target]`` by gradient steps (see the module docs)."""
    if loss not in ("prototype", "distance"):
        raise ValueError(f"loss must be 'prototype' or 'distance', got {loss!r}.")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive (or None), got {temperature}.")
    target_proto = prototypes[target]
    if temperature is None:
        n = len(prototypes)
        temperature = torch.cdist(prototypes, prototypes).pow(2).sum() / max(n * (n - 1), 1)
    temperature = torch.as_tensor(temperature, dtype=prototypes.dtype, device=prototypes.device)
    c = codes
    for _ in range(steps):
        if loss == "distance":
            c = c - step_size * (c - target_proto)
        else:
            # T * d/dc of -log softmax_t(-||c - p_k||^2 / T) = 2 (E_softmax[p] - p_target)
            sq = (c.unsqueeze(-2) - prototypes).pow(2).sum(-1)
            weights = torch.softmax(-sq / temperature.clamp(min=1e-12), dim=-1)
            c = c - 2.0 * step_size * (weights @ prototypes - target_proto)
        if nonnegative:
            c = c.clamp(min=0)
    return c


@contextmanager
def steer_queries(
    model: Model,
    sae: SAE,
    prototypes: QueryPrototypes,
    target: str | int,
    *,
    steps: int = 5,
    step_size: float = 0.5,
    loss: QueryLoss = "prototype",
    nonnegative: bool = True,
    temperature: float | None = None,
) -> Iterator[None]:
    """Inside the block, every query at the prototypes' hook is moved toward ``target``."""
    hook = prototypes.hook_name
    t = prototypes.index(target)
    protos = prototypes.prototypes.to(sae.W_enc.device, sae.W_enc.dtype)

    def edit(q: Float[Tensor, "batch pos head d_head"], hook: Any) -> Tensor:
        # The SAE runs in its own dtype, also inside a bf16-autocast forward pass; the edited
        # queries are rounded once to the queries' dtype.
        with torch.autocast(q.device.type, enabled=False):
            flat = q.flatten(-2).to(sae.W_enc.dtype)
            codes = sae.encode(flat)
            moved = move_codes(
                codes,
                protos,
                t,
                steps=steps,
                step_size=step_size,
                loss=loss,
                nonnegative=nonnegative,
                temperature=temperature,
            )
            delta = sae.decode(moved) - sae.decode(codes)
            return (flat + delta).to(q.dtype).view_as(q)

    with model.hooks(fwd_hooks=[(hook, edit)]):
        yield


def _query_hook(model: Model, sae: SAE, hook_name: str | None) -> str:
    hook = hook_name or getattr(sae.cfg.metadata, "hook_name", None)
    if hook is None:
        raise ValueError(
            "The SAE has no cfg.metadata.hook_name; pass hook_name='blocks.L.attn.hook_q'."
        )
    hook = check_steerable_hook(model, hook)
    if not hook.endswith("attn.hook_q"):
        raise ValueError(f"Query steering needs an attn.hook_q hook, got {hook!r}.")
    width = model.cfg.n_heads * model.cfg.d_head
    if sae.cfg.d_in != width:
        raise ValueError(
            f"The SAE reads d_in={sae.cfg.d_in} but {hook} has n_heads * d_head = {width}; "
            "train it on the flattened queries of this model."
        )
    return hook
