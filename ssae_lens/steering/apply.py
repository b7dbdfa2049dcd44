"""Apply steering vectors to a TransformerLens model (``HookedTransformer`` or
``TransformerBridge``), consistently in forward, cache and generate.

::

    with steer(model, vector, scale=4.0):
        text = model.generate("I think", max_new_tokens=20, do_sample=False)

    with steer(model, [Steering(v1, scale=4.0), Steering(v2, positions="prompt")]):
        logits = model(tokens)

    with steer_rows(model, directions, "blocks.6.hook_resid_post", scales=8.0):
        out = model.generate(prompts, ...)   # row i steered by directions[i]

Where steering is applied. Every selector is a function of a token's absolute column in
the sequence (prompt columns first, then one column per generated token), so the same
activations are edited on every forward pass, with or without the KV cache:

- ``"all"``: every real (non-padding) token, prompt and generated.
- ``"prompt"``: the tokens of the prompt only. With the KV cache their edited keys and
  values are reused; decode steps themselves run unsteered.
- ``"generated"``: only tokens produced by ``generate`` (columns at or after the prompt
  length). The first generated token is therefore sampled from the unsteered prompt;
  its own activations, and everything after, are steered.
- a list of ints: token indices counted over each row's real tokens (left padding is
  skipped); negative indices count back from the end of the prompt (``-1`` is the last
  prompt token). Non-negative indices may reach generated tokens.
- a boolean mask ``(batch, pos)`` (or ``(pos,)``) over the columns of the token tensor,
  padding included; columns past its end are not steered.

Outside ``generate`` a forward pass on an empty (or no) KV cache is the prompt; later
calls that extend a KV cache (``past_kv_cache``; on a bridge, Hugging Face's
``past_key_values``) are generated tokens. Inside ``model.generate`` the
prompt is its input, also with ``use_past_kv_cache=False``; for that case the context
temporarily wraps ``model.generate``, so call it through the model, not through a bound
method captured before entering.

Operators, with ``u = v / |v|`` and ``s`` the scale:

- ``"add"``: ``x + s v``
- ``"ablate_then_add"``: ``x - (x . u) u + s v``
- ``"projection_cap"``: ``x - max(x . u - s, 0) u`` (the component along ``u`` is capped
  at ``s``; cap from below with ``-v``).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ssae_lens._core.backend import Model, backend
from ssae_lens._core.finite import all_finite
from ssae_lens._core.hooks import check_steerable_hook, hook_width
from ssae_lens.steering.vector import SteeringVector

Operator = Literal["add", "ablate_then_add", "projection_cap"]
PositionSelector = (
    Literal["all", "prompt", "generated"]
    | Sequence[int]
    | Int[Tensor, " k"]
    | Bool[Tensor, "batch pos"]
)
OPERATORS: tuple[str, ...] = ("add", "ablate_then_add", "projection_cap")
POSITION_NAMES: tuple[str, ...] = ("all", "prompt", "generated")


@dataclass
class Steering:
    """One intervention: a vector and how, where and how strongly to apply it.

    Fields left as ``None`` take the value passed to :func:`steer`; an unset scale falls
    back to the vector's ``default_scale`` (1.0 for a raw tensor).

    Attributes:
        vector: a :class:`SteeringVector`, a tensor ``(d,)``, or ``(batch, d)`` for one
            direction per batch row (then ``hook_name`` is required).
        scale: a float, or one per batch row ``(batch,)``.
        positions: see the module docstring.
        operator: ``"add"``, ``"ablate_then_add"`` or ``"projection_cap"``.
        hook_name: hook point for a raw tensor vector.
    """

    vector: SteeringVector | Float[Tensor, " d"] | Float[Tensor, "batch d"]
    scale: float | Sequence[float] | Float[Tensor, " batch"] | None = None
    positions: PositionSelector | None = None
    operator: Operator | None = None
    hook_name: str | None = None


class SteeringHandle:
    """Steering applied to a model by :func:`apply_steering`; ``remove()`` undoes it."""

    def __init__(self, model: Model, interventions: list[_Intervention]):
        self.model = model
        self.interventions = interventions
        self._tracker = _tracker_for(model)
        self._tracker.acquire()
        self._registered: list[tuple[Any, Any]] = []
        try:
            for intervention in interventions:
                intervention.tracker = self._tracker
                hook_point = model.hook_dict[intervention.hook_name]
                hook_point.add_hook(intervention, dir="fwd")
                self._registered.append((hook_point, hook_point.fwd_hooks[-1]))
        except BaseException:
            self.remove()
            raise

    @property
    def active(self) -> bool:
        return self._tracker is not None

    def remove(self) -> None:
        """Remove every hook this handle added. Safe to call more than once."""
        if self._tracker is None:
            return
        for hook_point, lens_handle in self._registered:
            lens_handle.hook.remove()
            hook_point.fwd_hooks = [h for h in hook_point.fwd_hooks if h is not lens_handle]
        self._registered = []
        self._tracker.release()
        self._tracker = None

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"SteeringHandle({state}, {self.interventions})"


def apply_steering(
    model: Model,
    vector_or_vectors: SteeringVector | Steering | Sequence[SteeringVector | Steering],
    scale: float | Sequence[float] | Tensor | None = None,
    positions: PositionSelector = "all",
    operator: Operator = "add",
) -> SteeringHandle:
    """Add steering hooks to ``model`` until ``handle.remove()``; see :func:`steer`."""
    if isinstance(vector_or_vectors, (SteeringVector, Steering, Tensor)):
        items: Sequence[Any] = [vector_or_vectors]
    else:
        items = list(vector_or_vectors)
    if not items:
        raise ValueError("No steering vectors given.")
    interventions = [
        _resolve(model, item, scale=scale, positions=positions, operator=operator) for item in items
    ]
    return SteeringHandle(model, interventions)


@contextmanager
def steer(
    model: Model,
    vector_or_vectors: SteeringVector | Steering | Sequence[SteeringVector | Steering],
    scale: float | Sequence[float] | Tensor | None = None,
    positions: PositionSelector = "all",
    operator: Operator = "add",
) -> Iterator[SteeringHandle]:
    """Steer ``model`` inside a ``with`` block; hooks are removed on exit, also on errors.

    Args:
        model: a TransformerLens ``HookedTransformer`` (or ``HookedSAETransformer``) or
            ``TransformerBridge``. On a bridge, ``hook_resid_mid`` cannot be steered (there
            it is only the MLP's input), and a forward pass over padded rows needs its
            ``attention_mask`` (the bridge does not infer one from padding).
        vector_or_vectors: a :class:`SteeringVector`, a :class:`Steering` spec, or a list
            of them (each at its own hook point, applied in list order).
        scale: multiplier of the vector (the cap for ``"projection_cap"``); a sequence or
            tensor gives one scale per batch row. Default: each vector's ``default_scale``.
        positions: ``"all"``, ``"prompt"``, ``"generated"``, token indices or a boolean
            mask; see the module docstring.
        operator: ``"add"``, ``"ablate_then_add"`` or ``"projection_cap"``.

    Raises:
        ValueError: unknown hook point, wrong vector width, bad scale/positions/operator.
        FloatingPointError: (during the forward pass) steering made activations or
            logits NaN/inf, e.g. because the scale is far too large.
    """
    handle = apply_steering(model, vector_or_vectors, scale, positions, operator)
    try:
        yield handle
    finally:
        handle.remove()


def steer_rows(
    model: Model,
    directions: Float[Tensor, "batch d"],
    hook_name: str,
    scales: float | Sequence[float] | Float[Tensor, " batch"] = 1.0,
    positions: PositionSelector = "all",
    operator: Operator = "add",
) -> Any:
    """Context manager steering batch row ``i`` with ``scales[i] * directions[i]``.

    Equivalent to running each row alone under ``steer`` with its own vector, but in
    one batched pass (e.g. to measure the effects of many vectors in one ``generate``).
    """
    directions = torch.as_tensor(directions)
    if directions.ndim != 2:
        raise ValueError(
            f"steer_rows needs directions of shape (batch, d), got {tuple(directions.shape)}."
        )
    spec = Steering(directions, scales, positions, operator, hook_name)
    return steer(model, spec)


# ---------------------------------------------------------------------------- resolution
def _resolve(
    model: Model,
    item: Any,
    *,
    scale: Any,
    positions: Any,
    operator: Any,
) -> _Intervention:
    if isinstance(item, SteeringVector):
        item = Steering(item)
    if isinstance(item, Tensor):
        raise TypeError(
            "A raw tensor needs a hook point: wrap it as SteeringVector(tensor, hook_name), "
            "Steering(tensor, hook_name=...), or use steer_rows for (batch, d) directions."
        )
    if not isinstance(item, Steering):
        raise TypeError(
            f"Expected SteeringVector or Steering, got {type(item).__name__}; see "
            "ssae_lens.steering.steer."
        )
    scale = item.scale if item.scale is not None else scale
    positions = item.positions if item.positions is not None else positions
    operator = item.operator if item.operator is not None else operator

    vector = item.vector
    if isinstance(vector, SteeringVector):
        if item.hook_name is not None and item.hook_name != vector.hook_name:
            raise ValueError(
                f"Steering.hook_name={item.hook_name!r} differs from the vector's hook point "
                f"{vector.hook_name!r}; leave hook_name unset for a SteeringVector."
            )
        hook_name = vector.hook_name
        direction = vector.direction
        if scale is None:
            scale = vector.default_scale
        label = f"{vector.method} vector"
    else:
        if item.hook_name is None:
            raise ValueError("Steering with a raw tensor needs hook_name=...")
        hook_name = item.hook_name
        direction = torch.as_tensor(vector).detach()
        if scale is None:
            scale = 1.0
        label = "tensor"
    check_steerable_hook(model, hook_name)
    if isinstance(vector, SteeringVector):
        vector.check_compatible(model)

    if direction.ndim == 1:
        direction = direction[None]
    if direction.ndim != 2:
        raise ValueError(
            f"Steering directions must be (d,) or (batch, d), got {tuple(direction.shape)}."
        )
    if not direction.is_floating_point():
        direction = direction.float()
    if not torch.isfinite(direction).all():
        raise ValueError(f"The steering direction for {hook_name!r} contains NaN or inf.")
    expected = hook_width(model, hook_name)
    if expected is not None and direction.shape[-1] != expected:
        raise ValueError(
            f"Steering vector has width {direction.shape[-1]} but {hook_name!r} has width "
            f"{expected} in this model: use a vector built for this hook point and model."
        )

    scale_t = torch.as_tensor(scale, dtype=torch.float64).detach().cpu().reshape(-1)
    if scale_t.numel() == 0 or not torch.isfinite(scale_t).all():
        raise ValueError(f"Steering scale must be finite numbers, got {scale!r}.")

    if operator not in OPERATORS:
        raise ValueError(f"Unknown steering operator {operator!r}; choose one of {OPERATORS}.")
    if operator != "add" and bool((direction.norm(dim=-1) == 0).any()):
        raise ValueError(f"Operator {operator!r} needs a non-zero direction.")

    return _Intervention(
        hook_name=hook_name,
        direction=direction,
        scale=scale_t,
        positions=_check_positions(positions),
        operator=operator,
        label=label,
    )


def _check_positions(positions: Any) -> str | Tensor:
    if isinstance(positions, str):
        if positions not in POSITION_NAMES:
            raise ValueError(
                f"Unknown positions {positions!r}: use one of {POSITION_NAMES}, a list of "
                "token indices, or a boolean (batch, pos) mask."
            )
        return positions
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if positions.ndim not in (1, 2):
            raise ValueError(
                f"A position mask must be (pos,) or (batch, pos), got {tuple(positions.shape)}."
            )
        return positions if positions.ndim == 2 else positions[None]
    try:
        indices = torch.as_tensor(positions)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"positions must be a name, a list of ints or a boolean mask, got {positions!r}."
        ) from err
    if indices.ndim != 1 or indices.numel() == 0 or indices.is_floating_point():
        raise TypeError(
            "positions must be a name, a non-empty 1-D list of int token indices, or a "
            f"boolean mask; got {positions!r}."
        )
    return indices.long()


# ---------------------------------------------------------------------------- hooks
@dataclass
class _Intervention:
    """A TransformerLens hook function editing one hook point's activations."""

    hook_name: str
    direction: Float[Tensor, "rows d"]
    scale: Float[Tensor, " srows"]
    positions: str | Tensor
    operator: str
    label: str
    tracker: _Tracker | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        scale = self.scale.tolist()
        scale_text = f"{scale[0]:g}" if len(scale) == 1 else f"{len(scale)} per-row scales"
        rows = self.direction.shape[0]
        what = self.label if rows == 1 else f"{rows} per-row directions"
        positions = self.positions if isinstance(self.positions, str) else "custom"
        return (
            f"steer({what} at {self.hook_name!r}, scale={scale_text}, "
            f"positions={positions}, operator={self.operator!r})"
        )

    def __call__(self, activation: Tensor, hook: Any) -> Tensor:
        batch, n = activation.shape[0], activation.shape[1]
        flat = activation.reshape(batch, n, -1)
        d = self.direction.shape[-1]
        if flat.shape[-1] != d:
            raise ValueError(
                f"Steering vector has width {d} but activations at {self.hook_name!r} have "
                f"width {flat.shape[-1]} (shape {tuple(activation.shape)}): use a vector "
                "built for this hook point and model."
            )
        # The edit is computed in float32 (or the activations' wider dtype) and rounded once to
        # the activations' dtype, so a bfloat16 residual stream stays bfloat16 and the same
        # column gets the same bits with or without the KV cache.
        work = torch.promote_types(flat.dtype, torch.float32)
        x = flat.to(work)
        direction = _rows(self.direction, batch, "directions", self.hook_name)
        scale = _rows(self.scale, batch, "scales", self.hook_name)
        assert self.tracker is not None, "hook fired outside a SteeringHandle"
        selected = self._select(self.tracker.current(batch, n, flat), batch)
        v = direction.to(x)[:, None, :]
        s = scale.to(x)[:, None, None]
        if self.operator == "add":
            edited = x + s * v
        else:
            unit = v / v.norm(dim=-1, keepdim=True)
            along = (x * unit).sum(-1, keepdim=True)
            if self.operator == "ablate_then_add":
                edited = x - along * unit + s * v
            else:
                edited = x - (along - s).clamp_min(0) * unit
        out = torch.where(selected[..., None], edited.to(flat.dtype), flat)
        if not all_finite(out):
            before = all_finite(flat)
            raise FloatingPointError(
                f"{self!r} produced NaN/inf activations"
                + (
                    f" (|v|={float(self.direction.norm(dim=-1).max()):.3g}, activation norms "
                    f"up to {float(flat.norm(dim=-1).max()):.3g}). Use a smaller scale."
                    if before
                    else "; they were already non-finite before steering (check the model "
                    "and inputs, e.g. a lower-precision dtype)."
                )
            )
        return out.reshape(activation.shape)

    def _select(self, step: _Step, batch: int) -> Bool[Tensor, "batch n"]:
        positions = self.positions
        if positions == "all":
            return step.valid
        if positions == "prompt":
            return step.valid & (step.columns < step.prompt_len)
        if positions == "generated":
            return step.valid & (step.columns >= step.prompt_len)
        assert isinstance(positions, Tensor)
        if positions.dtype == torch.bool:
            mask = _rows(positions, batch, "position mask rows", self.hook_name)
            mask = mask.to(step.columns.device)
            inside = step.columns < mask.shape[1]
            selected = torch.zeros(
                mask.shape[0], step.n, dtype=torch.bool, device=step.columns.device
            )
            selected[:, inside] = mask[:, step.columns[inside]]
            return step.valid & selected
        indices = positions.to(step.columns.device)
        targets = torch.where(indices < 0, step.prompt_real_len[:, None] + indices, indices)
        hit = (step.real_index[:, :, None] == targets[:, None, :]).any(-1)
        return step.valid & hit


def _rows(t: Tensor, batch: int, what: str, hook_name: str) -> Tensor:
    if t.shape[0] not in (1, batch):
        raise ValueError(
            f"Steering at {hook_name!r} has {t.shape[0]} {what} but the batch has {batch} "
            "rows: give one per row, or a single one for all rows."
        )
    return t


# ---------------------------------------------------------------------------- positions
class _Step:
    """Where the tokens of the current forward call sit in the whole sequence.

    ``offset`` is the number of columns already in the KV cache, ``n`` the number of
    columns in this call, ``mask`` the attention mask given to the blocks (``[batch,
    offset + n]``, 0 at padding) and ``prompt_len`` the number of prompt columns.
    """

    def __init__(self, offset: int, n: int, mask: Tensor | None, prompt_len: int, device: Any):
        self.offset, self.n, self.mask, self.prompt_len = offset, n, mask, prompt_len
        self.columns: Int[Tensor, " n"] = torch.arange(offset, offset + n, device=device)
        if mask is None:
            self.batch = 1
            self.valid = torch.ones(1, n, dtype=torch.bool, device=device)
            self.real_index = self.columns[None]
            self.prompt_real_len = torch.tensor([prompt_len], device=device)
            return
        full = mask.to(device=device, dtype=torch.long)
        if full.shape[1] == n and offset > 0:
            full = torch.cat([full.new_ones(full.shape[0], offset), full], dim=1)
        self.batch = full.shape[0]
        self.valid = full[:, offset:].bool()
        self.real_index = full.cumsum(1)[:, offset:] - 1
        self.prompt_real_len = full[:, :prompt_len].sum(1)

    def matches(self, offset: int, n: int, mask: Tensor | None) -> bool:
        return self.offset == offset and self.n == n and self.mask is mask


class _Tracker:
    """Per-model bookkeeping shared by all active steering handles on that model.

    Installs a forward observer (the KV-cache length and the attention mask of each call,
    see ``ssae_lens._core.backend``), a check for non-finite logits, and a wrapper around
    ``model.generate`` marking where a prompt ends without the KV cache.
    """

    def __init__(self, model: Model):
        self.model = model
        self.users = 0
        self.step: _Step | None = None
        self._handles: list[Any] = []
        self._generate: Any = None
        self._previous_generate: Any = None
        self._generating = False
        self._generation_prompt_len: int | None = None
        self._last_prompt_len: int | None = None

    def acquire(self) -> None:
        if self.users == 0:
            self._install()
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._uninstall()
            _TRACKERS.pop(self.model, None)

    def current(self, batch: int, n: int, like: Tensor) -> _Step:
        step = self.step
        if step is None or step.n != n or step.batch not in (1, batch):
            # Only hooks outside the blocks (none are steerable) could get here.
            return _Step(0, n, None, n, like.device)
        return step

    def _install(self) -> None:
        model = self.model
        self._handles.extend(backend(model).observe_forward(self._on_forward))
        if hasattr(model, "unembed"):
            self._handles.append(model.unembed.register_forward_hook(self._check_logits))
        self._previous_generate = model.__dict__.get("generate")
        original = model.generate

        @functools.wraps(original)
        def generate(*args: Any, **kwargs: Any) -> Any:
            with self._generation():
                return original(*args, **kwargs)

        self._generate = generate
        model.__dict__["generate"] = generate

    def _uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        model = self.model
        if model.__dict__.get("generate") is self._generate:
            if self._previous_generate is None:
                del model.__dict__["generate"]
            else:
                model.__dict__["generate"] = self._previous_generate
        self._generate = self._previous_generate = None
        self.step = None

    @contextmanager
    def _generation(self) -> Iterator[None]:
        saved = (self._generating, self._generation_prompt_len)
        self._generating, self._generation_prompt_len, self.step = True, None, None
        try:
            yield
        finally:
            self._generating, self._generation_prompt_len = saved
            self.step = None

    def _prompt_len(self, offset: int, n: int) -> int:
        if self._generating:
            if self._generation_prompt_len is None:
                self._generation_prompt_len = offset + n
            return self._generation_prompt_len
        if offset == 0:
            self._last_prompt_len = n
        return self._last_prompt_len if self._last_prompt_len is not None else offset

    def _on_forward(self, offset: int, n: int, mask: Tensor | None, device: torch.device) -> None:
        if self.step is not None and self.step.matches(offset, n, mask):
            return  # the same call, seen again by the next block
        self.step = _Step(offset, n, mask, self._prompt_len(offset, n), device)

    def _check_logits(self, module: Any, args: tuple, output: Tensor) -> None:
        if not all_finite(output):
            active = [
                h.user_hook
                for hp in self.model.hook_dict.values()
                for h in hp.fwd_hooks
                if isinstance(h.user_hook, _Intervention)
            ]
            raise FloatingPointError(
                f"The logits became NaN/inf while steering with {active}. Use a smaller "
                "scale (if the unsteered model does this too, the cause is elsewhere)."
            )


_TRACKERS: weakref.WeakKeyDictionary[Any, _Tracker] = weakref.WeakKeyDictionary()


def _tracker_for(model: Model) -> _Tracker:
    tracker = _TRACKERS.get(model)
    if tracker is None:
        tracker = _TRACKERS[model] = _Tracker(model)
    return tracker
