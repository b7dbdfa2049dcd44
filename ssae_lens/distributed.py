"""Processes started by ``torchrun``: the process group, and sharded, resumable work.

PyTorch's own ``torch.distributed`` does the communication (gloo on CPU, NCCL on CUDA with a
gloo group beside it for control messages). Work is a list of ``n_items`` items cut into
chunks of ``chunk_size`` consecutive items. Every rank computes its share of the chunks not
yet on disk and writes each chunk to a :class:`~ssae_lens._core.cache.ChunkStore` folder (the
package's one chunked cache); the files are keyed by item range, so the folder is the same
whatever the number of processes, a single process uses the same store, and a killed run
resumes from the chunks already written.

Typical use, the same script for ``python script.py`` and ``torchrun --nproc_per_node=N
script.py``::

    with process_group() as ctx:
        store = ChunkStore("out/chunks", settings={"seed": 0}, n_items=n, chunk_size=64)
        result = run_sharded(lambda items: {"x": f(items)}, store, ctx=ctx)
        if ctx.is_main:
            save(result)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ssae_lens._core.cache import ChunkStore

TIMEOUT_ENV = "SSAE_LENS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# The gloo group that process_group() creates beside an NCCL default group; None otherwise.
_control_group: dist.ProcessGroup | None = None


class DistributedError(RuntimeError):
    """A rank failed, or did not reach a collective within the timeout."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the processes ``torchrun`` started.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes (1 without ``torchrun``).
        local_rank: rank on this machine; picks the CUDA device.
        device: ``cuda:<local_rank>`` where CUDA exists, otherwise the CPU.
        timeout_s: seconds any collective waits before failing.
        group: the gloo group for control messages (``None``: the default group).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    timeout_s: float
    group: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the rank that writes shared files."""
        return self.rank == 0


def timeout_from_env() -> float:
    """Seconds a collective may wait: ``$SSAE_LENS_DIST_TIMEOUT`` or 1800.

    It must exceed the longest time one rank waits for another at a barrier, i.e. the
    difference in work between the slowest and the fastest rank.
    """
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds > 0, e.g. 600.")
    return value


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"Environment variable {name}={raw!r} is not an integer.") from None


def current(timeout_s: float | None = None) -> DistributedContext:
    """This process's rank, world size, local rank and device.

    From the initialised process group if there is one, else from the ``torchrun``
    environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it, a single process
    (rank 0 of 1).
    """
    timeout = timeout_from_env() if timeout_s is None else float(timeout_s)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    elif "WORLD_SIZE" in os.environ:
        missing = [k for k in ("RANK", "LOCAL_RANK") if k not in os.environ]
        if missing:
            raise ValueError(
                f"WORLD_SIZE is set but {', '.join(missing)} is not: start the processes with "
                "torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK, or unset WORLD_SIZE."
            )
        rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    else:
        rank, world, local = 0, 1, 0
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} need 0 <= RANK < WORLD_SIZE.")
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA "
                "devices: start torchrun with --nproc_per_node at most the number of GPUs."
            )
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistributedContext(rank, world, local, device, timeout, _control_group)


@contextmanager
def process_group(timeout_s: float | None = None) -> Iterator[DistributedContext]:
    """Initialise ``torch.distributed`` when ``torchrun`` started several processes.

    Nothing happens for a single process or when a process group already exists. Otherwise
    the default group is gloo on CPU, or NCCL bound to ``cuda:LOCAL_RANK`` with a gloo group
    for control messages; collectives time out after ``timeout_s`` (default
    :func:`timeout_from_env`). A group created here is destroyed on exit.
    """
    global _control_group
    ctx = current(timeout_s)
    if ctx.world_size == 1 or dist.is_initialized():
        yield ctx
        return
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={ctx.world_size} but {', '.join(missing)} is not set: launch with "
            "torchrun (e.g. torchrun --nproc_per_node=2 script.py)."
        )
    timeout = timedelta(seconds=ctx.timeout_s)
    if ctx.device.type == "cuda":
        dist.init_process_group("nccl", timeout=timeout, device_id=ctx.device)
        _control_group = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    try:
        yield current(ctx.timeout_s)
    finally:
        _control_group = None
        dist.destroy_process_group()


def shard(n_items: int, rank: int, world_size: int) -> range:
    """The items of ``rank``: ``rank, rank + world_size, ...`` below ``n_items``.

    Strided rather than contiguous: work lists here are often sorted by cost (e.g. texts by
    length), and striding gives every rank a similar mix. Ranks' shares are disjoint, cover
    all items, and differ in size by at most one.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}.")
    return range(rank, n_items, world_size)


