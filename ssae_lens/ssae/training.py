"""Training SSAEs with SAELens's ``SAETrainer``.

:func:`train_ssae` is the one-call entry point. It reuses SAELens's trainer for
the learning-rate schedule, gradient clipping, checkpoints and wandb logging, and
adds what the SSAE needs on top (:class:`SSAETrainer`): a separate learning rate
for the Lagrange multiplier, a seeded shuffling data provider whose position is
checkpointed (a resumed run ends with exactly the weights of an uninterrupted
one), and a progress bar that shows the multiplier and constraint violation.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from sae_lens import SAE
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training.optim import get_lr_scheduler
from sae_lens.training.sae_trainer import SAETrainer
from torch import Tensor
from tqdm.auto import tqdm

from ssae_lens._core.cache import is_cached, tensor_digest, write_cached_folder
from ssae_lens._core.finite import NonFiniteError, check_finite_weights
from ssae_lens._core.io import write_json_atomic, write_text_atomic
from ssae_lens._core.rng import scoped_seed
from ssae_lens._core.threads import intra_op_threads
from ssae_lens.ssae.model import SSAE, TrainingSSAE, TrainingSSAEConfig

if TYPE_CHECKING:
    from ssae_lens.ssae.selection import SparsitySelection

DATA_STATE_FILENAME = "data_provider_state.json"
RUN_STATE_FILENAME = "run_identity.json"
HISTORY_FILENAME = "history.jsonl"
_NORM_ESTIMATE_SAMPLES = 100_000


def as_shifts(x: Any) -> Any:
    """A numpy array as a tensor (sharing its memory); anything else as it is."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"shifts must be a float array, got a numpy array of dtype {x.dtype}.")
        return torch.from_numpy(x)
    return x