def _collective_error(ctx: DistributedContext, what: str, exc: Exception) -> DistributedError:
    return DistributedError(
        f"rank {ctx.rank}/{ctx.world_size}: {what} failed: not every rank arrived within "
        f"{ctx.timeout_s:g} s ({TIMEOUT_ENV}) or a rank exited; see that rank's error. "
        f"Rerun the same command to resume from the chunks already written. ({exc})"
    )


def barrier(ctx: DistributedContext | None = None, what: str = "barrier") -> None:
    """Wait for every rank; raise :class:`DistributedError` naming the problem on timeout.

    On gloo this is ``monitored_barrier``, whose error on rank 0 names the missing ranks.
    """
    ctx = current() if ctx is None else ctx
    if ctx.world_size == 1:
        return
    try:
        if dist.get_backend(ctx.group) == dist.Backend.GLOO:
            dist.monitored_barrier(
                ctx.group, timeout=timedelta(seconds=ctx.timeout_s), wait_all_ranks=True
            )
        else:
            dist.barrier(ctx.group)
    except RuntimeError as exc:
        raise _collective_error(ctx, what, exc) from exc


def _on_main(ctx: DistributedContext, fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 and its result sent to every rank; its error fails every rank."""
    if ctx.world_size == 1:
        return fn()
    box: list[Any] = [None]
    error: Exception | None = None
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:
            error = exc
            box[0] = ("error", f"{type(exc).__name__}: {exc}")
    try:
        dist.broadcast_object_list(box, src=0, group=ctx.group)
    except RuntimeError as exc:
        raise _collective_error(ctx, "receiving rank 0's work list", exc) from exc
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise DistributedError(f"rank {ctx.rank}/{ctx.world_size}: rank 0 failed: {value}")
    return value


def run_sharded(
    compute: Callable[[range], Mapping[str, Tensor]],
    store: ChunkStore,
    *,
    ctx: DistributedContext | None = None,
    all_ranks: bool = True,
) -> dict[str, Tensor] | None:
    """Compute the chunks missing from ``store`` across all ranks; return them all merged.

    Rank 0 opens the store and lists the chunks without a file; every rank computes
    ``compute(items)`` for its strided share of that list (:func:`shard`) and writes each
    result as soon as it is done; after a barrier the chunks are read back and concatenated
    in item order (:meth:`ChunkStore.merge`; a chunk whose file fails its checksum is computed
    again there). The result therefore depends only on ``compute`` and the chunk layout, not
    on the number of ranks or on how often the run was interrupted, and no valid chunk on disk
    is computed again.

    Args:
        compute: maps a range of item indices to tensors whose first dimension runs over the
            chunk's rows; it must not depend on the rank.
        store: where the chunks live; the same folder for every rank.
        ctx: this process's context (default :func:`current`).
        all_ranks: merge on every rank; ``False`` returns ``None`` on ranks other than 0.

    Raises:
        DistributedError: on every rank, when a rank fails or a rank is missing at a
            collective for longer than ``ctx.timeout_s``.
    """
    ctx = current() if ctx is None else ctx
    if ctx.world_size > 1 and not dist.is_initialized():
        raise RuntimeError(
            f"WORLD_SIZE={ctx.world_size} but no process group: call run_sharded inside "
            "`with ssae_lens.distributed.process_group() as ctx:`."
        )

    def open_and_list() -> list[tuple[int, int]]:
        store.open()
        return [(items.start, items.stop) for items in store.pending()]

    pending = [range(a, b) for a, b in _on_main(ctx, open_and_list)]
    for i in shard(len(pending), ctx.rank, ctx.world_size):
        items = pending[i]
        try:
            tensors = compute(items)
        except Exception as exc:
            if ctx.world_size == 1:
                raise
            raise DistributedError(
                f"rank {ctx.rank}/{ctx.world_size} failed computing items "
                f"{items.start}..{items.stop - 1}: {type(exc).__name__}: {exc}. Chunks already "
                f"written to {str(store.folder)!r} are kept: rerun the same command to resume."
            ) from exc
        store.write(items, tensors)
    barrier(ctx, "the barrier after computing the chunks")
    if not (all_ranks or ctx.is_main):
        return None
    return store.merge(compute)