def check_shifts(x: Tensor, d_in: int, what: str = "shifts") -> None:
    """Raise a clear error unless ``x`` is a finite, non-empty ``(n, d_in)`` tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{what} must be a torch.Tensor (or a numpy array) of shape (n, {d_in}), got "
            f"{type(x).__name__}."
        )
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must have shape (n > 0, {d_in}), got {tuple(x.shape)}.")
    if x.shape[1] != d_in:
        raise ValueError(
            f"{what} have width {x.shape[1]} but the config says d_in={d_in}; "
            f"set d_in={x.shape[1]} or harvest at the hook the SSAE was built for."
        )
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{what} contain NaN/inf in {len(bad)} rows (first: {bad[:5].tolist()}); "
            "drop or fix those rows before training."
        )


class ShuffledBatches(Iterator[Tensor]):
    """Endless epochs over a tensor, each in a fresh permutation drawn from ``seed``.

    The state is ``(epoch, offset)``: saving it in a checkpoint lets a resumed run
    see exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, data: Float[Tensor, "n d"], batch_size: int, seed: int = 0):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.epoch, self.offset = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.data.shape[0], generator=gen)

    def __next__(self) -> Tensor:
        n = self.data.shape[0]
        if self.offset + self.batch_size > n and self.offset > 0:
            self.epoch, self.offset = self.epoch + 1, 0
            self._perm = self._permutation()
        idx = self._perm[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        return self.data[idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.offset = state["seed"], state["epoch"], state["offset"]
        self._perm = self._permutation()


class _CheckedBatches(Iterator[Tensor]):
    """Validates batches from a user iterator and says clearly when it runs dry."""

    def __init__(self, batches: Iterator[Tensor], d_in: int, head: list[Tensor]):
        self.batches, self.d_in, self.head, self.n_seen = batches, d_in, head, 0

    def __next__(self) -> Tensor:
        try:
            batch = self.head.pop(0) if self.head else next(self.batches)
        except StopIteration:
            raise RuntimeError(
                f"The data iterator ran out after {self.n_seen} batches; pass a tensor, an "
                "endless iterator, or lower training_steps."
            ) from None
        batch = as_shifts(batch)
        check_shifts(batch, self.d_in, what=f"batch {self.n_seen}")
        self.n_seen += 1
        return batch


@dataclass
class TrainingRecord:
    """Metrics of one logged training step (also written to ``history.jsonl``);
    ``sparsity_target`` and ``constraint_violation`` are 0 in modes without a constraint."""

    step: int
    recon_loss: float
    mean_abs_code: float
    sparsity_target: float
    constraint_violation: float
    lagrange_multiplier: float
    lr: float


class _MultiplierFollowsLR:
    """SAELens's learning-rate schedule, with the multiplier's group (if any) held at
    ``ratio`` times the weights' rate at every step.

    On its own, SAELens's cosine schedule anneals every group to the same absolute
    ``lr_end``: the multiplier's rate would end at ``lr_end`` whatever the ratio (and
    grow from 0 to it with ``multiplier_lr_ratio=0``).
    """

    def __init__(self, schedule: Any, optimizer: torch.optim.Optimizer, ratio: float):
        self.schedule, self.optimizer, self.ratio = schedule, optimizer, ratio

    def step(self) -> None:
        self.schedule.step()
        groups = self.optimizer.param_groups
        if len(groups) > 1:
            groups[1]["lr"] = groups[0]["lr"] * self.ratio

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)


class SSAETrainer(SAETrainer[TrainingSSAE, TrainingSSAEConfig]):
    """SAELens's ``SAETrainer`` with the SSAE's multiplier learning rate and history.

    Every ``log_every`` steps a :class:`TrainingRecord` is appended to
    ``history`` (and shown on the progress bar); wandb, when enabled, gets the
    same numbers as ``metrics/lagrange_multiplier`` and
    ``metrics/constraint_violation`` through SAELens's logger.
    """

    def __init__(
        self,
        *args: Any,
        log_every: int = 50,
        progress: bool = True,
        run_identity: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.log_every = log_every
        self.progress = progress
        # What a resumed run must share with the checkpoint it continues (seed, data digest).
        self.run_identity = dict(run_identity or {})
        self.history: list[TrainingRecord] = []
        multiplier = self.sae.lagrange_multiplier
        primal = [p for p in self.sae.parameters() if p is not multiplier and p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": primal}]
        if multiplier.requires_grad:
            groups.append(
                {"params": [multiplier], "lr": self.cfg.lr * self.sae.cfg.multiplier_lr_ratio}
            )
        self.optimizer = torch.optim.Adam(
            groups, lr=self.cfg.lr, betas=(self.cfg.adam_beta1, self.cfg.adam_beta2)
        )
        assert self.cfg.lr_end is not None
        schedule = get_lr_scheduler(
            self.cfg.lr_scheduler_name,
            optimizer=self.optimizer,
            training_steps=self.cfg.total_training_steps,
            lr=self.cfg.lr,
            warm_up_steps=self.cfg.lr_warm_up_steps,
            decay_steps=self.cfg.lr_decay_steps,
            lr_end=self.cfg.lr_end,
            num_cycles=self.cfg.n_restart_cycles,
        )
        self.lr_scheduler = _MultiplierFollowsLR(
            schedule, self.optimizer, self.sae.cfg.multiplier_lr_ratio
        )

    def step(self, batch: Tensor) -> TrainStepOutput:
        """One training step; a NaN or inf loss stops training before anything is saved."""
        output = super().step(batch)
        if not bool(torch.isfinite(output.loss)):
            losses = {k: float(v.detach()) for k, v in output.losses.items()}
            raise NonFiniteError(
                f"the training loss became {float(output.loss.detach())} at step "
                f"{self.n_training_steps} (losses: {losses}); training stopped and the diverged "
                "weights were not saved. Lower lr, check the shifts for extreme values, or use "
                "reconstruction_loss='relative'."
            )
        return output

    @torch.no_grad()
    def set_final_sae_metadata(self) -> None:
        """Record the SSAE's end-of-training numbers in its metadata (saved in ``cfg.json``).

        SAELens records ``l0`` and dead features here, counts of nonzero codes that say nothing
        about a signed, dense-valued code; the SSAE records its objective's terms instead.
        """
        if self.history:
            self.sae.cfg.metadata.training_metrics = dict(self.history[-1].__dict__)

    def save_trainer_state(self, checkpoint_path: Path) -> None:
        super().save_trainer_state(checkpoint_path)
        write_json_atomic(checkpoint_path / RUN_STATE_FILENAME, self.run_identity)
        if isinstance(self.data_provider, ShuffledBatches):
            write_json_atomic(
                checkpoint_path / DATA_STATE_FILENAME, self.data_provider.state_dict()
            )
        write_text_atomic(
            checkpoint_path / HISTORY_FILENAME,
            "".join(json.dumps(r.__dict__) + "\n" for r in self.history),
        )

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        checkpoint_path = Path(checkpoint_path)
        super().load_trainer_state(checkpoint_path)
        # SAETrainer checkpoints mid-step, before counting the step it just took.
        self.n_training_steps = self.n_training_samples // self.cfg.train_batch_size_samples
        data_state = checkpoint_path / DATA_STATE_FILENAME
        if isinstance(self.data_provider, ShuffledBatches) and data_state.exists():
            self.data_provider.load_state_dict(json.loads(data_state.read_text()))
        history = checkpoint_path / HISTORY_FILENAME
        if history.exists():
            self.history = [
                TrainingRecord(**json.loads(line)) for line in history.read_text().splitlines()
            ]

    def _update_pbar(self, step_output: TrainStepOutput, pbar: tqdm, update_interval: int = 100):
        if not self.progress and not pbar.disable:
            pbar.clear()  # SAETrainer.fit opens its bar itself: hide it from the first step on
            pbar.disable = True
        step = self.n_training_steps
        if step % self.log_every == 0 or step == self.cfg.total_training_steps:
            m = step_output.metrics
            record = TrainingRecord(
                step=step,
                recon_loss=step_output.losses["recon_loss"].item(),
                mean_abs_code=float(m["mean_abs_code"]),
                sparsity_target=float(m["sparsity_target"]),
                constraint_violation=float(m["constraint_violation"]),
                lagrange_multiplier=float(m["lagrange_multiplier"]),
                lr=self.optimizer.param_groups[0]["lr"],
            )
            self.history.append(record)
            pbar.set_postfix(
                recon=f"{record.recon_loss:.4f}",
                l1=f"{record.mean_abs_code:.4f}",
                viol=f"{record.constraint_violation:+.4f}",
                mult=f"{record.lagrange_multiplier:.3f}",
                refresh=False,
            )
        pbar.update(self.cfg.train_batch_size_samples)


def train_ssae(
    data: Float[Tensor, "n d_in"] | Iterable[Float[Tensor, "batch d_in"]],
    cfg: TrainingSSAEConfig,
    *,
    seed: int = 0,
    device: str | None = None,
    checkpoint_path: str | Path | None = None,
    n_checkpoints: int = 0,
    resume_from: str | Path | None = None,
    log_to_wandb: bool = False,
    wandb_project: str = "ssae_lens",
    log_every: int = 50,
    return_trainer: bool = False,
    progress: bool = True,
    model_name: str | None = None,
    hook_name: str | None = None,
    dataset: str | None = None,
    selection: SparsitySelection | None = None,
) -> SSAE | tuple[SSAE, SSAETrainer]:
    """Train a Sparse Shift Autoencoder on shifts and return the inference :class:`SSAE`.

    Args:
        data: shifts ``delta = z(x~) - z(x)`` as an ``(n, d_in)`` tensor or numpy array
            (shuffled into batches of ``cfg.batch_size`` with ``seed``), or an iterable of
            ``(batch, d_in)`` tensors (or arrays) long enough for ``cfg.training_steps``
            batches. ``harvest_shifts`` output plugs in directly.
        cfg: architecture, objective and optimisation; see :class:`TrainingSSAEConfig`.
        seed: seeds the initialisation and the data order.
        device: where to train (default ``cfg.device``).
        checkpoint_path: folder for SAELens checkpoints (weights, config, optimiser,
            multiplier, data position and history); ``n_checkpoints`` evenly spaced
            ones plus a final one are written there.
        resume_from: a checkpoint folder to continue from; the run then ends with
            the same weights as an uninterrupted run with the same arguments. A checkpoint
            of a run with another seed or other data is refused.
        log_to_wandb: log through SAELens's wandb logger (call ``wandb.init`` or let
            this function start a run in ``wandb_project``).
        log_every: steps between entries of the trainer's ``history``.
        return_trainer: also return the :class:`SSAETrainer` (its ``history``).
        progress: show the trainer's progress bar.
        model_name, hook_name, dataset: where the shifts came from
            (``model.cfg.model_name``, the hook point, the pairs), recorded in the SSAE's
            ``cfg.metadata`` (and so in ``cfg.json``, the model card and the steering vectors
            made from it), as SAELens's own training records them.
        selection: for ``cfg.sparsity_target="auto"``, a
            :func:`~ssae_lens.ssae.selection.select_sparsity_target` result to use instead of
            selecting here (e.g. one selection shared by several seeds). Without it, "auto"
            runs the selection on the shifts (on an iterable: on the first 100,000 shifts,
            those the normalisation is estimated from) with
            its fixed seeds, so every training seed gets the same target. The chosen target is
            what trains; the selection is stored in ``metadata.sparsity_selection``.

    Raises:
        NonFiniteError: the loss became NaN or inf (nothing is saved, no checkpoint either).
    """
    device = device or cfg.device
    data = as_shifts(data)
    if isinstance(data, Tensor):
        check_shifts(data, cfg.d_in)
        sample = data[:_NORM_ESTIMATE_SAMPLES]
        provider: Iterator[Tensor] = ShuffledBatches(data, cfg.batch_size, seed=seed)
    else:
        iterator = iter(data)
        head: list[Tensor] = []
        n_head = 0
        for batch in iterator:
            batch = as_shifts(batch)
            check_shifts(batch, cfg.d_in, what=f"batch {len(head)}")
            head.append(batch)
            n_head += batch.shape[0]
            if n_head >= _NORM_ESTIMATE_SAMPLES:
                break
        if not head:
            raise ValueError("The data iterator is empty: there are no shifts to train on.")
        sample = torch.cat(head)
        provider = _CheckedBatches(iterator, cfg.d_in, head)
    selection = _resolve_auto(cfg, data if isinstance(data, Tensor) else sample, device, selection)
    if selection is not None:
        cfg = selection.resolve(cfg)
    sae = _initialised(cfg, seed)
    for key, value in (("model_name", model_name), ("hook_name", hook_name), ("dataset", dataset)):
        if value is not None:
            sae.cfg.metadata[key] = value
    if selection is not None:
        sae.cfg.metadata.sparsity_selection = selection.to_dict()
    sae.fit_normalization(sample)

    if log_to_wandb:
        import wandb

        if wandb.run is None:
            wandb.init(project=wandb_project, config=cfg.to_dict())
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.training_steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr * cfg.lr_end_ratio,
        lr_scheduler_name="cosineannealing",
        device=device,
        n_checkpoints=n_checkpoints,
        checkpoint_path=None if checkpoint_path is None else str(checkpoint_path),
        save_final_checkpoint=checkpoint_path is not None,
        logger=LoggingConfig(log_to_wandb=log_to_wandb, wandb_project=wandb_project),
    )
    identity: dict[str, Any] = {}
    if checkpoint_path is not None or resume_from is not None:
        # A tensor is identified by its full digest; a stream by the batches read up front.
        digest = tensor_digest(data if isinstance(data, Tensor) else sample)
        identity = {"seed": seed, "data": digest}
    trainer = SSAETrainer(
        trainer_cfg,
        sae,
        provider,
        log_every=log_every,
        progress=progress,
        run_identity=identity,
    )
    if resume_from is not None:
        _resume(trainer, Path(resume_from))
    trainer.fit()
    with torch.no_grad():
        sae.normalize_decoder()
    check_finite_weights(sae, "return")
    ssae = sae.to_inference()
    return (ssae, trainer) if return_trainer else ssae


def load_or_train_ssae(
    shifts: Float[Tensor, "n d_in"],
    cfg: TrainingSSAEConfig,
    *,
    seed: int,
    cache_dir: str | os.PathLike,
    threads: int | None = None,
    progress: bool = True,
) -> SSAE:
    """:func:`train_ssae` on a tensor, cached in ``cache_dir`` under a hash of data, config
    and seed: a rerun with the same inputs loads the saved SSAE instead of training (a
    verified cached folder: a damaged one is retrained with a warning).

    With ``sparsity_target="auto"`` the selection is cached too (:func:`load_or_select`), so
    the seeds of one config share one selection run.

    ``threads``, if given, sets torch's intra-op threads for the training only (restored after;
    1 suits small SSAEs, whose steps are streams of small matmuls).
    """
    check_shifts(shifts, cfg.d_in)
    digest = _config_digest(shifts, cfg)
    digest.update(str(seed).encode())
    folder = Path(cache_dir) / f"ssae-{digest.hexdigest()[:16]}"
    settings = {"key": digest.hexdigest()}
    if is_cached(folder, settings):
        return SAE.load_from_disk(folder)
    with intra_op_threads(threads):
        selection = None
        if cfg.sparsity == "constraint" and cfg.sparsity_target == "auto":
            selection = load_or_select(shifts, cfg, cache_dir=cache_dir)
        sae = train_ssae(shifts, cfg, seed=seed, progress=progress, selection=selection)
    with write_cached_folder(folder, settings) as tmp:
        sae.save_model(tmp)
    return sae


def load_or_select(
    shifts: Float[Tensor, "n d_in"], cfg: TrainingSSAEConfig, *, cache_dir: str | os.PathLike
) -> SparsitySelection:
    """:func:`~ssae_lens.ssae.selection.select_sparsity_target` at its defaults, cached in
    ``cache_dir`` under a hash of data and config (``sparsity_target`` aside)."""
    from ssae_lens.ssae.selection import RULE_VERSION, SparsitySelection, select_sparsity_target

    digest = _config_digest(shifts, dataclasses.replace(cfg, sparsity_target="auto"))
    digest.update(f"rule {RULE_VERSION}".encode())
    folder = Path(cache_dir) / f"selection-{digest.hexdigest()[:16]}"
    settings = {"key": digest.hexdigest()}
    if is_cached(folder, settings):
        return SparsitySelection.from_dict(json.loads((folder / "selection.json").read_text()))
    selection = select_sparsity_target(shifts, cfg)
    with write_cached_folder(folder, settings) as tmp:
        write_json_atomic(tmp / "selection.json", selection.to_dict())
    return selection


def _config_digest(shifts: Tensor, cfg: TrainingSSAEConfig) -> Any:
    """A sha256 of the config (its metadata aside) and the shifts' values, to extend."""
    # Not the metadata: it describes the SSAE (hook, model; train_ssae adds its training
    # metrics after training) but does not change how it trains.
    fields = {k: v for k, v in cfg.to_dict().items() if k != "metadata"}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    digest.update(shifts.detach().cpu().float().contiguous().numpy().tobytes())
    return digest


def _resolve_auto(
    cfg: TrainingSSAEConfig, shifts: Tensor, device: str, selection: SparsitySelection | None
) -> SparsitySelection | None:
    """The sparsity selection ``cfg`` trains with: ``selection`` or a new one for
    ``sparsity_target="auto"`` (constraint mode); None for a fixed target."""
    auto = cfg.sparsity == "constraint" and cfg.sparsity_target == "auto"
    if not auto:
        if selection is not None:
            raise ValueError(
                f"selection= chooses sparsity_target='auto', but this config has "
                f"sparsity={cfg.sparsity!r}, sparsity_target={cfg.sparsity_target!r}; drop "
                "selection= or set sparsity_target='auto'."
            )
        return None
    if selection is None:
        from ssae_lens.ssae.selection import select_sparsity_target  # it imports train_ssae

        selection = select_sparsity_target(shifts, cfg, device=device)
    return selection


def _initialised(cfg: TrainingSSAEConfig, seed: int) -> TrainingSSAE:
    """A new ``TrainingSSAE`` whose random initialisation depends on ``seed`` alone (on a copy
    of ``cfg``: training records results in the metadata, which stays off the caller's cfg)."""
    with scoped_seed(seed, cfg.device):
        return TrainingSSAE(copy.deepcopy(cfg))


def _resume(trainer: SSAETrainer, checkpoint: Path) -> None:
    if not (checkpoint / "cfg.json").exists():
        raise FileNotFoundError(
            f"{checkpoint} is not an SSAE checkpoint (no cfg.json); pass a folder written "
            "by train_ssae(checkpoint_path=...), e.g. <checkpoint_path>/<n_samples>."
        )
    _check_same_run(trainer.run_identity, checkpoint)
    saved = TrainingSSAE.load_from_disk(checkpoint, device=trainer.cfg.device)
    trainer.sae.load_state_dict(saved.state_dict())
    trainer.load_trainer_state(checkpoint)
    # Skip checkpoints the interrupted run already wrote.
    trainer.checkpoint_thresholds = [
        t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples
    ]


def _check_same_run(identity: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume from a checkpoint of a run with another seed or other data."""
    path = checkpoint / RUN_STATE_FILENAME
    if not path.exists():
        raise FileNotFoundError(
            f"{checkpoint} has no {RUN_STATE_FILENAME} (written by ssae-lens 0.1 checkpoints), "
            "so it cannot be checked against this run's seed and data; start afresh."
        )
    stored = json.loads(path.read_text())
    if stored.get("seed") != identity["seed"]:
        raise ValueError(
            f"{checkpoint} was trained with seed={stored.get('seed')}, but this run has "
            f"seed={identity['seed']}; resume with seed={stored.get('seed')} or start afresh."
        )
    if stored.get("data") != identity["data"]:
        raise ValueError(
            f"{checkpoint} was trained on other data (data digest {str(stored.get('data'))[:12]}, "
            f"this run's {identity['data'][:12]}); resume with the same shifts or start afresh."
        )


__all__ = [
    "SSAETrainer",
    "ShuffledBatches",
    "TrainingRecord",
    "check_shifts",
    "load_or_select",
    "load_or_train_ssae",
    "train_ssae",
]
